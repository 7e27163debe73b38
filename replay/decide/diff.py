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

from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from statistics import median
from typing import Any

import numpy as np

from captures.errors import CaptureError, UserError
from replay.measure.resultsdir import Results

from . import pairs

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


def _pcts(values: Any) -> dict[str, float] | None:
    a = np.asarray(values, dtype=float)
    if not len(a):
        return None
    return {
        "p10": round(float(np.percentile(a, 10)), 4),
        "p50": round(float(np.percentile(a, 50)), 4),
        "p90": round(float(np.percentile(a, 90)), 4),
    }


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
        """The recorded side: from the results row and the capture's facts about the exchange
        (`Recorded.get`: body and answer hashes, API, output events and their median gap)."""
        ttfb, first = row.get("recorded_ttfb_us"), row.get("recorded_first_chunk_us")
        streamed = bool(row.get("recorded_chunks") and row["recorded_chunks"] > 1)
        body = answer = gap = events = None
        if cap is not None:
            body, answer = cap["body"], cap["answer"]
            if streamed and cap["events"]:
                events, gap = cap["events"], cap["gap_us"]
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


class Tally:
    """One comparison's counts, accumulated pair by pair (arrays, not lists of objects)."""

    def __init__(self, name: str, examples: int) -> None:
        self.name, self.examples = name, examples
        self.n = self.answers = self.fin_compared = 0
        self.verdicts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.apis: Counter[str] = Counter()
        self.status: Counter[str] = Counter()
        self.finish: Counter[str] = Counter()
        self.body: Counter[str] = Counter()
        self.deltas = array("q")
        self.ttft_ratio = array("d")
        self.event_delta = array("q")
        self.gap_ratio = array("d")
        self.shown: list[dict[str, Any]] = []

    def add(self, a: dict[str, Any], b: dict[str, Any], seq: int) -> None:
        self.n += 1
        self.answers += bool(a["answer"] and b["answer"])
        self.apis[b["api"] or a["api"] or "http"] += 1
        v, what = verdict(a, b)
        self.verdicts[v] += 1
        for w in what:
            self.reasons[w.split(" ", 1)[0]] += 1
        if a["status"] == b["status"]:
            self.status["same"] += 1
        else:
            self.status[f"{a['status']}->{b['status']}"] += 1
        if a["finish_reason"] and b["finish_reason"]:
            self.fin_compared += 1
            if a["finish_reason"] != b["finish_reason"]:
                self.finish[f"{a['finish_reason']}->{b['finish_reason']}"] += 1
        if a["tokens"] is not None and b["tokens"] is not None:
            self.deltas.append(int(b["tokens"]) - int(a["tokens"]))
        if not a["streamed"] and not b["streamed"] and a["status"] == b["status"]:
            if a["body"] and b["body"]:
                self.body["equal" if a["body"] == b["body"] else "different"] += 1
            else:
                self.body["not comparable"] += 1
        if a["ttft_us"] and b["ttft_us"]:
            self.ttft_ratio.append(b["ttft_us"] / a["ttft_us"])
        if a["streamed"] and b["streamed"] and a["events"] and b["events"]:
            self.event_delta.append(int(b["events"]) - int(a["events"]))
        if a["gap_us"] and b["gap_us"]:
            self.gap_ratio.append(b["gap_us"] / a["gap_us"])
        if what and len(self.shown) < self.examples:
            self.shown.append({"seq": seq, "differences": what})

    def result(self) -> dict[str, Any]:
        d = np.frombuffer(self.deltas, dtype=np.int64).astype(float)
        status = Counter(self.status)
        return {
            "name": self.name,
            "pairs": self.n,
            "verdicts": {k: self.verdicts[k] for k in ("identical", "equivalent", "different")},
            "differences": dict(self.reasons.most_common()),
            "apis": dict(self.apis.most_common()),
            "status": {
                "same": status.pop("same", 0),
                "different": sum(status.values()),
                "transitions": dict(status.most_common()),
            },
            "finish_reason": {
                "compared": self.fin_compared,
                "different": sum(self.finish.values()),
                "transitions": dict(self.finish.most_common()),
            },
            "tokens": {
                "compared": len(d),
                "equal": int((d == 0).sum()),
                "mean_delta": round(float(d.mean()), 3) if len(d) else None,
                "abs_delta": _pcts(np.abs(d)),
            },
            "answer": {
                "compared": self.answers,
                "equal": self.answers - self.reasons.get("answer", 0),
            },
            "body": {
                "equal": self.body["equal"],
                "different": self.body["different"],
                "not_comparable": self.body["not comparable"],
            },
            "stream": {
                "compared": len(self.ttft_ratio),
                "ttft_ratio": _pcts(np.frombuffer(self.ttft_ratio, dtype=np.float64)),
                "event_delta": _pcts(np.frombuffer(self.event_delta, dtype=np.int64)),
                "gap_ratio": _pcts(np.frombuffer(self.gap_ratio, dtype=np.float64)),
            },
            "examples": self.shown,
        }


def compare_sides(
    name: str, pairs: Iterable[tuple[dict[str, Any], dict[str, Any], int]], examples: int
) -> dict[str, Any]:
    tally = Tally(name, examples)
    for a, b, seq in pairs:
        tally.add(a, b, seq)
    return tally.result()


def diff(results: Results, capture: str | None = None, examples: int = 5) -> dict[str, Any]:
    """The comparisons of a results directory, in bounded memory (replay/decide/pairs.py)."""
    plan = pairs.scan_keys(results)
    targets = plan.targets
    cap_path = capture or (results.run.get("capture") or {}).get("path")
    recorded = pairs.Recorded()
    note = None
    if plan.recorded_rows:
        if pairs.exists(cap_path):
            try:
                recorded = pairs.read_recorded(str(cap_path), plan)
            except CaptureError as exc:
                note = f"capture not read ({exc}): no recorded bodies or chunk gaps"
        else:
            note = "capture not found (give --capture): no recorded bodies or chunk gaps"
    ref = targets[0] if targets else ""
    ref_sides = pairs.Sides()
    if len(targets) > 1:
        for r in pairs.result_rows(results, COLUMNS):
            if (r["target"] or "") == ref and r["source_writer"]:
                ref_sides.add(pairs.Sides.key(ref_sides.codes, r), Side.replayed(r))
        ref_sides.seal()
    to_recording = {t: Tally(f"recording -> {t or 'target'}", examples) for t in targets}
    to_ref = {t: Tally(f"{ref} -> {t}", examples) for t in targets[1:]}
    for r in pairs.result_rows(results, COLUMNS):
        t = r["target"] or ""
        mine = Side.replayed(r)
        if r.get("recorded_status") is not None or r.get("recorded_chunks"):
            cap = (
                recorded.get(plan.key(r["source_writer"], r["source_seq"]))
                if r["source_writer"]
                else None
            )
            to_recording[t].add(Side.recorded(r, cap), mine, r["seq"])
        if t in to_ref and r["source_writer"]:
            other = ref_sides.get(pairs.Sides.key(ref_sides.codes, r))
            if other is not None:
                to_ref[t].add(other, mine, r["seq"])
    comparisons = [x.result() for x in to_recording.values() if x.n]
    comparisons += [x.result() for x in to_ref.values()]
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
