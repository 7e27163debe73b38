"""Plan transforms beyond plain replay: amplification of a replay plan, and synthetic streams
(an arrival process plus a request maker). Pure: seeded, no clock, no I/O beyond the maker's.

Amplification (`--amplify F`, F >= 1, fractional allowed): every shot is sent floor(F) times, and
once more with probability F - floor(F) (a seeded draw), so 2.5 sends every request twice and half
of them a third time. Copies keep the recording's shape: each copy is placed at a seeded random
point of the request's local inter-arrival gap (up to the next request), not stacked on the same
instant, unless mode is "burst". Copy k of a request gets the session key `<key>~c<k>` and, in
the body, the OpenAI `user` field `<user>~c<k>`, so copied conversations stay separate. With
`salt_prompts`, each copy's first user message is prefixed with a short per-copy nonce, so a
gateway's prompt/prefix cache cannot serve copies for free; without it, copies repeat their
prompts as recorded, and a prefix cache may answer them faster than it would new traffic.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from captures.arrivals import Arrival, offsets
from replay.plan import Shot

from .makers import Maker

S = 1_000_000_000


def amplify(
    shots: Iterable[Shot], factor: float, *, mode: str = "spread", seed: int = 0, salt: bool = False
) -> Iterator[Shot]:
    if factor < 1:
        raise ValueError(f"amplify factor must be >= 1, got {factor}")
    if mode not in ("spread", "burst"):
        raise ValueError(f"amplify mode must be spread or burst, got {mode!r}")
    rng = random.Random(seed)
    whole, frac = int(factor), factor - int(factor)
    seq = 0
    it = iter(shots)
    cur = next(it, None)
    last_gap = S
    while cur is not None:
        nxt = next(it, None)
        gap = (nxt.offset_ns - cur.offset_ns) if nxt is not None else last_gap
        if nxt is not None:
            last_gap = gap
        n = whole + (1 if rng.random() < frac else 0)
        group = [cur]
        for k in range(1, n):
            off = cur.offset_ns + (round(rng.random() * gap) if mode == "spread" else 0)
            extra = dict(cur.extra)
            extra["copy"] = k
            if salt:
                extra["salt"] = f"{rng.getrandbits(32):08x}"
            group.append(
                Shot(
                    offset_ns=off,
                    seq=0,
                    request=cur.request,
                    session=f"{cur.session}~c{k}" if cur.session else None,
                    stream=cur.stream,
                    target=cur.target,
                    copy=k,
                    source=cur.source,
                    recorded=cur.recorded,
                    loop=cur.loop,
                    extra=extra,
                )
            )
        group.sort(key=lambda s: (s.offset_ns, s.copy))
        for s in group:
            s.seq = seq
            seq += 1
            yield s
        cur = nxt


def plan_synthetic(
    arrival: Arrival,
    duration_s: float,
    maker: Maker,
    *,
    seed: int = 0,
    stream: str = "synthetic",
    start_s: float = 0.0,
    count: int | None = None,
) -> Iterator[Shot]:
    """Shots at the arrival process's offsets (from start_s, for duration_s), made by maker."""
    rng = random.Random(seed * 7919 + 17)
    start_ns = round(start_s * S)
    for i, off in enumerate(offsets(arrival, duration_s, seed)):
        if count is not None and i >= count:
            return
        made = maker.make(rng)
        yield Shot(
            offset_ns=start_ns + off,
            seq=i,
            request=made.request,
            session=made.session,
            stream=stream,
            source=made.source,
            recorded=made.recorded,
        )
