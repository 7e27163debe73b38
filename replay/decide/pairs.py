"""The data `diff` compares, read in bounded memory: the results a batch at a time, and of the
capture only what each compared exchange needs, packed into arrays.

Three passes over the results' small key columns and one over the capture:
1. the results' keys: the targets in the order given, and which capture exchanges are needed
   (as one int64 key each: writer code, sequence number);
2. the capture, a batch at a time: for each needed exchange, its recorded body hash (content
   coding undone), answer hash, API surface and, for streams, output-event count and median
   gap, packed into numpy arrays sorted by key (about 60 bytes an exchange);
3. with several targets, the first target's replayed sides, packed the same way, keyed by the
   planned shot (stream, source, loop, copy);
then the results once more, a batch at a time, each row paired with what it is compared to.
At 1M results the arrays are tens of MB; nothing holds a row per request as Python objects.
"""

from __future__ import annotations

import hashlib
import struct
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from captures import codec, protocols
from captures.reader import Capture
from replay.measure.resultsdir import Results

KEY_COLUMNS = [
    "target",
    "seq",
    "stream",
    "loop",
    "copy",
    "source_writer",
    "source_seq",
    "recorded_status",
    "recorded_chunks",
]
CAPTURE_COLUMNS = [
    "writer_id",
    "seq",
    "api",
    "resp_body",
    "resp_body_truncated",
    "resp_content_encoding",
    "chunk_offsets_us",
    "chunk_sizes",
    "answer_hash",
]
SEQ_BITS = 40  # a writer's sequence numbers stay below 2**40


def decoded_hash(body: bytes | None, encoding: str | None) -> str | None:
    """The hash the replay's scanner computes, of a recorded body (content coding undone)."""
    if body is None:
        return None
    plain = codec.decode(body, encoding)
    return None if plain is None else hashlib.blake2b(plain, digest_size=16).hexdigest()


class Codes:
    """Small integer codes for strings (writer ids, streams, API names)."""

    def __init__(self) -> None:
        self.of: dict[str, int] = {}
        self.names: list[str] = []

    def code(self, s: str | None) -> int:
        k = s or ""
        c = self.of.get(k)
        if c is None:
            c = self.of[k] = len(self.names)
            self.names.append(k)
        return c


class Plan:
    """What pass 1 found: targets in order, the capture keys needed, the writer codes."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.writers = Codes()
        self.needed = np.empty(0, dtype=np.int64)
        self.recorded_rows = 0

    def key(self, writer: str | None, seq: int | None) -> int:
        return (self.writers.code(writer) << SEQ_BITS) | int(seq or 0)


def scan_keys(results: Results) -> Plan:
    plan = Plan()
    first_seq: dict[str, int] = {}
    needed = array("q")
    for batch in results.batches(KEY_COLUMNS):
        t, seq = batch.column("target").to_pylist(), batch.column("seq").to_pylist()
        sw, ss = batch.column("source_writer").to_pylist(), batch.column("source_seq").to_pylist()
        rs, rc = batch.column("recorded_status").to_pylist(), batch.column("recorded_chunks")
        rcl = rc.to_pylist()
        for i in range(batch.num_rows):
            tt = t[i] or ""
            first_seq[tt] = min(first_seq.get(tt, seq[i]), seq[i])
            if (rs[i] is not None or rcl[i]) and sw[i]:
                plan.recorded_rows += 1
                needed.append(plan.key(sw[i], ss[i]))
            elif rs[i] is not None or rcl[i]:
                plan.recorded_rows += 1
    plan.targets = sorted(first_seq, key=first_seq.__getitem__)
    plan.needed = np.unique(np.frombuffer(needed, dtype=np.int64)) if needed else plan.needed
    return plan


def _gap(times: list[int] | np.ndarray) -> float:
    return (
        float(np.median(np.diff(np.asarray(times, dtype=np.int64)))) if len(times) >= 3 else np.nan
    )


def recorded_events(row: dict[str, Any]) -> list[int] | None:
    """The recording's output-event times (us from the response start), read chunk by chunk."""
    body, sizes, offsets = row.get("resp_body"), row.get("chunk_sizes"), row.get("chunk_offsets_us")
    if not body or not sizes or not offsets or row.get("resp_body_truncated"):
        return None
    if codec.codings(row.get("resp_content_encoding")):
        return None
    scan = protocols.EventScanner(
        protocols.BY_NAME.get(row.get("api") or "", protocols.PLAIN), keep_answer=False
    )
    pos = 0
    for size, t in zip(sizes, offsets, strict=False):
        scan.feed(body[pos : pos + size], t)
        pos += size
    scan.finish(offsets[-1])
    return scan.output_times


def _digest(hexstr: str | None, width: int) -> bytes:
    """A hex digest as raw bytes, padded to `width` (b"" pads: no digest)."""
    if not hexstr:
        return bytes(width)
    try:
        raw = bytes.fromhex(hexstr)
    except ValueError:
        raw = hashlib.blake2b(hexstr.encode(), digest_size=width).digest()
    return raw[:width].ljust(width, b"\0")


class Recorded:
    """The recorded side's capture facts for the needed exchanges, packed and sorted by key:
    per exchange 8 (key) + 16 (body hash) + 8 (answer hash) + 2 + 4 + 8 bytes."""

    def __init__(self, size: int = 0) -> None:
        self.n = 0
        self.keys = np.zeros(size, dtype=np.int64)
        self.body = np.zeros((size, 16), dtype=np.uint8)
        self.has_body = np.zeros(size, dtype=bool)
        self.answer = np.zeros((size, 8), dtype=np.uint8)
        self.has_answer = np.zeros(size, dtype=bool)
        self.api = np.zeros(size, dtype=np.int16)
        self.events = np.zeros(size, dtype=np.int32)
        self.gap = np.zeros(size, dtype=np.float64)
        self.apis = Codes()

    def put(self, key: int, row: dict[str, Any]) -> None:
        i = self.n
        self.n += 1
        self.keys[i] = key
        body = None
        if not row.get("resp_body_truncated"):
            body = decoded_hash(row.get("resp_body"), row.get("resp_content_encoding"))
        if body:
            self.body[i] = np.frombuffer(_digest(body, 16), dtype=np.uint8)
            self.has_body[i] = True
        if row.get("answer_hash"):
            self.answer[i] = np.frombuffer(_digest(row["answer_hash"], 8), dtype=np.uint8)
            self.has_answer[i] = True
        self.api[i] = self.apis.code(row.get("api"))
        times = recorded_events(row) if len(row.get("chunk_sizes") or ()) > 1 else None
        self.events[i] = len(times) if times else -1
        self.gap[i] = _gap(times) if times else np.nan

    def seal(self) -> None:
        """Trim to what was put, sorted by key (in place, one array at a time)."""
        order = np.argsort(self.keys[: self.n], kind="stable")
        for name in ("keys", "body", "has_body", "answer", "has_answer", "api", "events", "gap"):
            setattr(self, name, getattr(self, name)[: self.n][order])

    def get(self, key: int) -> dict[str, Any] | None:
        i = int(np.searchsorted(self.keys, key))
        if i >= len(self.keys) or self.keys[i] != key:
            return None
        ev = int(self.events[i])
        return {
            "api": self.apis.names[int(self.api[i])],
            "body": self.body[i].tobytes().hex() if self.has_body[i] else None,
            "answer": self.answer[i].tobytes().hex() if self.has_answer[i] else None,
            "events": ev if ev >= 0 else None,
            "gap_us": None if np.isnan(self.gap[i]) else float(self.gap[i]),
        }


def read_recorded(path: str, plan: Plan) -> Recorded:
    out = Recorded(len(plan.needed))
    for batch in Capture(path).batches(CAPTURE_COLUMNS, batch_size=2048):
        ws, ss = batch.column("writer_id").to_pylist(), batch.column("seq").to_pylist()
        codes = np.array(
            [
                (plan.writers.of[w] << SEQ_BITS) | int(s or 0) if w in plan.writers.of else -1
                for w, s in zip(ws, ss, strict=True)
            ],
            dtype=np.int64,
        )
        hit = np.flatnonzero(np.isin(codes, plan.needed))
        if not len(hit):
            continue
        for k, row in zip(codes[hit].tolist(), batch.take(hit).to_pylist(), strict=True):
            if out.n < len(out.keys):
                out.put(k, row)
    out.seal()
    return out


class Sides:
    """Sides (the dicts `Side` makes) packed into arrays, found by a key of bytes: the first
    target's replayed sides, by planned shot, for target-against-target comparisons."""

    def __init__(self) -> None:
        self.codes = Codes()
        self._keys: list[bytes] = []
        self._ints: array[int] = array("q")  # per side: status, api, finish, tokens, ttft, events
        self._gap = array("d")
        self._body: list[bytes] = []
        self._answer: list[bytes] = []
        self._streamed = array("b")
        self.keys = np.empty(0, dtype="S48")
        self.order = np.empty(0, dtype=np.int64)

    @staticmethod
    def key(codes: Codes, r: dict[str, Any]) -> bytes:
        packed = struct.pack(
            ">IIQII",
            codes.code(r["stream"]),
            codes.code(r["source_writer"]),
            int(r["source_seq"] or 0),
            int(r["loop"] or 0),
            int(r["copy"] or 0),
        )
        return packed.hex().encode()  # hex: numpy's bytes arrays would drop trailing NULs

    def add(self, key: bytes, side: dict[str, Any]) -> None:
        c = self.codes.code
        self._keys.append(key)
        for v in (
            c(side["status"]),
            c(side["api"]),
            c(side["finish_reason"]) if side["finish_reason"] else -1,
            -1 if side["tokens"] is None else int(side["tokens"]),
            -1 if side["ttft_us"] is None else int(side["ttft_us"]),
            -1 if side["events"] is None else int(side["events"]),
        ):
            self._ints.append(v)
        self._gap.append(np.nan if side["gap_us"] is None else float(side["gap_us"]))
        self._body.append((side["body"] or "").encode())
        self._answer.append((side["answer"] or "").encode())
        self._streamed.append(1 if side["streamed"] else 0)

    def seal(self) -> None:
        self.keys = np.array(self._keys, dtype="S48")
        self.order = np.argsort(self.keys, kind="stable")
        self.keys = self.keys[self.order]
        self._keys = []
        self.ints = np.frombuffer(self._ints, dtype=np.int64).reshape(-1, 6)
        self.gap = np.frombuffer(self._gap, dtype=np.float64)
        self.body = np.array(self._body, dtype="S32")
        self.answer = np.array(self._answer, dtype="S64")
        self.streamed = np.frombuffer(self._streamed, dtype=np.int8)
        self._body, self._answer = [], []

    def get(self, key: bytes) -> dict[str, Any] | None:
        i = int(np.searchsorted(self.keys, key))
        if i >= len(self.keys) or self.keys[i] != key:
            return None
        j = int(self.order[i])
        status, api, fin, tok, ttft, ev = (int(x) for x in self.ints[j])
        names = self.codes.names
        return {
            "status": names[status],
            "api": names[api],
            "finish_reason": names[fin] if fin >= 0 else None,
            "tokens": tok if tok >= 0 else None,
            "body": self.body[j].decode() or None,
            "answer": self.answer[j].decode() or None,
            "streamed": bool(self.streamed[j]),
            "ttft_us": ttft if ttft >= 0 else None,
            "events": ev if ev >= 0 else None,
            "gap_us": None if np.isnan(self.gap[j]) else float(self.gap[j]),
        }


def result_rows(results: Results, columns: list[str]) -> Iterator[dict[str, Any]]:
    """The results, row by row, a batch at a time."""
    for batch in results.batches(columns, batch_size=4096):
        yield from batch.to_pylist()


def exists(path: str | None) -> bool:
    return bool(path) and Path(str(path)).exists()
