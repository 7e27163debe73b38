"""The mock gateway's knobs: latency profiles per model, capacity, faults (what each does is
in gateway.py), its counters, and the parsing of the `mock-gateway` command's flags."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from captures.errors import UserError
from captures.units import parse_duration

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class ModelProfile:
    name: str
    ttft_base_ms: float
    ttft_per_prompt_token_ms: float
    itl_ms: float
    output_tokens_median: int = 64
    output_tokens_sigma: float = 0.6
    reasoning_tokens: int = 0  # reasoning output before the answer (a reasoning model)


PROFILES: dict[str, ModelProfile] = {
    p.name: p
    for p in (
        ModelProfile("instant", 0.0, 0.0, 0.0, 16),
        ModelProfile("fast-local", 15.0, 0.01, 4.0, 48),
        ModelProfile("slow-cloud", 250.0, 0.05, 20.0, 96),
        ModelProfile("reasoner", 40.0, 0.02, 5.0, 48, reasoning_tokens=16),
    )
}

DEFAULT_MODELS = {
    "small": "fast-local",
    "large": "slow-cloud",
    "llama-3.1-8b": "fast-local",
    "gpt-4o-mini": "slow-cloud",
    "reasoner": "reasoner",
    "claude-small": "fast-local",
    "embed-small": "fast-local",
}


@dataclass(frozen=True)
class Faults:
    stall_ms: float = 0.0  # stall every response for this long ...
    stall_every_s: float = 0.0  # ... every this many seconds (0: never)
    error_rate: float = 0.0  # share of requests answered with error_status
    error_status: int = 500
    reset_rate: float = 0.0  # share of streamed requests reset half-way
    malformed_rate: float = 0.0  # share of streamed requests with one malformed SSE event
    drip_rate: float = 0.0  # share of responses sent one byte at a time
    drip_delay_ms: float = 2.0
    error_event_rate: float = 0.0  # share of streams that end half-way with an error event


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 0
    default_profile: str = "fast-local"
    models: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    profiles: dict[str, ModelProfile] = field(default_factory=lambda: dict(PROFILES))
    slowdown: float = 1.0  # multiply every delay (a "slowed" gateway for regression tests)
    max_in_service: int = 0  # 0: unlimited
    max_queue: int = 0
    overload_status: int = 503
    retry_after_s: int = 1
    seed: int = 0
    # code LLM answers, streamed or not, as a compressing proxy in front of a gateway does:
    # gzip, deflate, br or zstd, where the request's Accept-Encoding names it ("": never)
    coding: str = ""
    extra_nulls: bool = False  # chat chunks carry every field, null where unused (as LiteLLM)
    # hold a stream's body open this long after its terminal event (an upstream slow to close
    # its chunked body: an SDK that stops reading at the terminal event closes first)
    eof_delay_ms: float = 0.0
    faults: Faults = Faults()

    def profile_for(self, model: str | None) -> ModelProfile:
        name = self.models.get(model or "", self.default_profile)
        return self.profiles.get(name) or self.profiles[self.default_profile]

    def validate(self) -> None:
        if self.host not in LOOPBACK:
            raise ValueError(f"the mock gateway binds loopback only, not {self.host!r}")
        if self.default_profile not in self.profiles:
            raise ValueError(f"unknown profile {self.default_profile!r}")
        for model, prof in self.models.items():
            if prof not in self.profiles:
                raise ValueError(f"model {model!r} maps to unknown profile {prof!r}")
        for name in ("error_rate", "reset_rate", "malformed_rate", "drip_rate", "error_event_rate"):
            v = getattr(self.faults, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {v}")
        if self.slowdown <= 0:
            raise ValueError("slowdown must be > 0")
        if self.coding not in ("", "gzip", "deflate", "br", "zstd"):
            raise ValueError(f"coding must be gzip, deflate, br or zstd, got {self.coding!r}")


@dataclass
class GatewayStats:
    requests: int = 0
    completed: int = 0
    rejected: int = 0
    errors: int = 0
    resets: int = 0
    error_events: int = 0
    refused: int = 0  # requests a stateful API refused (an unknown previous_response_id)
    closed_early: int = 0  # streams whose client left before the body's end (after the terminal)
    in_service: int = 0
    max_in_service_seen: int = 0
    queued: int = 0


def parse_stall(text: str | None) -> tuple[float, float]:
    """`--stall 1s/3s` -> (stall ms, every s); (0, 0) when not given."""
    if not text:
        return 0.0, 0.0
    dur, sep, every = text.partition("/")
    if not sep:
        raise UserError(f"--stall {text!r}: want DURATION/EVERY, e.g. 1s/3s")
    try:
        return parse_duration(dur) * 1000, parse_duration(every)
    except ValueError as exc:
        raise UserError(f"--stall {text!r}: {exc} (want e.g. 1s/3s)") from None


def parse_model_profiles(items: Sequence[str]) -> dict[str, str]:
    """`--model NAME=PROFILE` items on top of the default model map."""
    models = dict(DEFAULT_MODELS)
    for item in items:
        name, sep, prof = item.partition("=")
        if not sep or not name or not prof:
            raise UserError(f"--model {item!r}: want NAME=PROFILE")
        models[name] = prof
    return models
