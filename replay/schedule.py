"""The scheduler: a pure state machine deciding which shot may go now.

It knows nothing of clocks or sockets (the runner passes `now`; tests drive it on virtual time):

- open loop: a shot is due at its offset from the run's start, computed absolutely (a late wakeup
  does not push later shots back); it goes when due whatever is in flight, up to `max_in_flight`;
  past that bound it waits, and the wait shows as schedule lag (send time - due time);
- closed loop: every shot is due at once; `max_in_flight` is the concurrency;
- ordered sessions: a shot whose session has a request in flight waits for it to finish (then it
  goes at max(due, that finish)), while other sessions' shots go on.

The plan is consumed lazily (one shot of lookahead plus session-held shots, and at most
LOOKAHEAD more when the dispatcher asks which shots are due close together, or as many as the
runner asks for to open connections before the start), so memory stays bounded however long
the plan.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from .plan import Shot

LOOKAHEAD = 64  # plan shots looked at past the next one by `last_due_by`


class Scheduler:
    def __init__(
        self,
        shots: Iterable[Shot],
        *,
        max_in_flight: int,
        ordered_sessions: bool = False,
        closed_loop: bool = False,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self._it: Iterator[Shot] = iter(shots)
        self._ahead: deque[Shot] = deque()  # plan shots after the head, read by last_due_by
        self._head: Shot | None = next(self._it, None)
        self.max_in_flight = max_in_flight
        self.ordered = ordered_sessions
        self.closed = closed_loop
        self.in_flight = 0
        self.sent = 0
        self.done_count = 0
        # shots released by their session's previous request finishing: (due, seq, shot)
        self._released: list[tuple[int, int, Shot]] = []
        self._busy: set[str] = set()
        self._held: dict[str, deque[Shot]] = {}
        self._held_count = 0

    # -- queries -------------------------------------------------------------------------------
    @property
    def exhausted(self) -> bool:
        """No shot left to send (some may still be in flight)."""
        return self._head is None and not self._released and self._held_count == 0

    @property
    def finished(self) -> bool:
        return self.exhausted and self.in_flight == 0

    @property
    def held(self) -> int:
        """Shots waiting for their session's previous request."""
        return self._held_count

    def _due(self, shot: Shot) -> int:
        return 0 if self.closed else shot.offset_ns

    def _advance_head(self) -> None:
        """Move plan shots whose session is busy into that session's queue."""
        while self._head is not None and self.ordered:
            s = self._head.session
            if s is None or (s not in self._busy and s not in self._held):
                return
            self._held.setdefault(s, deque()).append(self._head)
            self._held_count += 1
            self._head = self._next_planned()

    def next_due(self) -> int | None:
        """Offset (ns) at which the next shot is due, ignoring the in-flight bound; None if no
        shot is eligible now (all held by busy sessions, or the plan is done)."""
        self._advance_head()
        best: int | None = None
        if self._head is not None:
            best = self._due(self._head)
        if self._released:
            r = self._released[0][0]
            best = r if best is None else min(best, r)
        return best

    def last_due_by(self, horizon: int) -> int | None:
        """The due offset of the last plan shot due by `horizon`, when the next one is (None:
        it is not, or the plan is done): one wakeup at that offset sends them all. It looks
        at most LOOKAHEAD shots past the next one, in plan order; shots released by their
        session and held ones are not counted, so it is a hint, and the next shot is never
        held back past `horizon` by it."""
        if self.closed:
            return None
        due = self.upcoming(horizon, LOOKAHEAD + 1)
        return max(s.offset_ns for s in due) if due else None

    def upcoming(self, horizon: int, most: int) -> list[Shot]:
        """The plan's next shots due by offset `horizon`, in plan order, at most `most`; read
        ahead and kept (nothing is taken). Released and held shots are not counted: a hint
        of what the coming moments need (a wakeup for several, connections opened ahead)."""
        head = self._head
        if head is None or most < 1 or self._due(head) > horizon:
            return []
        out, ahead = [head], self._ahead
        while len(out) < most:
            i = len(out) - 1
            if i == len(ahead):
                nxt = next(self._it, None)
                if nxt is None:
                    break
                ahead.append(nxt)
            if self._due(ahead[i]) > horizon:
                break
            out.append(ahead[i])
        return out

    def _next_planned(self) -> Shot | None:
        return self._ahead.popleft() if self._ahead else next(self._it, None)

    # -- transitions ---------------------------------------------------------------------------
    def take(self, now: int) -> tuple[Shot, int] | None:
        """The shot to send now (offset `now` from the run's start) and its due offset, or None
        if nothing is due or the in-flight bound is reached."""
        if self.in_flight >= self.max_in_flight:
            return None
        self._advance_head()
        head = self._head
        head_key = (self._due(head), head.seq) if head is not None else None
        if self._released and (head_key is None or self._released[0][:2] < head_key):
            due, _, shot = self._released[0]
            if due > now:
                return None
            heapq.heappop(self._released)
        elif head is not None and head_key is not None:
            if head_key[0] > now:
                return None
            shot, due = head, head_key[0]
            self._head = self._next_planned()
        else:
            return None
        self.in_flight += 1
        self.sent += 1
        if self.ordered and shot.session is not None:
            self._busy.add(shot.session)
        return shot, due

    def untake(self, shot: Shot, due: int) -> None:
        """Give back a shot taken early and not sent (a burst made ready before its instant,
        then stopped, or left without a warm connection): it is due again at its own time,
        before any later shot. Its session stays reserved for it, as for a released shot."""
        self.in_flight -= 1
        self.sent -= 1
        heapq.heappush(self._released, (due, shot.seq, shot))

    def done(self, shot: Shot, now: int) -> None:
        """A sent shot finished (any outcome) at offset `now`."""
        self.in_flight -= 1
        self.done_count += 1
        s = shot.session
        if not self.ordered or s is None:
            return
        self._busy.discard(s)
        q = self._held.get(s)
        if q:
            nxt = q.popleft()
            self._held_count -= 1
            if not q:
                del self._held[s]
            # Released: due at its own time, but never before its predecessor finished. Its lag
            # is still measured from its own intended time.
            heapq.heappush(self._released, (self._due(nxt), nxt.seq, nxt))
            self._busy.add(s)  # reserved for the released shot: keeps order with later ones

    def drain(self) -> Iterator[Shot]:
        """Shots never sent (the run was stopped): for accounting."""
        while self._released:
            yield heapq.heappop(self._released)[2]
        for q in self._held.values():
            yield from q
        self._held.clear()
        self._held_count = 0
        if self._head is not None:
            yield self._head
            self._head = None
        while self._ahead:
            yield self._ahead.popleft()
        yield from self._it


def simulate(
    scheduler: Scheduler,
    service_ns: Callable[[Shot], int],
    *,
    wake_late_ns: int = 0,
) -> list[tuple[Shot, int, int, int]]:
    """Run a scheduler on virtual time (no clock, no sleeping): each shot takes `service_ns` to
    complete; every timer wakeup comes `wake_late_ns` late (a sleep that overshoots).
    Returns (shot, due, sent, done) per shot in send order."""
    now = 0
    running: list[tuple[int, int, Shot]] = []  # (done time, seq, shot)
    out: list[tuple[Shot, int, int, int]] = []
    by_seq: dict[int, int] = {}
    while not scheduler.finished:
        while (taken := scheduler.take(now)) is not None:
            shot, due = taken
            done = now + service_ns(shot)
            heapq.heappush(running, (done, shot.seq, shot))
            by_seq[shot.seq] = len(out)
            out.append((shot, due, now, done))
        candidates = []
        if running:
            candidates.append(running[0][0])
        nd = scheduler.next_due()
        if nd is not None and scheduler.in_flight < scheduler.max_in_flight:
            candidates.append(max(nd + wake_late_ns, now))
        if not candidates:
            raise RuntimeError("scheduler stalled: nothing in flight and nothing eligible")
        now = min(candidates)
        while running and running[0][0] <= now:
            _, _, shot = heapq.heappop(running)
            scheduler.done(shot, now)
    return out
