"""Reader: filters, projection, format versions, damaged input, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from captures import compaction, store
from captures.errors import CaptureError
from captures.filters import RowFilter, glob_match, parse_status_spec
from captures.reader import Capture
from captures.schema import SCHEMA
from captures.testing import T0_NS, chat_record, http_record, write_capture


@pytest.fixture()
def mixed(tmp_path: Path) -> Path:
    recs = []
    for i in range(40):
        t = T0_NS + i * 100_000_000  # 10 per second over 4 s
        if i % 4 == 0:
            recs.append(http_record(start_ns=t, method="GET", path=f"/api/items/{i}"))
        elif i % 4 == 1:
            recs.append(http_record(start_ns=t, method="post", path="/api/upload", status=503))
        elif i % 4 == 2:
            recs.append(chat_record(start_ns=t, model="small"))
        else:
            recs.append(chat_record(start_ns=t, model="large", stream=True))
    recs.append(http_record(start_ns=T0_NS + 5, status=None, error_kind="upstream_refused"))
    return write_capture(tmp_path / "cap", recs, segment_max_records=7)


def _count(cap: Capture, f: RowFilter) -> int:
    return len(cap.records(["req_start_ns"], f))


def test_filters(mixed: Path) -> None:
    cap = Capture(mixed)
    assert cap.count() == 41
    assert _count(cap, RowFilter(methods=frozenset({"POST"}))) == 30  # upload + chat
    assert _count(cap, RowFilter(path_globs=("/api/*",))) == 20
    assert _count(cap, RowFilter(path_globs=("/api/*", "/health"))) == 21
    assert _count(cap, RowFilter(path_globs=("/api/items/?",))) == 3  # 0, 4, 8
    assert _count(cap, RowFilter(models=frozenset({"large"}))) == 10
    assert _count(cap, RowFilter(statuses=parse_status_spec("5xx"))) == 10
    assert _count(cap, RowFilter(statuses=parse_status_spec("error"))) == 1
    assert _count(cap, RowFilter(statuses=parse_status_spec("200,error"))) == 31
    window = RowFilter(start_ns=T0_NS + 1_000_000_000, end_ns=T0_NS + 2_000_000_000)
    assert _count(cap, window) == 10
    both = RowFilter(models=frozenset({"small"}), start_ns=T0_NS + 2_000_000_000)
    assert _count(cap, both) == 5


@pytest.mark.parametrize(
    ("start", "end", "want"),
    [
        (None, None, None),  # no window: no mask
        (10, 31, None),  # the batch wholly inside: no mask either
        (10, None, None),
        (None, 31, None),
        (11, 31, [False, True, True]),  # the first row before the window
        (10, 30, [True, True, False]),  # the last row at its end (end is exclusive)
        (20, 25, [False, True, False]),
        (40, 50, [False, False, False]),  # wholly outside
    ],
)
def test_time_window_mask(start: int | None, end: int | None, want: list[bool] | None) -> None:
    batch = pa.record_batch({"req_start_ns": pa.array([10, 20, 30], pa.int64())})
    mask = RowFilter(start_ns=start, end_ns=end).mask(batch)
    assert (mask.to_pylist() if mask is not None else None) == want


def test_a_row_without_a_start_is_outside_every_window() -> None:
    batch = pa.record_batch({"req_start_ns": pa.array([10, None, 30], pa.int64())})
    mask = RowFilter(start_ns=10, end_ns=31).mask(batch)
    assert mask is not None and mask.to_pylist() == [True, False, True]


def test_rows_keep_their_order_across_read_batches_and_slices(tmp_path: Path) -> None:
    # Parts are read in batches of up to READ_ROWS rows and converted in batch_size slices:
    # two interleaved writers, a window cutting both ends, and slices of 7 keep every row once.
    recs = [http_record(start_ns=T0_NS + i * 10, path=f"/{i}") for i in range(5000)]
    a = write_capture(tmp_path / "cap", recs[0::2], writer_id="wa")
    write_capture(a, recs[1::2], writer_id="wb")
    f = RowFilter(start_ns=T0_NS + 55, end_ns=T0_NS + 49_995)
    got = [r["path"] for r in Capture(a).rows(["path"], f, batch_size=7)]
    assert got == [f"/{i}" for i in range(6, 5000)]


def test_projection_returns_only_asked_columns_in_order(mixed: Path) -> None:
    rows = Capture(mixed).records(["path", "status"])
    assert all(set(r) == {"path", "status"} for r in rows)
    assert len(rows) == 41
    with pytest.raises(CaptureError, match="unknown column"):
        Capture(mixed).records(["nope"])


def test_glob_semantics() -> None:
    assert glob_match("/v1/*", "/v1/chat/completions")
    assert glob_match("/v?/models", "/v1/models")
    assert not glob_match("/v1/models", "/v1/models/x")
    assert glob_match("/[a-c]x", "/bx") and not glob_match("/[!a-c]x", "/bx")


def test_bad_status_spec() -> None:
    with pytest.raises(ValueError, match="'2x'"):
        parse_status_spec("200,2x")


def test_newer_format_is_refused_with_a_clear_error(mixed: Path) -> None:
    manifest = json.loads((mixed / "capture.json").read_text())
    manifest["format_version"] = 2
    (mixed / "capture.json").write_text(json.dumps(manifest))
    with pytest.raises(CaptureError, match=r"format v2.*reads up to v1.*upgrade"):
        Capture(mixed)


def test_newer_format_part_is_refused(tmp_path: Path) -> None:
    table = pa.table({"req_start_ns": [1]}).replace_schema_metadata(
        {b"loadtape.format_version": b"7"}
    )
    pq.write_table(table, tmp_path / "p.parquet")
    with pytest.raises(CaptureError, match="format v7"):
        Capture(tmp_path / "p.parquet")


def test_older_part_without_new_columns_reads_nulls(tmp_path: Path) -> None:
    """Adding a nullable column is compatible: parts written before it read it as null."""
    d = write_capture(tmp_path / "cap", [chat_record(start_ns=5)])
    part = store.list_parts(d)[0]
    t = pq.read_table(part)
    meta = t.schema.metadata
    t = t.drop_columns(["proxy_inflight", "user"]).replace_schema_metadata(meta)
    pq.write_table(t, part)
    row = Capture(d).records()[0]
    assert row["proxy_inflight"] is None and row["user"] is None
    assert row["model"] == "small"


def test_not_a_capture(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptureError, match="not a capture"):
        Capture(tmp_path / "empty")
    with pytest.raises(CaptureError, match="no such capture"):
        Capture(tmp_path / "missing")
    (tmp_path / "x.parquet").write_bytes(b"garbage" * 10)
    with pytest.raises(CaptureError, match="not a readable Parquet part"):
        Capture(tmp_path / "x.parquet")
    (tmp_path / "plain.parquet").write_bytes(b"")
    pq.write_table(pa.table({"a": [1]}), tmp_path / "plain.parquet")
    with pytest.raises(CaptureError, match="without loadtape capture metadata"):
        Capture(tmp_path / "plain.parquet")


def test_single_part_file_opens_as_a_capture(mixed: Path) -> None:
    part = store.list_parts(mixed)[0]
    cap = Capture(part)
    assert 0 < cap.count() <= 7


def test_table_has_schema_types(mixed: Path) -> None:
    t = Capture(mixed).table(["req_start_ns", "req_headers", "chunk_offsets_us"])
    assert t.schema.field("req_headers").type == SCHEMA.field("req_headers").type
    assert t.num_rows == 41


MAKE_BIG = textwrap.dedent(
    """
    import os, sys
    from captures.testing import chat_record
    from captures.writer import CaptureWriter

    d = sys.argv[1]
    n, body = int(sys.argv[2]), int(sys.argv[3])
    with CaptureWriter(d, segment_max_records=2000) as w:
        for i in range(0, n, 500):
            batch = []
            for j in range(i, min(i + 500, n)):
                r = chat_record(start_ns=10**18 + j * 1000)
                r["resp_body"] = os.urandom(body)  # incompressible
                batch.append(r)
            w.append_many(batch)
    """
)

MEMORY_PROBE = textwrap.dedent(
    """
    import os, sys, tracemalloc
    import pyarrow as pa
    from captures.reader import Capture

    d = sys.argv[1]
    size = sum(f.stat().st_size for f in os.scandir(os.path.join(d, "parts")))
    pool = pa.default_memory_pool()
    cap = Capture(d)
    base_arrow = pool.bytes_allocated()
    tracemalloc.start()
    rows = 0
    total = 0
    for row in cap.rows(batch_size=256):
        rows += 1
        total += len(row["resp_body"])
    _, py_peak = tracemalloc.get_traced_memory()
    print(rows, size, pool.max_memory() - base_arrow, py_peak)
    """
)


def test_reader_memory_stays_bounded_on_a_capture_much_larger_than_its_buffer(
    tmp_path: Path,
) -> None:
    n, body = 12_000, 8_192  # ~100 MB of incompressible bodies
    cap = str(tmp_path / "cap")
    subprocess.run(
        [sys.executable, "-c", MAKE_BIG, cap, str(n), str(body)], check=True, timeout=300
    )
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, cap],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.split()
    rows, size, arrow_peak, py_peak = map(int, out)
    assert rows == n
    assert size > 90e6
    # A 256-row batch of 8 KiB bodies is ~2 MB and a row group ~8 MB (ROW_GROUP_BYTES): memory
    # holds a few of those, a fixed amount whatever the capture's size.
    assert arrow_peak < 4 * compaction.ROW_GROUP_BYTES, (arrow_peak, size)
    assert py_peak < 2 * compaction.ROW_GROUP_BYTES, (py_peak, size)
    print(f"capture {size / 1e6:.0f} MB: arrow peak {arrow_peak / 1e6:.1f} MB, ", end="")
    print(f"python peak {py_peak / 1e6:.1f} MB")
