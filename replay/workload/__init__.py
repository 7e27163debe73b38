"""Workloads: what a run sends, as streams of shots. A replay stream from a capture (scaled,
windowed, looped, amplified), synthetic streams (an arrival process and a request maker), and
TOML scenarios that put several on one timeline."""
