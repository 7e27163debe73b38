"""record -> journal -> Parquet -> reader, for arbitrary rows; recovery; concurrent writers."""

from __future__ import annotations

import multiprocessing
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from captures import store
from captures.reader import Capture
from captures.schema import COLUMNS, Record
from captures.testing import chat_record, http_record, synthetic_records, write_capture
from captures.writer import CaptureWriter

text = st.text(max_size=40)
small_int = st.integers(0, 2**31 - 1)
headers = st.lists(st.tuples(st.text(min_size=1, max_size=20), st.text(max_size=60)), max_size=6)
body = st.one_of(st.none(), st.binary(max_size=300), st.just(b""), st.just(os.urandom(70_000)))


@st.composite
def records(draw: st.DrawFn) -> Record:
    start = draw(st.integers(0, 2**62))
    return {
        "conn_id": draw(st.one_of(st.none(), text)),
        "session_key": draw(st.one_of(st.none(), text)),
        "req_start_ns": start,
        "req_end_ns": draw(st.one_of(st.none(), st.integers(0, 2**62))),
        "resp_start_ns": draw(st.one_of(st.none(), st.integers(0, 2**62))),
        "chunk_offsets_us": draw(st.one_of(st.none(), st.lists(small_int, max_size=5))),
        "chunk_sizes": draw(st.one_of(st.none(), st.lists(small_int, max_size=5))),
        "method": draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"])),
        "scheme": draw(st.sampled_from(["http", "https"])),
        "host": draw(text),
        "port": draw(st.integers(0, 65535)),
        "path": draw(text),
        "query": draw(st.one_of(st.none(), text)),
        "http_version": draw(st.sampled_from(["HTTP/1.1", "HTTP/2.0", None])),
        "req_headers": draw(headers),
        "req_body": draw(body),
        "req_body_size": draw(st.integers(0, 2**40)),
        "req_body_truncated": draw(st.booleans()),
        "status": draw(st.one_of(st.none(), st.integers(100, 599))),
        "resp_headers": draw(st.one_of(st.none(), headers)),
        "resp_body": draw(body),
        "model": draw(st.one_of(st.none(), text)),
        "stream": draw(st.one_of(st.none(), st.booleans())),
        "max_tokens": draw(st.one_of(st.none(), small_int)),
        "prompt_tokens": draw(st.one_of(st.none(), small_int)),
        "error_kind": draw(
            st.one_of(st.none(), st.sampled_from(["client_abort", "upstream_reset"]))
        ),
        "replayable": draw(st.booleans()),
        "redacted": draw(st.one_of(st.none(), st.lists(text, max_size=3))),
    }


def _strip(rec: Record) -> Record:
    return {k: v for k, v in rec.items() if k not in ("capture_id", "writer_id", "seq")}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(records(), min_size=1, max_size=12))
def test_roundtrip_arbitrary_rows(
    tmp_path_factory: pytest.TempPathFactory, rows: list[Record]
) -> None:
    d = tmp_path_factory.mktemp("cap")
    with CaptureWriter(d, segment_max_records=5) as w:
        for r in rows:
            w.append(r)
    cap = Capture(d)
    got = cap.records()
    assert len(got) == len(rows)
    # Each written row comes back exactly once, with every column intact.
    by_seq = {g["seq"]: g for g in got}
    for seq, original in enumerate(rows):
        back = by_seq[seq]
        for key, value in original.items():
            assert back[key] == value, (key, value, back[key])
        assert back["writer_id"] == w.writer_id and back["capture_id"] == w.capture_id
    starts = [g["req_start_ns"] for g in got]
    assert starts == sorted(starts)


def test_reader_orders_across_overlapping_parts(tmp_path: Path) -> None:
    recs = synthetic_records(3000, rate=200, seed=3)
    # Two writers, interleaved in time, several segments each: parts overlap.
    with (
        CaptureWriter(tmp_path, segment_max_records=200) as a,
        CaptureWriter(tmp_path, segment_max_records=300) as b,
    ):
        for i in range(0, len(recs), 50):
            (a if (i // 50) % 2 else b).append_many(recs[i : i + 50])
    cap = Capture(tmp_path)
    assert len(cap.parts) > 10
    got = [r["req_start_ns"] for r in cap.rows(["req_start_ns"])]
    assert got == sorted(r["req_start_ns"] for r in recs)
    assert cap.count() == 3000
    span = cap.time_span()
    assert span == (min(got), max(got))


def test_capture_files_are_private(tmp_path: Path) -> None:
    d = tmp_path / "cap"
    w = CaptureWriter(d)
    w.append(chat_record())
    w.sync()
    seg_modes = [stat.S_IMODE(p.stat().st_mode) for p in (d / "journal").iterdir()]
    w.close()
    assert seg_modes and all(m == 0o600 for m in seg_modes)
    for p in [d, d / "journal", d / "parts"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o700, p
    for p in [d / "capture.json", *(d / "parts").iterdir()]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def _kill_writer_midway(directory: str, n: int, ready: Any) -> None:
    w = CaptureWriter(directory, segment_max_records=10_000)
    for i in range(n):
        w.append(chat_record(start_ns=10_000 + i))
    w.sync()
    ready.set()
    os._exit(0)  # die without closing: segments stay, lock dies with the process


def test_dead_writer_is_recovered_on_open(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    p = ctx.Process(target=_kill_writer_midway, args=(str(tmp_path), 25, ready))
    p.start()
    p.join(30)
    assert ready.is_set()
    assert store.list_segments(tmp_path), "the dead writer should have left a segment"
    assert not store.list_parts(tmp_path)
    cap = Capture(tmp_path)
    assert cap.count() == 25
    assert not store.list_segments(tmp_path)
    assert len(store.list_parts(tmp_path)) == 1
    # Opening again finds nothing more to do and the same records.
    assert Capture(tmp_path).count() == 25


def test_cut_segment_at_every_byte_of_last_frame_recovers_the_rest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    w = CaptureWriter(src)
    w.append_many([chat_record(start_ns=100 + i) for i in range(3)])
    w.sync()
    seg = store.list_segments(src)[0].path
    full = seg.read_bytes()
    last_frame_start = len(full) - len(_last_frame(full))
    w._lock.release(unlink=False)  # simulate death: lock gone, segment left
    for cut in range(last_frame_start, len(full) + 1):
        d = tmp_path / f"cut{cut}"
        (d / "journal").mkdir(parents=True)
        (d / "parts").mkdir()
        (d / "capture.json").write_bytes((src / "capture.json").read_bytes())
        (d / "journal" / seg.name).write_bytes(full[:cut])
        cap = Capture(d)
        expected = 3 if cut == len(full) else 2
        assert cap.count() == expected, cut
        if cut not in (last_frame_start, len(full)):
            assert any("truncated" in n for n in cap.notes), cut


def _last_frame(data: bytes) -> bytes:
    from captures import journal

    scan = journal.scan_bytes(data)
    off = journal.HEAD_SIZE + len(journal.encode_frame(scan.header)[8:])
    frames = []
    while off < len(data):
        length = int.from_bytes(data[off : off + 4], "little")
        frames.append(data[off : off + 8 + length])
        off += 8 + length
    return frames[-1]


def test_crash_after_rename_before_unlink_does_not_duplicate(tmp_path: Path) -> None:
    w = CaptureWriter(tmp_path)
    w.append_many([chat_record(start_ns=i) for i in range(10)])
    w.sync()
    w._seal()
    seg, _ = w._to_compact[0]
    keep = seg.path.read_bytes()
    w._compact_pending()
    seg.path.write_bytes(keep)  # the segment reappears as if the unlink never happened
    w._lock.release(unlink=False)
    assert Capture(tmp_path).count() == 10
    assert not store.list_segments(tmp_path)


def test_live_writer_segments_are_read_but_not_compacted(tmp_path: Path) -> None:
    w = CaptureWriter(tmp_path)
    w.append_many([chat_record(start_ns=i) for i in range(7)])
    w.sync()
    cap = Capture(tmp_path)  # the writer is alive: its lock is held
    assert cap.count() == 7
    assert store.list_segments(tmp_path), "a live writer's segment must stay in place"
    w.close()
    assert Capture(tmp_path).count() == 7


def _writer_process(directory: str, k: int, n: int) -> None:
    with CaptureWriter(directory, segment_max_records=97) as w:
        for i in range(n):
            w.append(http_record(start_ns=i * 1000 + k, path=f"/w{k}/{i}"))
            if i % 13 == 0:
                w.tick()


def test_concurrent_writer_processes_share_one_directory(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer_process, args=(str(tmp_path), k, 400)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cap = Capture(tmp_path)
    rows = cap.records(["req_start_ns", "path", "writer_id", "seq"])
    assert len(rows) == 1600
    assert len({r["writer_id"] for r in rows}) == 4
    assert len({(r["writer_id"], r["seq"]) for r in rows}) == 1600
    assert [r["req_start_ns"] for r in rows] == sorted(r["req_start_ns"] for r in rows)
    assert {r["path"] for r in rows} == {f"/w{k}/{i}" for k in range(4) for i in range(400)}


def test_concurrent_writer_threads(tmp_path: Path) -> None:
    def run(k: int) -> None:
        _writer_process(str(tmp_path), k, 300)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Capture(tmp_path).count() == 900


def test_disk_refusal_keeps_records_pending_then_writes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import captures.writer as wmod

    w = CaptureWriter(tmp_path)
    w.append(chat_record(start_ns=1))
    real_write = os.write
    fail = {"on": True}

    def flaky_write(fd: int, data: Any) -> int:
        if fail["on"]:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(wmod.os, "write", flaky_write)
    with pytest.raises(OSError):
        w.append(chat_record(start_ns=2))
    assert w.pending_records == 1 and w.lost == 0
    fail["on"] = False
    w.tick()
    assert w.pending_records == 0
    monkeypatch.undo()
    w.close()
    cap = Capture(tmp_path)
    assert [r["req_start_ns"] for r in cap.rows(["req_start_ns"])] == [1, 2]
    assert cap.notes == []


def test_all_columns_known_to_reader(tmp_path: Path) -> None:
    write_capture(tmp_path, [chat_record(stream=True)])
    row = Capture(tmp_path).records()[0]
    assert set(row) == set(COLUMNS)
    assert row["stream"] is True and row["finish_reason"] == "stop"
    assert row["completion_tokens"] == 8 and row["prompt_tokens"] == 3


def test_journal_lag_is_the_age_of_the_oldest_record_not_yet_in_parquet(tmp_path: Path) -> None:
    now = [100.0]
    w = CaptureWriter(tmp_path / "cap", segment_max_records=3, clock=lambda: now[0])
    assert w.journal_lag_s == 0.0  # nothing written: nothing waits
    w.append(chat_record())
    now[0] = 102.5
    w.tick()
    assert w.journal_lag_s == pytest.approx(2.5)  # in the journal, not yet in a part
    w.append_many([chat_record(), chat_record()])  # the segment fills: sealed and compacted
    now[0] = 103.0
    w.tick()
    assert w.parts_written == 1
    assert w.journal_lag_s == 0.0  # the next segment is open but empty
    w.append(chat_record())
    now[0] = 104.0
    assert w.journal_lag_s == pytest.approx(1.0)
    w.close()
    assert w.journal_lag_s == 0.0


def test_compaction_state_follows_the_compactor_process(tmp_path: Path) -> None:
    w = CaptureWriter(tmp_path / "cap", segment_max_records=2, compaction="process")
    assert w.compaction_state == {
        "segments_queued": 0, "segments_compacting": 0, "compactor_up": -1, "rejected": 0,
    }  # fmt: skip
    w.append_many([chat_record(), chat_record(), chat_record()])  # one segment sealed
    w.tick()
    state = w.compaction_state
    assert state["compactor_up"] == 1  # started for the sealed segment
    assert state["segments_queued"] + state["segments_compacting"] + w.parts_written == 1
    w.close()
    assert w.parts_written == 2 and w.compaction_state["segments_queued"] == 0
    assert w.compaction_state["segments_compacting"] == 0
    assert len(Capture(tmp_path / "cap").records()) == 3


def test_batch_rows_match_arrows_own_rows_for_headers_nulls_and_slices() -> None:
    """Rows are built column by column (headers as (name, value) pairs): the same as Arrow's
    own to_pylist with each header dict turned into a pair, in column order, for a batch with
    null and empty header lists, and for slices of it (whose list values start mid-array)."""
    from captures.rows import batch_rows
    from captures.schema import SCHEMA

    heads = [[("a", "1"), ("b", "2")], None, [], [("c", "3")], None, [("d", "4"), ("e", "5")]]
    batch = pa.RecordBatch.from_pydict(
        {
            "seq": list(range(6)),
            "req_headers": [
                None if h is None else [{"name": n, "value": v} for n, v in h] for h in heads
            ],
            "path": [f"/{i}" for i in range(6)],
        },
        schema=pa.schema([SCHEMA.field("seq"), SCHEMA.field("req_headers"), SCHEMA.field("path")]),
    )

    def arrow_rows(b: pa.RecordBatch) -> list[dict[str, Any]]:
        rows = b.to_pylist()
        for r in rows:
            if r["req_headers"] is not None:
                r["req_headers"] = [(p["name"], p["value"]) for p in r["req_headers"]]
        return rows

    for b in (batch, batch.slice(1), batch.slice(2, 3), batch.slice(5)):
        got = batch_rows(b)
        assert got == arrow_rows(b)
        assert [list(r) for r in got] == [["seq", "req_headers", "path"]] * b.num_rows
    assert [r["req_headers"] for r in batch_rows(batch)] == heads


def test_each_batch_is_converted_once_however_its_rows_are_interleaved() -> None:
    """Two batches' rows alternate (two writers' parts merged): each batch is converted whole
    once, the items come in the chunks' order, and none is held once its batch is done."""
    from captures.rows import Columns, per_batch

    a: Columns = {"req_start_ns": [0, 2, 4], "path": ["a0", "a1", "a2"]}
    b: Columns = {"req_start_ns": [1, 3], "path": ["b0", "b1"]}
    c: Columns = {"req_start_ns": [5, 6, 7], "path": ["c0", "c1", "c2"]}
    converted: list[str] = []
    held: list[int] = []

    def convert(cols: Columns) -> list[str]:
        converted.append(cols["path"][0][0])
        return [p.upper() for p in cols["path"]]

    chunks = [(a, 0, 1), (b, 0, 1), (a, 1, 2), (b, 1, 2), (a, 2, 3), (c, 0, 3)]
    gen = per_batch(chunks, convert)
    items = []
    for item in gen:
        items.append(item)
        held.append(len(gen.gi_frame.f_locals["done"]) if gen.gi_frame else 0)
    assert items == ["A0", "B0", "A1", "B1", "A2", "C0", "C1", "C2"]
    assert converted == ["a", "b", "c"]
    assert held == [1, 2, 2, 2, 1, 1, 1, 1]  # b let go after its last chunk, a after its own
