"""`loadtape diff RESULTS`: what the target answered, against the recording and, with several
targets, against each other. No traffic: the results directory and (for recorded bodies, answers
and event timing) the capture it was replayed from.

Pairs: a replayed request pairs with its recorded exchange (source_writer, source_seq); with
several targets, the same planned shot (stream, source, loop, copy) on each target pairs with the
first target's. Each pair gets a verdict:

- identical: the same status and byte-identical bodies (content encoding undone);
- equivalent: the same status, finish reason, completion tokens and answer, the answer compared
  in the canonical form of captures/protocols (text, tool calls by name and JSON-equal
  arguments): ids, `created`, `system_fingerprint` and every other volatile field leave it;
- different: and how (status, finish_reason, tokens, answer, body), counted.

Beside the verdicts: status and finish-reason transitions, completion-token deltas, the API
surfaces compared, and stream timing on output events on both sides (the recording's are found
by reading its body chunk by chunk with the surface's event scanner): TTFT ratio, output-event
count delta, median inter-event gap ratio. Ratios are right side / left side.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from captures import protocols
from captures.errors import CaptureError, UserError
from captures.reader import Capture
from replay.measure.resultsdir import Results

COLUMNS = [
    "seq",
    "stream",
    "target",
    "copy",
    "loop",
    "source_writer",
    "source_seq",
    "api",
    "endpoint",
    "status",
    "error_kind",
    "finish_reason",
    "completion_tokens",
    "events",
    "text_events",
    "reasoning_events",
    "tool_events",
    "sent_ns",
    "first_token_ns",
    "token_offsets_us",
    "body_hash",
    "answer_hash",
    "recorded_status",
    "recorded_ttfb_us",
    "recorded_first_chunk_us",
    "recorded_chunks",
    "recorded_completion_tokens",
    "recorded_finish_reason",
]
CATEGORIES = ("status", "finish_reason", "tokens", "answer", "body")
CAPTURE_COLUMNS = [
    "writer_id",
    "seq",
    "api",
    "resp_headers",
    "resp_body",
    "resp_body_truncated",
    "resp_content_encoding",
    "chunk_offsets_us",
    "chunk_sizes",
    "answer_hash",
]


def decoded_hash(body: bytes | None, encoding: str | None) -> str | None:
    """The hash `StreamScanner` computes, of a recorded body (content-encoding undone)."""
    if body is None:
        return None
    enc = (encoding or "").strip().lower()
    try:
        if enc == "gzip":
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            body = zlib.decompress(body)
        elif enc not in ("", "identity"):
            return None
    except zlib.error:
        return None
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def _status(row: dict[str, Any], prefix: str = "") -> str:
    st = row.get(f"{prefix}status")
    if prefix == "" and row.get("error_kind"):
        return "error"
    return "error" if st is None else str(st)


def _gaps(offsets: Sequence[int] | None) -> float | None:
    if not offsets or len(offsets) < 3:
        return None
    return float(median(np.diff(np.asarray(offsets, dtype=np.int64)).tolist()))


def _ttft_us(row: dict[str, Any]) -> int | None:
    if row.get("first_token_ns") is None:
        return None
    return int((row["first_token_ns"] - row["sent_ns"]) // 1000)


def _pcts(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=float)
    return {
        "p10": round(float(np.percentile(a, 10)), 4),
        "p50": round(float(np.percentile(a, 50)), 4),
        "p90": round(float(np.percentile(a, 90)), 4),
    }


def _recorded_events(cap: dict[str, Any]) -> list[int] | None:
    """The recording's output-event times (us from the response start), read chunk by chunk."""
    body, sizes, offsets = cap.get("resp_body"), cap.get("chunk_sizes"), cap.get("chunk_offsets_us")
    enc = (cap.get("resp_content_encoding") or "").lower()
    if (
        not body
        or not sizes
        or not offsets
        or cap.get("resp_body_truncated")
        or enc
        not in (
            "",
            "identity",
        )
    ):
        return None
    scan = protocols.EventScanner(
        protocols.BY_NAME.get(cap.get("api") or "", protocols.PLAIN), keep_answer=False
    )
    pos = 0
    for size, t in zip(sizes, offsets, strict=False):
        scan.feed(body[pos : pos + size], t)
        pos += size
    scan.finish(offsets[-1])
    return scan.output_times


class Side:
    """One side of a comparison, row by row: status, finish, tokens, answer, body, stream."""

    @staticmethod
    def replayed(row: dict[str, Any]) -> dict[str, Any]:
        offsets = row.get("token_offsets_us")
        outputs = sum(row.get(k) or 0 for k in ("text_events", "reasoning_events", "tool_events"))
        return {
            "status": _status(row),
            "api": row.get("api") or "",
            "finish_reason": row.get("finish_reason"),
            "tokens": row.get("completion_tokens"),
            "body": row.get("body_hash"),
            "answer": row.get("answer_hash"),
            "streamed": bool(offsets),
            "ttft_us": _ttft_us(row),
            "events": outputs or (len(offsets) if offsets else None),
            "gap_us": _gaps(offsets),
        }

    @staticmethod
    def recorded(row: dict[str, Any], cap: dict[str, Any] | None) -> dict[str, Any]:
        ttfb, first = row.get("recorded_ttfb_us"), row.get("recorded_first_chunk_us")
        streamed = bool(row.get("recorded_chunks") and row["recorded_chunks"] > 1)
        body = answer = gap = events = None
        if cap is not None:
            if not cap.get("resp_body_truncated"):
                body = decoded_hash(cap.get("resp_body"), cap.get("resp_content_encoding"))
            answer = cap.get("answer_hash")
            times = _recorded_events(cap) if streamed else None
            if times:
                events, gap = len(times), _gaps(times)
        return {
            "status": _status(row, "recorded_"),
            "api": (cap or {}).get("api") or row.get("api") or "",
            "finish_reason": row.get("recorded_finish_reason"),
            "tokens": row.get("recorded_completion_tokens"),
            "body": body,
            "answer": answer,
            "streamed": streamed,
            "ttft_us": ttfb + first
            if ttfb is not None and first is not None and streamed
            else None,
            "events": events,
            "gap_us": gap,
        }


def verdict(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, list[str]]:
    """identical / equivalent / different, and what differs (categories, described)."""
    what: list[str] = []
    if a["status"] != b["status"]:
        what.append(f"status {a['status']}->{b['status']}")
    if a["finish_reason"] and b["finish_reason"] and a["finish_reason"] != b["finish_reason"]:
        what.append(f"finish_reason {a['finish_reason']}->{b['finish_reason']}")
    if a["tokens"] is not None and b["tokens"] is not None and a["tokens"] != b["tokens"]:
        what.append(f"tokens {a['tokens']}->{b['tokens']}")
    if a["answer"] and b["answer"]:
        if a["answer"] != b["answer"]:
            what.append("answer differs")
    elif a["body"] and b["body"] and a["body"] != b["body"] and not a["streamed"]:
        what.append("body differs")  # no answer to compare (plain HTTP): the body must match
    if what:
        return "different", what
    if a["body"] and a["body"] == b["body"]:
        return "identical", []
    return "equivalent", []


def compare_sides(
    name: str, pairs: Iterable[tuple[dict[str, Any], dict[str, Any], int]], examples: int
) -> dict[str, Any]:
    n = 0
    verdicts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    apis: Counter[str] = Counter()
    status: Counter[str] = Counter()
    finish: Counter[str] = Counter()
    fin_compared = 0
    deltas: list[int] = []
    body: Counter[str] = Counter()
    ttft_ratio: list[float] = []
    event_delta: list[int] = []
    gap_ratio: list[float] = []
    shown: list[dict[str, Any]] = []
    answers = 0
    for a, b, seq in pairs:
        n += 1
        answers += bool(a["answer"] and b["answer"])
        apis[b["api"] or a["api"] or "http"] += 1
        v, what = verdict(a, b)
        verdicts[v] += 1
        for w in what:
            reasons[w.split(" ", 1)[0]] += 1
        if a["status"] == b["status"]:
            status["same"] += 1
        else:
            status[f"{a['status']}->{b['status']}"] += 1
        if a["finish_reason"] and b["finish_reason"]:
            fin_compared += 1
            if a["finish_reason"] != b["finish_reason"]:
                finish[f"{a['finish_reason']}->{b['finish_reason']}"] += 1
        if a["tokens"] is not None and b["tokens"] is not None:
            deltas.append(int(b["tokens"]) - int(a["tokens"]))
        if not a["streamed"] and not b["streamed"] and a["status"] == b["status"]:
            if a["body"] and b["body"]:
                body["equal" if a["body"] == b["body"] else "different"] += 1
            else:
                body["not comparable"] += 1
        if a["ttft_us"] and b["ttft_us"]:
            ttft_ratio.append(b["ttft_us"] / a["ttft_us"])
        if a["streamed"] and b["streamed"] and a["events"] and b["events"]:
            event_delta.append(int(b["events"]) - int(a["events"]))
        if a["gap_us"] and b["gap_us"]:
            gap_ratio.append(b["gap_us"] / a["gap_us"])
        if what and len(shown) < examples:
            shown.append({"seq": seq, "differences": what})
    d = np.asarray(deltas, dtype=float)
    return {
        "name": name,
        "pairs": n,
        "verdicts": {k: verdicts[k] for k in ("identical", "equivalent", "different")},
        "differences": dict(reasons.most_common()),
        "apis": dict(apis.most_common()),
        "status": {
            "same": status.pop("same", 0),
            "different": sum(status.values()),
            "transitions": dict(status.most_common()),
        },
        "finish_reason": {
            "compared": fin_compared,
            "different": sum(finish.values()),
            "transitions": dict(finish.most_common()),
        },
        "tokens": {
            "compared": len(deltas),
            "equal": int((d == 0).sum()),
            "mean_delta": round(float(d.mean()), 3) if len(d) else None,
            "abs_delta": _pcts(np.abs(d).tolist()),
        },
        "answer": {"compared": answers, "equal": answers - reasons.get("answer", 0)},
        "body": {
            "equal": body["equal"],
            "different": body["different"],
            "not_comparable": body["not comparable"],
        },
        "stream": {
            "compared": len(ttft_ratio),
            "ttft_ratio": _pcts(ttft_ratio),
            "event_delta": _pcts([float(x) for x in event_delta]),
            "gap_ratio": _pcts(gap_ratio),
        },
        "examples": shown,
    }


def _capture_rows(path: str, keys: set[tuple[str, int]]) -> dict[tuple[str, int], dict[str, Any]]:
    cols = CAPTURE_COLUMNS
    out: dict[tuple[str, int], dict[str, Any]] = {}
    writers = {w for w, _ in keys}
    for batch in Capture(path).batches(cols):
        ws = batch.column("writer_id").to_pylist()
        ss = batch.column("seq").to_pylist()
        want = [
            i
            for i, (w, s) in enumerate(zip(ws, ss, strict=True))
            if w in writers and (w, s) in keys
        ]
        if want:
            for i in want:
                out[(ws[i], ss[i])] = {c: batch.column(c)[i].as_py() for c in cols}
    return out


def diff(results: Results, capture: str | None = None, examples: int = 5) -> dict[str, Any]:
    rows = results.table(COLUMNS).to_pylist()  # older results: body_hash reads as null
    first_seq: dict[str, int] = {}
    for r in rows:  # targets in the order given (the first takes each shot first)
        t = r["target"] or ""
        first_seq[t] = min(first_seq.get(t, r["seq"]), r["seq"])
    targets = sorted(first_seq, key=first_seq.__getitem__)
    cap_path = capture or (results.run.get("capture") or {}).get("path")
    recorded = [r for r in rows if r.get("recorded_status") is not None or r.get("recorded_chunks")]
    cap_rows: dict[tuple[str, int], dict[str, Any]] = {}
    note = None
    if recorded:
        keys = {(r["source_writer"], r["source_seq"]) for r in recorded if r["source_writer"]}
        if cap_path and Path(cap_path).exists():
            try:
                cap_rows = _capture_rows(cap_path, keys)
            except CaptureError as exc:
                note = f"capture not read ({exc}): no recorded bodies or chunk gaps"
        else:
            note = "capture not found (give --capture): no recorded bodies or chunk gaps"
    comparisons = []
    for t in targets:
        mine = [r for r in recorded if (r["target"] or "") == t]
        if not mine:
            continue
        pairs = (
            (
                Side.recorded(r, cap_rows.get((r["source_writer"], r["source_seq"]))),
                Side.replayed(r),
                r["seq"],
            )
            for r in mine
        )
        comparisons.append(compare_sides(f"recording -> {t or 'target'}", pairs, examples))
    if len(targets) > 1:
        ref = targets[0]

        def key(r: dict[str, Any]) -> tuple[Any, ...]:
            return (r["stream"], r["source_writer"], r["source_seq"], r["loop"], r["copy"])

        by_key = {key(r): r for r in rows if (r["target"] or "") == ref and r["source_writer"]}
        for t in targets[1:]:
            pairs_t = [
                (Side.replayed(by_key[key(r)]), Side.replayed(r), r["seq"])
                for r in rows
                if (r["target"] or "") == t and r["source_writer"] and key(r) in by_key
            ]
            comparisons.append(compare_sides(f"{ref} -> {t}", pairs_t, examples))
    if not comparisons:
        raise UserError(
            f"{results.path}: nothing to compare (no replayed requests from a capture, one target)"
        )
    return {
        "format": "loadtape-diff",
        "version": 1,
        "results": str(results.path),
        "capture": cap_path,
        "note": note,
        "comparisons": comparisons,
    }


def mismatches(doc: dict[str, Any], categories: Sequence[str]) -> list[str]:
    """The comparisons with differences in the given categories (for --fail-on)."""
    out = []
    for c in doc["comparisons"]:
        for cat in categories:
            n = c["differences"].get(cat, 0)
            if n:
                out.append(f"{c['name']}: {n} {cat} difference{'s' if n != 1 else ''}")
    return out


def parse_fail_on(text: str | None) -> list[str]:
    if not text:
        return []
    cats = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in cats if c not in CATEGORIES]
    if bad:
        raise UserError(f"--fail-on {text!r}: unknown {bad[0]!r} (want {', '.join(CATEGORIES)})")
    return cats
