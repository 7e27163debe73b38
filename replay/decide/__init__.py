"""Deciding, from results directories and without traffic: reports, SLO gates, comparison with
a baseline, sweeps of rising load, and response diffs."""
