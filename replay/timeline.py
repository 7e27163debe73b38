"""The run's timeline, pure (no clock, no I/O): the streams' shots merged into one sequence by
intended offset, tagged with their target, cut into shards for scale-out, and prepared ahead of
sending."""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Callable, Iterable, Iterator

from . import plan as planmod
from .rewrite import Prepared
from .settings import StreamPlan


def _for_target(shots: Iterable[planmod.Shot], name: str) -> Iterator[planmod.Shot]:
    """Tag a stream's shots with its target's name; sessions become per target, so ordered
    sessions against one target do not wait for another's."""
    for s in shots:
        s.target = name
        if s.session is not None:
            s.session = f"{s.session}@{name}"
        yield s


def merged(streams: list[StreamPlan]) -> Iterator[planmod.Shot]:
    """One timeline: the streams' shots merged by intended offset, numbered in that order.
    On a tie, streams keep their order (so several targets get the same shot in turn)."""
    plans = [
        _for_target(s.shots, s.rewriter.target.name) if s.rewriter.target.name else s.shots
        for s in streams
    ]
    it = heapq.merge(*plans, key=lambda shot: shot.offset_ns) if len(plans) > 1 else iter(plans[0])
    for seq, shot in enumerate(it):
        shot.seq = seq
        yield shot


def session_shard(session: str, count: int) -> int:
    """The shard of a session: a stable hash (the same in every process, unlike hash())."""
    return zlib.crc32(session.encode()) % count


def sharded(shots: Iterable[planmod.Shot], index: int, count: int) -> Iterator[planmod.Shot]:
    """Shard `index` of `count`: whole sessions by session_shard; sessionless shots in turn
    (every worker walks the same timeline, so the turn is the same in each)."""
    free = 0
    for s in shots:
        if s.session is not None:
            k = session_shard(s.session, count)
        else:
            k = free % count
            free += 1
        if k == index:
            yield s


def with_prepared(
    shots: Iterable[planmod.Shot], prepare: Callable[[planmod.Shot], Prepared]
) -> Iterator[planmod.Shot]:
    """Rewrite each shot's request ahead of time (on the plan thread, off the event loop)."""
    for shot in shots:
        shot.prepared = prepare(shot)
        yield shot
