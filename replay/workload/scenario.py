"""Scenarios: several streams (replays and synthetic stress) on one timeline, from a TOML file.

```toml
target = "http://127.0.0.1:8000"     # default for streams without their own (--target wins)
seed = 1

[[stream]]
name = "prod-replay"
kind = "replay"
capture = "captures/monday"          # relative paths are relative to this file
speed = 5
amplify = 2

[[stream]]
name = "stress"
kind = "synthetic"
arrival = { process = "poisson", rate = 40 }
request = { maker = "sample", capture = "captures/monday" }
start = "30s"
duration = "2m"
```

A mistake gets an error naming the file, the line and the key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captures.arrivals import arrival_from
from captures.errors import UserError
from captures.filters import RowFilter, parse_status_spec
from captures.units import parse_duration
from replay.measure.results import Expect
from replay.rewrite import Rewriter
from replay.settings import StreamPlan

from .makers import build_maker
from .replaying import make_rewriter, replay_stream
from .synthetic import plan_synthetic

COMMON_KEYS = {
    "name",
    "kind",
    "start",
    "duration",
    "target",
    "headers",
    "model_map",
    "expect_status",
    "keep_host",
    "seed",
}
REPLAY_KEYS = COMMON_KEYS | {
    "capture",
    "speed",
    "from",
    "to",
    "loop",
    "amplify",
    "amplify_mode",
    "salt_prompts",
    "filter",
}
SYNTHETIC_KEYS = COMMON_KEYS | {"arrival", "request", "count"}
TOP_KEYS = {"stream", "target", "seed", "headers"}


class ScenarioError(UserError):
    pass


@dataclass
class _Where:
    path: Path
    text: str

    def line(self, stream: int | None, key: str | None) -> int:
        lines = self.text.splitlines()
        heads = [i for i, ln in enumerate(lines) if re.match(r"\s*\[\[\s*stream\s*\]\]", ln)]
        if stream is None or stream >= len(heads):
            lo, hi = 0, heads[0] if heads else len(lines)
        else:
            lo, hi = heads[stream], heads[stream + 1] if stream + 1 < len(heads) else len(lines)
        if key:
            parts = key.split(".")
            for i in range(lo, hi):
                if re.match(rf"\s*\"?{re.escape(parts[0])}\"?\s*=", lines[i]):
                    for j in range(i, hi):  # a nested key on the same or a following line
                        if len(parts) == 1 or re.search(rf"\b{re.escape(parts[-1])}\s*=", lines[j]):
                            return j + 1
                    return i + 1
                if re.match(rf"\s*\[\s*stream\.{re.escape(parts[0])}\s*\]", lines[i]):
                    return i + 1
        return lo + 1

    def error(self, stream: int | None, key: str | None, msg: str) -> ScenarioError:
        where = f"{self.path}:{self.line(stream, key)}"
        name = f"stream[{stream}]" if stream is not None else "scenario"
        return ScenarioError(f"{where}: {name}" + (f".{key}" if key else "") + f": {msg}")


def _dur(w: _Where, i: int | None, key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise w.error(i, key, f"want a duration like 30s, got {value!r}")
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise w.error(i, key, str(exc)) from None


def _filter(w: _Where, i: int, value: Any, key: str = "filter") -> RowFilter:
    if not isinstance(value, dict):
        raise w.error(
            i,
            key,
            'want a table: { method = [...], path = [...], model = [...], status = "2xx" }',
        )
    unknown = set(value) - {"method", "path", "model", "status"}
    if unknown:
        raise w.error(i, key, f"unknown key(s) {', '.join(sorted(unknown))}")

    def strs(k: str) -> list[str] | None:
        v = value.get(k)
        if v is None:
            return None
        v = [v] if isinstance(v, str) else v
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise w.error(i, f"{key}.{k}", "want a string or a list of strings")
        return v

    status = None
    if "status" in value:
        try:
            status = parse_status_spec(str(value["status"]))
        except ValueError as exc:
            raise w.error(i, f"{key}.status", str(exc)) from None
    m, p, mo = strs("method"), strs("path"), strs("model")
    return RowFilter(
        methods=frozenset(x.upper() for x in m) if m else None,
        path_globs=tuple(p) if p else None,
        models=frozenset(mo) if mo else None,
        statuses=status,
    )


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def load(
    path: str | Path, *, target: str | None = None, env: Mapping[str, str] | None = None
) -> list[StreamPlan]:
    """Parse and check a scenario, and build its streams (captures opened, makers loaded)."""
    try:
        return _load(path, target=target, env=env)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        # a value of a type no check above expected: still one line naming the file
        raise ScenarioError(f"{path}: {type(exc).__name__}: {exc}"[:300]) from None


def _load(
    path: str | Path, *, target: str | None = None, env: Mapping[str, str] | None = None
) -> list[StreamPlan]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{p}: no such scenario file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read ({exc})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ScenarioError(f"{p}: not valid TOML: nested too deep") from None
    w = _Where(p, text)
    base = p.parent
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise w.error(None, sorted(unknown)[0], "unknown key (want stream, target, seed, headers)")
    streams_doc = doc.get("stream")
    if not isinstance(streams_doc, list) or not streams_doc:
        raise w.error(None, None, "no [[stream]] tables")
    default_target = target or doc.get("target")
    top_headers = doc.get("headers", [])
    if not _strings(top_headers):
        raise w.error(None, "headers", 'want a list of strings ("Name: value")')
    seed = doc.get("seed", 0)
    if not isinstance(seed, int):
        raise w.error(None, "seed", "want an integer")
    names: set[str] = set()
    out = []
    for i, st in enumerate(streams_doc):
        if not isinstance(st, dict):
            raise w.error(i, None, "want a table")
        kind = st.get("kind")
        if kind not in ("replay", "synthetic"):
            raise w.error(i, "kind", f'want "replay" or "synthetic", got {kind!r}')
        allowed = REPLAY_KEYS if kind == "replay" else SYNTHETIC_KEYS
        bad = set(st) - allowed
        if bad:
            k = sorted(bad)[0]
            raise w.error(
                i, k, f"unknown key for a {kind} stream (known: {', '.join(sorted(allowed))})"
            )
        name = st.get("name", f"{kind}-{i}")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise w.error(i, "name", "want letters, digits, '.', '_' or '-'")
        if name in names:
            raise w.error(i, "name", f"duplicate stream name {name!r}")
        names.add(name)
        stream_target = st.get("target", default_target)
        if not stream_target:
            raise w.error(
                i, "target", "no target: give --target, a top-level target, or the stream's own"
            )
        for list_key in ("headers", "model_map"):
            if not _strings(st.get(list_key, [])):
                raise w.error(i, list_key, "want a list of strings")
        headers = list(top_headers) + list(st.get("headers", []))
        try:
            rewriter = make_rewriter(
                str(stream_target),
                headers,
                list(st.get("model_map", [])),
                bool(st.get("keep_host", False)),
                dict(env) if env is not None else None,
            )
            expect = Expect.parse(st.get("expect_status", ""))
        except UserError as exc:
            raise w.error(i, "target" if "target" in str(exc) else "headers", str(exc)) from None
        start = _dur(w, i, "start", st["start"]) if "start" in st else 0.0
        sseed = st.get("seed", seed + i)
        if kind == "replay":
            if "capture" not in st:
                raise w.error(i, "capture", "a replay stream needs capture = PATH")
            cap = (
                str((base / st["capture"]).resolve())
                if not Path(st["capture"]).is_absolute()
                else st["capture"]
            )
            try:
                out.append(
                    replay_stream(
                        name,
                        cap,
                        rewriter,
                        speed=float(st.get("speed", 1.0)),
                        from_s=_dur(w, i, "from", st["from"]) if "from" in st else 0.0,
                        to_s=_dur(w, i, "to", st["to"]) if "to" in st else None,
                        duration_s=_dur(w, i, "duration", st["duration"])
                        if "duration" in st
                        else None,
                        loops=int(st.get("loop", 1)),
                        filt=_filter(w, i, st["filter"]) if "filter" in st else None,
                        amplify=float(st.get("amplify", 1.0)),
                        amplify_mode=str(st.get("amplify_mode", "spread")),
                        salt_prompts=bool(st.get("salt_prompts", False)),
                        seed=sseed,
                        start_s=start,
                        expect=expect,
                    )
                )
            except ScenarioError:
                raise
            except UserError as exc:
                key = next(
                    (
                        k
                        for k in ("speed", "amplify", "loop", "capture", "from", "to", "duration")
                        if k in str(exc)
                    ),
                    None,
                )
                raise w.error(i, key, str(exc)) from None
            except (TypeError, ValueError) as exc:
                raise w.error(i, None, str(exc)) from None
        else:
            out.append(_synthetic(w, i, st, name, rewriter, expect, start, sseed, base))
    return out


def _synthetic(
    w: _Where,
    i: int,
    st: Mapping[str, Any],
    name: str,
    rewriter: Rewriter,
    expect: Expect,
    start: float,
    seed: int,
    base: Path,
) -> StreamPlan:
    arrival_doc = st.get("arrival")
    if not isinstance(arrival_doc, dict):
        raise w.error(i, "arrival", 'want a table like { process = "poisson", rate = 40 }')
    try:
        arrival = arrival_from(arrival_doc, where="arrival")
    except UserError as exc:
        key = next(
            (
                f"arrival.{k}"
                for k in arrival_doc
                if k in str(exc).split(":")[0] or f".{k}" in str(exc)
            ),
            "arrival",
        )
        raise w.error(i, key, str(exc).split(": ", 1)[-1]) from None
    req = st.get("request", {"maker": "template"})
    if not isinstance(req, dict):
        raise w.error(i, "request", 'want a table like { maker = "sample", capture = "..." }')
    req = dict(req)
    for k in ("capture", "file", "template"):
        if (
            isinstance(req.get(k), str)
            and not Path(req[k]).is_absolute()
            and not req[k].lstrip().startswith("{")
        ):
            req[k] = str((base / req[k]).resolve())
    for k in ("prompt_tokens", "output_tokens"):
        v = req.get(k)
        if isinstance(v, str) and v.startswith("empirical:") and not Path(v[10:]).is_absolute():
            req[k] = "empirical:" + str((base / v[10:]).resolve())
    filt = None
    if "filter" in req:
        if req.get("maker") != "sample":
            raise w.error(i, "request.filter", "only the sample maker takes a filter")
        filt = _filter(w, i, req.pop("filter"), "request.filter")
    try:
        maker = build_maker(req, "request", seed, filt)
    except UserError as exc:
        k = next((f"request.{k}" for k in req if f"request.{k}" in str(exc)), "request")
        raise w.error(i, k, str(exc)) from None
    duration = (
        _dur(w, i, "duration", st["duration"]) if "duration" in st else arrival.natural_duration_s()
    )
    count = st.get("count")
    if duration is None and count is None:
        raise w.error(i, "duration", "a synthetic stream needs duration (or count)")
    if count is not None and (not isinstance(count, int) or count < 1):
        raise w.error(i, "count", "want a positive integer")
    shots = plan_synthetic(
        arrival,
        duration if duration is not None else 10**9,
        maker,
        seed=seed,
        stream=name,
        start_s=start,
        count=count,
    )
    return StreamPlan(
        name,
        shots,
        rewriter,
        expect,
        None,
        describe={
            "kind": "synthetic",
            "arrival": arrival_doc,
            "request": {k: v for k, v in req.items() if k != "template"},
            "start_s": start,
            "duration_s": duration,
            "count": count,
            "seed": seed,
        },
        planned=count
        if count is not None and duration is None
        else min(count or 10**18, round(arrival.mean_rate() * (duration or 0))),
        planned_approx=count is None or duration is not None,
        planned_end_s=start + duration if duration is not None else None,
    )
