"""Journal frames: encoding, damage detection, recovery of good frames around damage."""

from __future__ import annotations

import struct
import zlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captures import journal
from captures.schema import COLUMNS, FORMAT_VERSION, to_row
from captures.testing import chat_record


def _header() -> dict[str, object]:
    return journal.segment_header(
        format_version=FORMAT_VERSION,
        writer_id="wtest",
        capture_id="ctest",
        segment=0,
        columns=COLUMNS,
        redaction={},
    )


def _rows(n: int) -> list[list[object]]:
    out = []
    for i in range(n):
        rec = {**chat_record(start_ns=1000 + i), "capture_id": "c", "writer_id": "w", "seq": i}
        out.append(to_row(rec))
    return out


def _segment(n: int) -> tuple[bytes, list[int]]:
    """A segment with n record frames; also the offset where each record frame starts."""
    data = journal.encode_frame(_header())
    offsets = []
    for row in _rows(n):
        offsets.append(len(data))
        data += journal.encode_frame(row)
    return data, offsets


def test_frame_layout_is_length_crc_payload() -> None:
    frame = journal.encode_frame([1, "two", b"\x03"])
    length, crc = struct.unpack_from("<II", frame)
    payload = frame[8:]
    assert length == len(payload)
    assert crc == zlib.crc32(payload)
    assert msgpack.unpackb(payload) == [1, "two", b"\x03"]


def test_clean_segment_scans_without_damage() -> None:
    data, _ = _segment(5)
    scan = journal.scan_bytes(data)
    assert scan.header is not None and scan.header["writer_id"] == "wtest"
    assert len(scan.frames) == 5
    assert scan.damage == []
    assert scan.good_end == len(data)


def test_not_a_segment_is_rejected() -> None:
    with pytest.raises(journal.JournalError):
        journal.scan_bytes(b"PAR1 this is something else entirely")
    with pytest.raises(journal.JournalError):
        journal.scan_bytes(journal.encode_frame({"magic": "other"}))


def test_cut_at_every_byte_of_last_frame() -> None:
    """A crash can cut the last frame anywhere: the frames before it always survive, the cut is
    reported as truncation, never as an exception."""
    data, offsets = _segment(3)
    last = offsets[-1]
    for cut in range(last, len(data)):
        scan = journal.scan_bytes(data[:cut])
        assert len(scan.frames) == 2, cut
        if cut == last:
            assert scan.damage == []
        else:
            assert len(scan.damage) == 1, cut
            d = scan.damage[0]
            assert d.kind == "truncated" and d.offset == last and d.skipped_bytes == cut - last


def test_corrupt_frame_in_the_middle_keeps_the_frames_after_it() -> None:
    data, offsets = _segment(5)
    buf = bytearray(data)
    buf[offsets[2] + 20] ^= 0xFF  # flip a byte inside frame 2's payload
    scan = journal.scan_bytes(bytes(buf))
    assert len(scan.frames) == 4
    assert [f[COLUMNS.index("req_start_ns")] for f in scan.frames] == [1000, 1001, 1003, 1004]
    assert len(scan.damage) == 1
    d = scan.damage[0]
    assert d.kind == "corrupt" and d.offset == offsets[2]
    assert d.skipped_bytes == offsets[3] - offsets[2]
    assert "CRC mismatch" in d.describe("seg")


def test_garbage_between_frames_is_skipped_and_reported() -> None:
    data, offsets = _segment(3)
    garbage = b"\x00\xff" * 37
    spliced = data[: offsets[1]] + garbage + data[offsets[1] :]
    scan = journal.scan_bytes(spliced)
    assert len(scan.frames) == 3
    assert len(scan.damage) == 1 and scan.damage[0].skipped_bytes == len(garbage)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_damage_never_raises_and_never_invents_frames(data: st.DataObject) -> None:
    seg, offsets = _segment(4)
    buf = bytearray(seg)
    start = offsets[0]
    n = data.draw(st.integers(1, 8))
    for _ in range(n):
        pos = data.draw(st.integers(start, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    scan = journal.scan_bytes(bytes(buf))
    good = {msgpack.packb(r) for r in _rows(4)}
    for frame in scan.frames:
        assert msgpack.packb(frame) in good  # CRC-checked: only real frames come back
    # Every frame we lost is accounted for by reported damage.
    if len(scan.frames) < 4:
        assert scan.damage
