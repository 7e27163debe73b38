"""Results: one row per request (`SCHEMA`), written to Parquet in batches (bounded memory),
with the histograms fed from the same batches; `Expect` decides which statuses
count as success, expected shedding or failure. Injected credentials never appear in them: the
request headers a replay sends are not recorded, only what the results need. (Writing them during a
run: writer.py; reading a results directory back: resultsdir.py.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa
import pyarrow.compute as pc

from captures.errors import UserError

from .metrics import Metrics

SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("stream", pa.string()),
        ("target", pa.string()),
        ("copy", pa.int32()),
        ("loop", pa.int32()),
        ("session", pa.string()),
        ("source_writer", pa.string()),
        ("source_seq", pa.int64()),
        ("method", pa.string()),
        ("api", pa.string()),  # the API surface: chat, completions, responses, messages, ...
        ("endpoint", pa.string()),
        ("model", pa.string()),
        ("req_bytes", pa.int64()),
        ("intended_ns", pa.int64()),
        ("sent_ns", pa.int64()),
        ("headers_ns", pa.int64()),
        ("first_token_ns", pa.int64()),  # the first output event of any kind
        ("first_text_ns", pa.int64()),  # the first visible text
        ("end_ns", pa.int64()),
        ("status", pa.int32()),
        ("outcome", pa.string()),  # ok | expected | failed
        ("error_kind", pa.string()),
        ("error_message", pa.string()),
        ("retry_after", pa.string()),
        ("bytes_in", pa.int64()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("reasoning_tokens", pa.int32()),
        ("cached_tokens", pa.int32()),
        ("cache_write_tokens", pa.int32()),
        ("finish_reason", pa.string()),
        ("events", pa.int32()),
        ("text_events", pa.int32()),
        ("reasoning_events", pa.int32()),
        ("tool_events", pa.int32()),
        ("stream_complete", pa.bool_()),
        ("response_id", pa.string()),
        ("minted_ids", pa.list_(pa.string())),  # ids the target made: response, tool calls
        ("answer_hash", pa.string()),  # the answer in canonical form (diff: equivalent answers)
        ("token_offsets_us", pa.list_(pa.int32())),
        ("body_hash", pa.string()),  # blake2b-128 hex of the decoded body (loadtape diff)
        ("recorded_status", pa.int32()),
        ("recorded_ttfb_us", pa.int64()),
        ("recorded_first_chunk_us", pa.int64()),
        ("recorded_chunks", pa.int32()),
        ("recorded_completion_tokens", pa.int32()),
        ("recorded_finish_reason", pa.string()),
    ]
)
COLUMNS = tuple(SCHEMA.names)

# Written beside the ns integers for a query's sake (DuckDB, polars, pandas): the timing
# metrics in milliseconds, by the same definitions as the histograms (timings.timings), and
# the instants as UTC timestamps (microseconds: Python's datetime, and so pyarrow's
# to_pylist, stops there; the ns integers keep the rest). Derived when a row group is written;
# not read back by loadtape itself, which keeps to the integers.
UTC_US = pa.timestamp("us", tz="UTC")
DERIVED = pa.schema(
    [
        ("latency_ms", pa.float64()),  # intended send -> end
        ("service_ms", pa.float64()),  # actual send -> end
        ("lag_ms", pa.float64()),  # intended -> actual send
        ("ttfb_ms", pa.float64()),  # send -> response headers
        ("ttft_ms", pa.float64()),  # send -> first output event
        ("ttft_text_ms", pa.float64()),  # send -> first visible text
        ("intended_at", UTC_US),
        ("sent_at", UTC_US),
        ("end_at", UTC_US),
    ]
)
FILE_SCHEMA = pa.schema([*SCHEMA, *DERIVED])


def _instant(ns: pa.ChunkedArray) -> pa.ChunkedArray:
    as_ns = pc.cast(ns, pa.timestamp("ns", tz="UTC"))
    return pc.cast(as_ns, UTC_US, safe=False)  # truncated to the microsecond


def with_derived(table: pa.Table) -> pa.Table:
    """`table` (SCHEMA) with the DERIVED columns appended."""

    def ms(later: str, earlier: str) -> pa.ChunkedArray:
        diff = pc.cast(pc.subtract(table[later], table[earlier]), pa.float64())
        return pc.divide(diff, 1e6)

    derived = {
        "latency_ms": ms("end_ns", "intended_ns"),
        "service_ms": ms("end_ns", "sent_ns"),
        "lag_ms": pc.max_element_wise(ms("sent_ns", "intended_ns"), 0.0),
        "ttfb_ms": ms("headers_ns", "sent_ns"),
        "ttft_ms": ms("first_token_ns", "sent_ns"),
        "ttft_text_ms": ms("first_text_ns", "sent_ns"),
        "intended_at": _instant(table["intended_ns"]),
        "sent_at": _instant(table["sent_ns"]),
        "end_at": _instant(table["end_ns"]),
    }
    for f in DERIVED:
        table = table.append_column(f, derived[f.name].cast(f.type))
    return table


@dataclass(frozen=True)
class Expect:
    """--expect-status: which statuses are expected shedding (not failures). 2xx is success."""

    codes: frozenset[int] = frozenset()
    classes: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, spec: str | None) -> Expect:
        codes, classes = set(), set()
        for part in (p.strip().lower() for p in (spec or "").split(",") if p.strip()):
            if re.fullmatch(r"[1-5]xx", part):
                classes.add(int(part[0]))
            elif re.fullmatch(r"[1-5]\d\d", part):
                codes.add(int(part))
            else:
                raise UserError(f"--expect-status: bad status {part!r} (want e.g. 2xx,503,429)")
        classes.discard(2)
        return cls(frozenset(c for c in codes if c // 100 != 2), frozenset(classes))

    def outcome(self, status: int | None, error: str | None) -> str:
        if error is not None or status is None:
            return "failed"
        if 200 <= status < 300:
            return "ok"
        if status in self.codes or status // 100 in self.classes:
            return "expected"
        return "failed"


class ResultObserver(Protocol):
    """Sees every batch of result rows as the histograms do (the live metrics endpoint)."""

    def record(self, b: Mapping[str, Any]) -> None: ...


@runtime_checkable
class ShardedObserver(ResultObserver, Protocol):
    """An observer of a run split over worker processes: each worker feeds its own (made by
    calling the driver's observer's type with no arguments) and ships `shard_state()` with its
    progress; the driver's shows the whole run as `absorb` of the shards' latest states."""

    def shard_state(self) -> Any: ...

    def absorb(self, states: list[Any]) -> None: ...


def warm_up() -> None:
    """Run one synthetic row through Arrow conversion and the histograms before a run starts,
    so first-call costs (lazy imports, numpy and Arrow code paths) do not land on the first
    shots as schedule lag."""
    row: dict[str, list[Any]] = {c: [None] for c in COLUMNS}
    row.update(
        seq=[0],
        stream=["warmup"],
        endpoint=["/"],
        model=[""],
        intended_ns=[0],
        sent_ns=[1],
        end_ns=[2],
        headers_ns=[1],
        first_token_ns=[1],
        status=[200],
        outcome=["ok"],
        bytes_in=[0],
        token_offsets_us=[[0, 1]],
        completion_tokens=[2],
        prompt_tokens=[1],
    )
    pa.RecordBatch.from_arrays(
        [pa.array(row[c], SCHEMA.field(c).type) for c in COLUMNS], schema=SCHEMA
    )
    m = Metrics()
    m.record_batch(row)
    m.seal_intervals()
