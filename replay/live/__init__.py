"""Watching a run while it goes: Prometheus metrics (exporter.py)."""
