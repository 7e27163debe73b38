"""Capture format v1: one row per HTTP exchange.

Every column is documented in docs/capture-format.md. A record in memory is a plain dict keyed by
column name (`Record`); the journal stores it as a positional msgpack array in `COLUMNS` order and
the Parquet parts store it with `SCHEMA`.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from operator import itemgetter
from typing import Any

import pyarrow as pa

from .version import FORMAT_VERSION, LOADTAPE_VERSION, META_FORMAT_VERSION

__all__ = ["FORMAT_VERSION", "LOADTAPE_VERSION", "META_FORMAT_VERSION"]

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
    # LLM fields (read by the API surface's module, captures/protocols; null otherwise)
    ("api", pa.string(), True),
    ("model", pa.string(), True),
    ("stream", pa.bool_(), True),
    ("max_tokens", pa.int32(), True),
    ("message_count", pa.int32(), True),
    ("prompt_chars", pa.int64(), True),
    ("user", pa.string(), True),
    ("finish_reason", pa.string(), True),
    ("prompt_tokens", pa.int32(), True),
    ("completion_tokens", pa.int32(), True),
    ("reasoning_tokens", pa.int32(), True),
    ("cached_tokens", pa.int32(), True),
    ("cache_write_tokens", pa.int32(), True),
    ("response_id", pa.string(), True),
    ("first_token_us", pa.int32(), True),
    ("first_text_us", pa.int32(), True),
    ("output_events", pa.int32(), True),
    ("stream_complete", pa.bool_(), True),
    ("tool_call_ids", pa.list_(pa.string()), True),  # the answer's tool calls' ids, in order
    ("answer_hash", pa.string(), True),  # a hash of the answer in canonical form (diff, history)
    # conversations (captures/conversations.py: found from content where no hint says)
    ("conversation", pa.string(), True),
    ("turn", pa.int32(), True),
    ("think_us", pa.int64(), True),  # from the previous turn's answer to this request
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
    "req_headers": (),
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
    "stream_error",  # an error event in the response stream (the API's own error event)
    "other",
)

# Parquet key-value metadata keys.
META_LOADTAPE_VERSION = b"loadtape.version"
META_CAPTURE_ID = b"loadtape.capture_id"
META_WRITER_ID = b"loadtape.writer_id"
META_REDACTION = b"loadtape.redaction"


class RecordError(ValueError):
    """A record does not fit the schema."""


_INDEX = {name: i for i, name in enumerate(COLUMNS)}
_COLUMN_SET = frozenset(COLUMNS)
_DEFAULT_ROW = tuple(_DEFAULTS.get(name) for name in COLUMNS)
_REQUIRED_IDX = tuple(i for i, name in enumerate(COLUMNS) if name in REQUIRED)
START_IDX = _INDEX["req_start_ns"]
SEQ_IDX = _INDEX["seq"]


_DEFAULT_RECORD = dict(zip(COLUMNS, _DEFAULT_ROW, strict=True))
_GET_ROW = itemgetter(*COLUMNS)


_IDENTITY = (_INDEX["capture_id"], _INDEX["writer_id"], _INDEX["seq"])


def to_row(record: Record, identity: tuple[str, str, int] | None = None) -> list[Any]:
    """A record as a positional list in COLUMNS order (the journal's frame payload), with
    defaults filled, identity (capture id, writer id, seq) set if given, required columns
    checked."""
    full = {**_DEFAULT_RECORD, **record}
    if len(full) != len(COLUMNS):
        unknown = sorted(set(record) - _COLUMN_SET)
        raise RecordError(f"unknown column(s): {', '.join(unknown)}")
    row = list(_GET_ROW(full))
    if identity is not None:
        row[_IDENTITY[0]], row[_IDENTITY[1]], row[_IDENTITY[2]] = identity
    for i in _REQUIRED_IDX:
        if row[i] is None:
            missing = [COLUMNS[j] for j in _REQUIRED_IDX if row[j] is None]
            raise RecordError(f"missing required column(s): {', '.join(missing)}")
    return row


def normalize(record: Record) -> Record:
    """A full record: every column present, defaults filled, required columns checked."""
    return dict(zip(COLUMNS, to_row(record), strict=True))


def remap_row(columns: Sequence[str], row: Sequence[Any]) -> Sequence[Any]:
    """A row written with another column list (an older or newer writer) in COLUMNS order."""
    if len(row) != len(columns):
        raise RecordError(f"row has {len(row)} values for {len(columns)} columns")
    if tuple(columns) == COLUMNS:
        return row
    out = list(_DEFAULT_ROW)
    for name, value in zip(columns, row, strict=True):
        i = _INDEX.get(name)
        if i is not None:
            out[i] = value
    return out


def from_row(columns: Sequence[str], row: Sequence[Any]) -> Record:
    """A journal row as a record dict, headers as (name, value) tuples."""
    rec = dict(zip(COLUMNS, remap_row(columns, row), strict=True))
    for name in HEADER_COLUMNS:
        if rec[name] is not None:
            rec[name] = [(str(n), str(v)) for n, v in rec[name]]
    return rec


def _headers_array(values: Sequence[Any]) -> pa.Array:
    """list<struct<name, value>> from sequences of (name, value) pairs, built from flat arrays."""
    offsets = [0]
    names: list[str] = []
    vals: list[str] = []
    nulls = []
    n = 0
    for v in values:
        if v is None:
            nulls.append(True)
        else:
            nulls.append(False)
            for name, value in v:
                names.append(name)
                vals.append(value)
            n = len(names)
        offsets.append(n)
    struct = pa.StructArray.from_arrays(
        [pa.array(names, pa.string()), pa.array(vals, pa.string())], names=["name", "value"]
    )
    mask = pa.array(nulls, pa.bool_()) if any(nulls) else None
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), struct, mask=mask)


def _binary_array(values: Sequence[bytes | None]) -> pa.Array:
    """A binary column from one joined buffer and offsets (~5x faster than pa.array)."""
    nulls = [v is None for v in values]
    has_null = any(nulls)
    clean = [b"" if v is None else v for v in values] if has_null else values
    data = b"".join(clean)  # type: ignore[arg-type]
    if len(data) >= 2**31:
        return pa.array(values, pa.binary())  # offsets would overflow int32: let Arrow chunk it
    offsets = pa.array(list(accumulate(map(len, clean), initial=0)), pa.int32())  # type: ignore[arg-type]
    validity = pa.array([not n for n in nulls], pa.bool_()).buffers()[1] if has_null else None
    return pa.Array.from_buffers(
        pa.binary(), len(values), [validity, offsets.buffers()[1], pa.py_buffer(data)]
    )


def rows_to_table(
    rows: Sequence[Sequence[Any]], metadata: dict[bytes, bytes] | None = None
) -> pa.Table:
    """Positional rows (COLUMNS order) to an Arrow table with SCHEMA, column by column."""
    arrays = []
    for i, (name, typ, _) in enumerate(_FIELDS):
        values = [row[i] for row in rows]
        if name in HEADER_COLUMNS:
            arrays.append(_headers_array(values))
        elif typ == pa.binary():
            arrays.append(_binary_array(values))
        else:
            arrays.append(pa.array(values, type=typ))
    return pa.Table.from_arrays(arrays, schema=SCHEMA.with_metadata(metadata or {}))


def records_to_table(
    records: Sequence[Record], metadata: dict[bytes, bytes] | None = None
) -> pa.Table:
    """Record dicts to an Arrow table with SCHEMA."""
    return rows_to_table([to_row(r) for r in records], metadata)


def headers_get(headers: Headers | None, name: str) -> str | None:
    """First value of a header (case-insensitive), or None."""
    if not headers:
        return None
    lname = name.lower()
    for n, v in headers:
        if n.lower() == lname:
            return v
    return None
