"""The capture format's version and loadtape's own: light, so a proxy can write a manifest
without loading pyarrow (captures/schema.py re-exports them)."""

from __future__ import annotations

from importlib import metadata

FORMAT_VERSION = 1
"""Bumped when a reader of this version could misread a newer file. Adding a nullable column is
not such a change: readers fill columns they do not find with nulls."""

try:
    LOADTAPE_VERSION = metadata.version("loadtape")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    LOADTAPE_VERSION = "0+unknown"

# the Parquet key-value metadata key of a part's format version
META_FORMAT_VERSION = b"loadtape.format_version"
