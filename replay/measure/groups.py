"""A result group's counts: `GroupStats` (requests by outcome, statuses, error kinds, tokens,
finish reasons, bytes and the group's span in time), how groups and series are named, and
`add_counts`, the key-by-key sum the run, shards and the report share."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

# A path segment that names one object, not an endpoint: all digits, a UUID, a long hex string,
# a prefixed identifier of a provider (resp_..., msg_01..., file-..., batch_..., chatcmpl-...: a
# short word, _ or -, then 12 or more letters and digits, some digits among them) or a long
# token of letters and digits mixed. Names with separators of their own (gpt-4o-mini,
# text-embedding-3-large, gemini-1.5-pro:generateContent) are not identifiers.
_ID = re.compile(
    r"\d+"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{16,}"
    r"|[A-Za-z]{1,12}[_-](?=[A-Za-z0-9]*\d)[A-Za-z0-9]{12,}"
    r"|(?=[A-Za-z0-9]*\d)(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{20,}"
)


@functools.lru_cache(maxsize=8192)
def route(path: str) -> str:
    """The endpoint a request path belongs to, as results are grouped (histograms, report,
    live metrics, compare): the query dropped and each identifier segment written {id}, so
    GET /v1/responses/resp_67cc... of ten thousand responses is one group, not ten thousand
    (a group's histograms are 1.5 MB). results.parquet keeps the path as sent."""
    path = path.split("?", 1)[0]
    parts = path.split("/")
    out = ["{id}" if _ID.fullmatch(seg) else seg for seg in parts]
    return "/".join(out)


def series_name(stream: str, target: str) -> str:
    """A stream's name in run.json and the over-time series: `stream@target` with several
    (named) targets; a run's one target is in the results by its URL and not in the name."""
    return f"{stream}@{target}" if target and "://" not in target else stream


def status_class(status: int | None, error: str | None) -> str:
    if error is not None or status is None:
        return "error"
    return f"{status // 100}xx"


K = TypeVar("K")
N = TypeVar("N", int, float)


def add_counts(into: dict[K, N], more: Mapping[K, N]) -> None:
    """into += more, key by key (counts by error kind, status, outcome, ...)."""
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


@dataclass
class GroupStats:
    count: int = 0
    ok: int = 0
    expected: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # error kind or http_<status> -> count
    statuses: dict[int, int] = field(default_factory=dict)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    finish_reasons: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    first_intended_ns: int | None = None
    last_intended_ns: int | None = None
    first_end_ns: int | None = None
    last_end_ns: int | None = None

    def widen(self, first_intended: int, last_intended: int, first_end: int, last_end: int) -> None:
        """The span takes in these instants (epoch ns)."""
        fi, li, fe, le = (
            self.first_intended_ns,
            self.last_intended_ns,
            self.first_end_ns,
            self.last_end_ns,
        )
        self.first_intended_ns = first_intended if fi is None else min(fi, first_intended)
        self.last_intended_ns = last_intended if li is None else max(li, last_intended)
        self.first_end_ns = first_end if fe is None else min(fe, first_end)
        self.last_end_ns = last_end if le is None else max(le, last_end)

    def merge(self, o: GroupStats) -> None:
        self.count += o.count
        self.ok += o.ok
        self.expected += o.expected
        self.failed += o.failed
        add_counts(self.errors, o.errors)
        add_counts(self.statuses, o.statuses)
        add_counts(self.finish_reasons, o.finish_reasons)
        self.completion_tokens += o.completion_tokens
        self.prompt_tokens += o.prompt_tokens
        self.reasoning_tokens += o.reasoning_tokens
        self.cached_tokens += o.cached_tokens
        self.bytes_in += o.bytes_in
        for a in ("first_intended_ns", "first_end_ns"):
            x, y = getattr(self, a), getattr(o, a)
            setattr(self, a, y if x is None else x if y is None else min(x, y))
        for a in ("last_intended_ns", "last_end_ns"):
            x, y = getattr(self, a), getattr(o, a)
            setattr(self, a, y if x is None else x if y is None else max(x, y))
