"""Trace importers: Azure LLM inference traces, Mooncake, BurstGPT, ShareGPT."""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from captures.arrivals import offsets as arrival_offsets
from captures.arrivals import parse_arrival, parse_dist
from captures.errors import UserError
from captures.filler import filler
from captures.schema import Record

from . import BASE_NS, ImportOptions, ImportSummary, block_text, trace_request

_TS = re.compile(
    r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?\s*(Z|[+-]\d{2}:?\d{2})?"
)


def parse_timestamp_ns(text: str) -> int:
    """'2023-11-16 18:17:03.9799600' (7 fractional digits, which strptime's %f rejects) or
    '2024-05-12 00:00:00.001163+00:00' -> ns since the epoch. No zone means UTC."""
    m = _TS.fullmatch(text.strip())
    if not m:
        raise ValueError(f"not a timestamp: {text!r}")
    date, clock, frac, zone = m.groups()
    base = dt.datetime.strptime(f"{date} {clock}", "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
    ns = int(base.timestamp()) * 1_000_000_000 + int((frac or "").ljust(9, "0"))
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        hh, mm = int(zone[1:3]), int(zone[-2:])
        ns -= sign * (hh * 3600 + mm * 60) * 1_000_000_000
    return ns


def _csv_rows(
    path: Path, want: Mapping[str, tuple[str, ...]], what: str
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {our name: value}) for a CSV whose header holds one of the names wanted."""
    try:
        fh = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - open errors get their own message
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise UserError(f"{path}: empty file") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not a {what} CSV ({exc})") from None
        norm = {h.strip().lower(): i for i, h in enumerate(header)}
        cols: dict[str, int] = {}
        for ours, names in want.items():
            idx = next((norm[n.lower()] for n in names if n.lower() in norm), None)
            if idx is None and not ours.endswith("?"):
                # each name as Python writes it: a quote in the header leaves newlines in them
                found = ", ".join(map(repr, header))[:200]
                raise UserError(f"{path}: not a {what} CSV (no {names[0]!r} column; found {found})")
            if idx is not None:
                cols[ours.rstrip("?")] = idx
        try:
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                try:
                    yield reader.line_num, {k: row[i] for k, i in cols.items()}
                except IndexError:
                    raise UserError(f"{path}:{reader.line_num}: too few columns") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise UserError(f"{path}:{reader.line_num}: unreadable CSV ({exc})") from None


MAX_TOKENS = 2_000_000  # the longest context windows offered today; beyond it, a trace is wrong
MAX_TIME_S = 10 * 365 * 86400  # a trace's offsets: ten years at most


def _int(path: Path, line: int, name: str, value: Any, limit: int = MAX_TOKENS) -> int:
    """A count from a trace: a finite number from 0 to `limit` (every importer alike)."""
    try:
        v = int(float(value))
    except (ValueError, TypeError, OverflowError):
        raise UserError(f"{path}:{line}: {name} is not a finite number: {value!r}") from None
    if v < 0:
        raise UserError(f"{path}:{line}: {name} is negative ({v})")
    if v > limit:
        raise UserError(f"{path}:{line}: {name} {v} is above the limit of {limit:,}")
    return v


def _prompt(tokens: int, seed: int) -> str:
    return filler(tokens, random.Random(seed))


AZURE = {"ts": ("TIMESTAMP",), "prompt": ("ContextTokens",), "output": ("GeneratedTokens",)}


def azure_rows(path: Path, opts: ImportOptions, summary: ImportSummary) -> Iterator[Record]:
    for n, (line, r) in enumerate(_csv_rows(path, AZURE, "Azure LLM inference trace")):
        try:
            t = parse_timestamp_ns(r["ts"])
        except ValueError:
            raise UserError(f"{path}:{line}: bad TIMESTAMP {r['ts']!r}") from None
        p = _int(path, line, "ContextTokens", r["prompt"])
        o = _int(path, line, "GeneratedTokens", r["output"])
        yield trace_request(
            t,
            _prompt(p, opts.seed * 1_000_003 + n),
            p,
            max(o, 1),
            model=opts.model or "azure-trace",
            stream=opts.stream,
        )


BURSTGPT = {
    "ts": ("Timestamp",),
    "model": ("Model",),
    "prompt": ("Request tokens",),
    "output": ("Response tokens",),
    "session?": ("Session ID",),
    "log?": ("Log Type",),
}


def burstgpt_rows(path: Path, opts: ImportOptions, summary: ImportSummary) -> Iterator[Record]:
    for n, (line, r) in enumerate(_csv_rows(path, BURSTGPT, "BurstGPT")):
        try:
            secs = float(r["ts"])
        except ValueError:
            raise UserError(f"{path}:{line}: bad Timestamp {r['ts']!r}") from None
        t = BASE_NS + _int(path, line, "Timestamp", secs * 1e9, MAX_TIME_S * 10**9)
        p = _int(path, line, "Request tokens", r["prompt"])
        o = _int(path, line, "Response tokens", r["output"])
        if o == 0:
            summary.note("response tokens 0 (failed in BurstGPT): kept, max_tokens=1")
        yield trace_request(
            t,
            _prompt(p, opts.seed * 1_000_003 + n),
            p,
            max(o, 1),
            model=opts.model or r["model"] or "burstgpt",
            stream=opts.stream,
            session=r.get("session") or None,
        )


def mooncake_rows(path: Path, opts: ImportOptions, summary: ImportSummary) -> Iterator[Record]:
    """One JSON object a line: timestamp (ms from trace start), input_length, output_length,
    hash_ids (512-token prefix blocks: requests with the same leading ids share that prefix)."""
    cache: dict[int, list[str]] = {}
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - open errors get their own message
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    with fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                raw = (obj["timestamp"], obj["input_length"], obj["output_length"])
                ids = [int(x) for x in obj.get("hash_ids", [])]
            except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
                raise UserError(
                    f"{path}:{line_no}: not a Mooncake trace line ({type(exc).__name__}: {exc})"
                ) from None
            ts = _int(path, line_no, "timestamp", raw[0], MAX_TIME_S * 1000)
            ilen = _int(path, line_no, "input_length", raw[1])
            olen = _int(path, line_no, "output_length", raw[2])
            words: list[str] = []
            for k, bid in enumerate(ids):
                if len(words) >= ilen:
                    break
                block = cache.get(bid)
                if block is None:
                    block = block_text(bid).split()
                    if len(cache) > 50_000:
                        cache.clear()
                    cache[bid] = block
                take = 512 if k < len(ids) - 1 else max(ilen - 512 * k, 0)
                words.extend(block[:take])
            if len(words) < ilen:  # more input than blocks: unshared filler for the rest
                words.extend(_prompt(ilen - len(words), opts.seed * 1_000_003 + line_no).split())
            yield trace_request(
                BASE_NS + ts * 1_000_000,
                " ".join(words[:ilen]),
                ilen,
                max(olen, 1),
                model=opts.model or "mooncake-trace",
                stream=opts.stream,
            )


def sharegpt_rows(path: Path, opts: ImportOptions, summary: ImportSummary) -> Iterator[Record]:
    """First user turns, at the times of an arrival process (--arrival, required)."""
    if not opts.arrival:
        raise UserError(
            "sharegpt import needs --arrival (e.g. poisson:rate=5): ShareGPT has no times"
        )
    arrival = parse_arrival(opts.arrival)
    data = sharegpt_pairs(path)
    out_dist = parse_dist(opts.output_tokens, "--output-tokens") if opts.output_tokens else None
    rng = random.Random(opts.seed)
    limit = opts.limit or len(data)
    duration = opts.duration_s or arrival.natural_duration_s() or 10**7
    for i, off in enumerate(arrival_offsets(arrival, duration, opts.seed)):
        if i >= min(limit, len(data)):
            return
        prompt, answer_words = data[i]
        out = out_dist.draw(rng) if out_dist else max(answer_words, 1)
        yield trace_request(
            BASE_NS + off,
            prompt,
            len(prompt.split()),
            out,
            model=opts.model or "sharegpt",
            stream=opts.stream,
        )


def sharegpt_pairs(path: Path) -> list[tuple[str, int]]:
    """(first user turn, words in the first answer) per conversation of a ShareGPT JSON file:
    [{"conversations": [{"from": "human"|"gpt", "value": "..."}]}]."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{path}: not a ShareGPT JSON file ({str(exc).splitlines()[0][:120]})"
        ) from None
    except RecursionError:
        raise UserError(f"{path}: not a ShareGPT JSON file (nested too deep)") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: not a ShareGPT file (want a JSON list of conversations)")
    out = []
    for item in data:
        conv = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(conv, list):
            continue
        prompt, answer = None, 0
        for turn in conv:
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                continue
            if prompt is None and turn.get("from") in ("human", "user") and turn["value"].strip():
                prompt = turn["value"]
            elif prompt is not None and turn.get("from") in ("gpt", "assistant", "chatgpt"):
                answer = len(turn["value"].split())
                break
        if prompt is not None:
            out.append((prompt, answer))
    if not out:
        raise UserError(f"{path}: no conversation with a first user turn")
    return out


def lengths(path: Path, which: str) -> list[int]:
    """Token counts from a trace file: which = 'prompt' or 'output'."""
    if path.suffix in (".jsonl", ".json") or path.read_bytes()[:1] == b"{":
        key = "input_length" if which == "prompt" else "output_length"
        out = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    value = json.loads(line)[key]
                except (ValueError, KeyError, TypeError, RecursionError):
                    raise UserError(f"{path}:{line_no}: no {key}") from None
                out.append(_int(path, line_no, key, value))
        return out
    head = path.read_text(encoding="utf-8-sig", errors="replace").split("\n", 1)[0].lower()
    spec = AZURE if "contexttokens" in head else BURSTGPT
    col = "prompt" if which == "prompt" else "output"
    return [_int(path, ln, col, r[col]) for ln, r in _csv_rows(path, spec, "trace")]
