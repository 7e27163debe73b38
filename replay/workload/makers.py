"""Request makers for synthetic streams: what to send, one request at a time, seeded.

- `sample`: bootstrap from a capture (optionally filtered), so synthetic load looks like real load;
- `template`: a JSON body with slots (`{{prompt}}`, `{{model}}`, `{{max_tokens}}`, `{{stream}}`),
  prompt and output lengths drawn from distributions, the model from a weighted mix;
- `prompts`: first user turns of a ShareGPT-format file.

Prompt text comes from `captures.filler` (filler words, token counting).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from captures.arrivals import Dist, parse_dist, parse_mix
from captures.errors import UserError
from captures.filler import filler
from captures.filters import RowFilter
from captures.importers import trace_lengths
from captures.importers.traces import sharegpt_pairs
from captures.reader import Capture
from captures.schema import Headers
from replay.planrows import (
    PLAN_COLUMNS,
    Recorded,
    Request,
    not_replayable,
    recorded_info,
    request_of,
)

JSON_HEADERS: Headers = [("Content-Type", "application/json")]


@dataclass
class Made:
    request: Request
    session: str | None = None
    recorded: Recorded | None = None
    source: tuple[str, int] | None = None


class Maker(Protocol):
    def make(self, rng: random.Random) -> Made: ...


class SampleMaker:
    """Bootstrap: a seeded draw (with replacement) from a capture's replayable requests."""

    def __init__(
        self, capture: str, filt: RowFilter | None = None, limit: int = 20_000, seed: int = 0
    ) -> None:
        cap = Capture(capture)
        rng = random.Random(seed)
        pool: list[dict[str, Any]] = []
        seen = 0
        for row in cap.rows(PLAN_COLUMNS, filt):
            if not_replayable(row) is not None:
                continue
            seen += 1
            if len(pool) < limit:
                pool.append(row)
            else:  # reservoir sampling keeps memory bounded on big captures
                j = rng.randrange(seen)
                if j < limit:
                    pool[j] = row
        if not pool:
            raise UserError(f"{capture}: no replayable requests to sample from")
        self._pool = [(request_of(r), recorded_info(r), (r["writer_id"], r["seq"])) for r in pool]

    def make(self, rng: random.Random) -> Made:
        req, rec, src = rng.choice(self._pool)
        return Made(req, None, rec, src)


DEFAULT_TEMPLATE: dict[str, Any] = {
    "model": "{{model}}",
    "messages": [{"role": "user", "content": "{{prompt}}"}],
    "max_tokens": "{{max_tokens}}",
    "stream": "{{stream}}",
}


class TemplateMaker:
    def __init__(
        self,
        *,
        template: Mapping[str, Any] | None = None,
        path: str = "/v1/chat/completions",
        prompt_tokens: Dist,
        output_tokens: Dist,
        models: Sequence[tuple[str, float]] = (("small", 1.0),),
        stream_share: float = 0.0,
    ) -> None:
        self.template = dict(template or DEFAULT_TEMPLATE)
        self.path = path
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.models = [m for m, _ in models]
        self.weights = [w for _, w in models]
        if not 0 <= stream_share <= 1:
            raise UserError(f"stream share must be within 0..1, got {stream_share}")
        self.stream_share = stream_share

    def _fill(self, node: Any, slots: Mapping[str, Any]) -> Any:
        if isinstance(node, str):
            if node.startswith("{{") and node.endswith("}}") and node[2:-2] in slots:
                return slots[node[2:-2]]
            return node
        if isinstance(node, list):
            return [self._fill(v, slots) for v in node]
        if isinstance(node, dict):
            return {k: self._fill(v, slots) for k, v in node.items()}
        return node

    def make(self, rng: random.Random) -> Made:
        model = rng.choices(self.models, self.weights)[0]
        max_tokens = self.output_tokens.draw(rng)
        stream = rng.random() < self.stream_share
        slots = {
            "prompt": filler(self.prompt_tokens.draw(rng), rng),
            "model": model,
            "max_tokens": max_tokens,
            "stream": stream,
        }
        body = self._fill(self.template, slots)
        if stream and isinstance(body, dict) and "stream_options" not in body:
            body["stream_options"] = {"include_usage": True}
        raw = json.dumps(body).encode()
        return Made(Request("POST", self.path, None, list(JSON_HEADERS), raw, None, model, stream))


def load_sharegpt_prompts(path: str | Path, limit: int = 100_000) -> list[str]:
    """First user turns of a ShareGPT JSON file (at most `limit`)."""
    return [prompt for prompt, _ in sharegpt_pairs(Path(path))[:limit]]


class PromptsMaker:
    def __init__(
        self,
        prompts: Sequence[str],
        *,
        output_tokens: Dist,
        models: Sequence[tuple[str, float]] = (("small", 1.0),),
        stream_share: float = 0.0,
        path: str = "/v1/chat/completions",
    ) -> None:
        self.prompts = list(prompts)
        self.output_tokens = output_tokens
        self.models = [m for m, _ in models]
        self.weights = [w for _, w in models]
        self.stream_share = stream_share
        self.path = path

    def make(self, rng: random.Random) -> Made:
        model = rng.choices(self.models, self.weights)[0]
        stream = rng.random() < self.stream_share
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": rng.choice(self.prompts)}],
            "max_tokens": self.output_tokens.draw(rng),
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        raw = json.dumps(body).encode()
        return Made(Request("POST", self.path, None, list(JSON_HEADERS), raw, None, model, stream))


def empirical_values(source: str, which: str) -> list[int]:
    """Token counts for `empirical:SOURCE`: a capture (its usage tokens) or a trace file
    (Azure CSV, Mooncake JSONL). which: 'prompt' or 'output'."""
    p = Path(source)
    if p.is_dir() or p.suffix == ".parquet":
        col = "prompt_tokens" if which == "prompt" else "completion_tokens"
        t = Capture(p).table([col])
        return [int(v) for v in t.column(col).drop_null().to_pylist() if v]
    return trace_lengths(p, which)


def dist_for(spec: str | int, what: str, which: str) -> Dist:
    if isinstance(spec, str) and spec.startswith("empirical:"):
        return parse_dist("empirical", what, empirical_values(spec.split(":", 1)[1], which))
    return parse_dist(spec, what)


def build_maker(
    params: Mapping[str, Any], where: str, seed: int, filt: RowFilter | None = None
) -> Maker:
    """A maker from a scenario's `request = {maker = ...}` table (or `--synthetic` options);
    `filt` narrows what the sample maker draws from."""
    kind = str(params.get("maker", "template"))
    models = parse_mix(str(params.get("models", "small:1")), f"{where}.models")
    try:
        stream_share = (
            float(params.get("stream", 0.0))
            if not isinstance(params.get("stream"), bool)
            else float(params["stream"])
        )
    except (TypeError, ValueError):
        raise UserError(f"{where}.stream: want a share 0..1 or true/false") from None
    if kind == "sample":
        if "capture" not in params:
            raise UserError(f"{where}: the sample maker needs capture = PATH")
        return SampleMaker(str(params["capture"]), filt, seed=seed)
    output = dist_for(
        params.get("output_tokens", "lognormal:128:0.6"), f"{where}.output_tokens", "output"
    )
    if kind == "template":
        template = params.get("template")
        if isinstance(template, str):
            try:
                template = json.loads(Path(template).read_text())
            except (OSError, ValueError, RecursionError) as exc:
                raise UserError(f"{where}.template: cannot read {template!r} ({exc})") from None
        if template is not None and not isinstance(template, dict):
            raise UserError(f"{where}.template: want a JSON object (or a file holding one)")
        prompt = dist_for(
            params.get("prompt_tokens", "lognormal:256:0.8"), f"{where}.prompt_tokens", "prompt"
        )
        return TemplateMaker(
            template=template,
            path=str(params.get("path", "/v1/chat/completions")),
            prompt_tokens=prompt,
            output_tokens=output,
            models=models,
            stream_share=stream_share,
        )
    if kind == "prompts":
        if "file" not in params:
            raise UserError(f"{where}: the prompts maker needs file = SHAREGPT.json")
        return PromptsMaker(
            load_sharegpt_prompts(str(params["file"])),
            output_tokens=output,
            models=models,
            stream_share=stream_share,
        )
    raise UserError(f"{where}.maker: unknown maker {kind!r} (want sample, template, prompts)")
