"""Measuring: outcomes become result rows (Parquet) and HdrHistograms per group, and a results
directory is read back (`Results`) for reports, gates and comparisons."""
