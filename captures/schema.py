"""Capture format v1: one row per HTTP exchange.

Every column is documented in docs/capture-format.md. A record in memory is a plain dict keyed by
column name (`Record`); the journal stores it as a positional msgpack array in `COLUMNS` order and
the Parquet parts store it with `SCHEMA`.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import pyarrow as pa

FORMAT_VERSION = 1
"""Bumped when a reader of this version could misread a newer file. Adding a nullable column is
not such a change: readers fill columns they do not find with nulls."""

try:
    LOADTAPE_VERSION = metadata.version("loadtape")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    LOADTAPE_VERSION = "0+unknown"

Record = dict[str, Any]
Headers = list[tuple[str, str]]

HEADERS_TYPE = pa.list_(pa.struct([("name", pa.string()), ("value", pa.string())]))

_FIELDS: list[tuple[str, pa.DataType, bool]] = [
    # identity and time
    ("capture_id", pa.string(), False),
    ("writer_id", pa.string(), False),
    ("seq", pa.int64(), False),
    ("conn_id", pa.string(), True),
    ("session_key", pa.string(), True),
    ("req_start_ns", pa.int64(), False),
    ("req_end_ns", pa.int64(), True),
    ("resp_start_ns", pa.int64(), True),
    ("resp_end_ns", pa.int64(), True),
    ("chunk_offsets_us", pa.list_(pa.int32()), True),
    ("chunk_sizes", pa.list_(pa.int32()), True),
    ("proxy_inflight", pa.int32(), True),
    # request
    ("method", pa.string(), False),
    ("scheme", pa.string(), False),
    ("host", pa.string(), False),
    ("port", pa.int32(), False),
    ("path", pa.string(), False),
    ("query", pa.string(), True),
    ("http_version", pa.string(), True),
    ("req_headers", HEADERS_TYPE, False),
    ("req_body", pa.binary(), True),
    ("req_body_size", pa.int64(), False),
    ("req_body_truncated", pa.bool_(), False),
    ("req_content_encoding", pa.string(), True),
    # response
    ("status", pa.int32(), True),
    ("reason", pa.string(), True),
    ("resp_headers", HEADERS_TYPE, True),
    ("resp_body", pa.binary(), True),
    ("resp_body_size", pa.int64(), True),
    ("resp_body_truncated", pa.bool_(), True),
    ("resp_content_encoding", pa.string(), True),
    # LLM fields (OpenAI-style JSON bodies; null otherwise)
    ("model", pa.string(), True),
    ("stream", pa.bool_(), True),
    ("max_tokens", pa.int32(), True),
    ("message_count", pa.int32(), True),
    ("prompt_chars", pa.int64(), True),
    ("user", pa.string(), True),
    ("finish_reason", pa.string(), True),
    ("prompt_tokens", pa.int32(), True),
    ("completion_tokens", pa.int32(), True),
    # outcome
    ("error_kind", pa.string(), True),
    ("error_message", pa.string(), True),
    ("replayable", pa.bool_(), False),
    # redaction
    ("redacted", pa.list_(pa.string()), True),
]

SCHEMA = pa.schema([pa.field(name, typ, nullable=nullable) for name, typ, nullable in _FIELDS])
COLUMNS: tuple[str, ...] = tuple(name for name, _, _ in _FIELDS)
REQUIRED: frozenset[str] = frozenset(name for name, _, nullable in _FIELDS if not nullable)
HEADER_COLUMNS = ("req_headers", "resp_headers")

# Defaults for the non-nullable columns a caller may leave out.
_DEFAULTS: Record = {
    "req_headers": [],
    "req_body_size": 0,
    "req_body_truncated": False,
    "replayable": True,
    "port": 0,
    "scheme": "http",
}

# Error kinds recorded for flows that failed (the `error_kind` column).
ERROR_KINDS = (
    "client_abort",  # the client went away before the response was complete
    "upstream_refused",  # connection to the upstream refused
    "upstream_reset",  # the upstream reset or closed the connection mid-exchange
    "upstream_timeout",
    "tls",  # TLS handshake failed on either side
    "protocol",  # invalid HTTP
    "killed",  # the flow was killed by an addon or the user
    "other",
)

# Parquet key-value metadata keys.
META_FORMAT_VERSION = b"loadtape.format_version"
META_LOADTAPE_VERSION = b"loadtape.version"
META_CAPTURE_ID = b"loadtape.capture_id"
META_WRITER_ID = b"loadtape.writer_id"
META_REDACTION = b"loadtape.redaction"


class RecordError(ValueError):
    """A record does not fit the schema."""


def normalize(record: Record) -> Record:
    """Return a full record: every column present, defaults filled, required columns checked."""
    out: Record = dict.fromkeys(COLUMNS)
    out.update(_DEFAULTS)
    for key, value in record.items():
        if key not in out:
            raise RecordError(f"unknown column {key!r}")
        out[key] = value
    missing = [name for name in REQUIRED if out[name] is None]
    if missing:
        raise RecordError(f"missing required column(s): {', '.join(sorted(missing))}")
    return out


def to_row(record: Record) -> list[Any]:
    """A normalized record as a positional list in COLUMNS order (the journal's frame payload)."""
    row = [record[name] for name in COLUMNS]
    for name in HEADER_COLUMNS:
        i = _INDEX[name]
        if row[i] is not None:
            row[i] = [list(pair) for pair in row[i]]
    return row


def from_row(columns: tuple[str, ...] | list[str], row: list[Any]) -> Record:
    """Inverse of to_row for a row written with the given column list (may be an older one)."""
    if len(row) != len(columns):
        raise RecordError(f"row has {len(row)} values for {len(columns)} columns")
    rec: Record = dict.fromkeys(COLUMNS)
    rec.update(_DEFAULTS)
    for name, value in zip(columns, row, strict=True):
        if name in rec:
            rec[name] = value
    for name in HEADER_COLUMNS:
        if rec[name] is not None:
            rec[name] = [(str(n), str(v)) for n, v in rec[name]]
    return rec


_INDEX = {name: i for i, name in enumerate(COLUMNS)}


def records_to_table(records: list[Record], metadata: dict[bytes, bytes] | None = None) -> pa.Table:
    """Normalized records to an Arrow table with SCHEMA (column-wise, faster than from_pylist)."""
    arrays = []
    for name, typ, _ in _FIELDS:
        values = [r[name] for r in records]
        if name in HEADER_COLUMNS:
            values = [
                None if v is None else [{"name": n, "value": val} for n, val in v] for v in values
            ]
        arrays.append(pa.array(values, type=typ))
    return pa.Table.from_arrays(arrays, schema=SCHEMA.with_metadata(metadata or {}))


def headers_get(headers: Headers | None, name: str) -> str | None:
    """First value of a header (case-insensitive), or None."""
    if not headers:
        return None
    lname = name.lower()
    for n, v in headers:
        if n.lower() == lname:
            return v
    return None
