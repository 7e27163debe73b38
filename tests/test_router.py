"""The router: each prepared request to its own target's client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from wired import needs_wire

from captures.errors import UserError
from replay.rewrite import Prepared
from replay.send.outcome import Outcome
from replay.send.router import Router, Staged, pick_client
from replay.targets import Target, parse_target


class Recorder:
    def __init__(self) -> None:
        self.got: list[str] = []

    def submit(self, req: Prepared, done: Callable[[Outcome], None]) -> bool | None:
        self.got.append(req.path)
        return False

    def stage(self, req: Prepared, done: Callable[[Outcome], None]) -> Staged | None:
        self.got.append("staged " + req.path)
        return None

    async def close(self) -> None:
        return None


def _req(target: Target, path: str) -> Prepared:
    return Prepared("GET", target, path, [], b"", b"", None, False)


def test_requests_go_to_their_targets_client_by_identity_or_by_value() -> None:
    a, b = parse_target("http://127.0.0.1:8001", "a"), parse_target("http://127.0.0.1:8002", "b")
    ca, cb = Recorder(), Recorder()
    router = Router({a: ca, b: cb})
    router.submit(_req(a, "/1"), lambda o: None)
    router.submit(_req(b, "/2"), lambda o: None)
    twin = replace(a)  # equal to a, another object: found by value
    assert twin == a and twin is not a
    router.submit(_req(twin, "/3"), lambda o: None)
    router.stage(_req(b, "/4"), lambda o: None)
    assert ca.got == ["/1", "/3"] and cb.got == ["/2", "staged /4"]


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"open_loop": False}, "open loop only"),
        ({"stateful": True}, "session state"),
        ({"slack": True}, "--send-slack"),
        ({"targets": [parse_target("https://127.0.0.1:9")]}, "plain HTTP only"),
    ],
)
def test_the_compiled_sender_where_it_can_serve_the_run_and_a_line_why_where_not(
    kw: dict[str, Any], why: str
) -> None:
    needs_wire()
    base: dict[str, Any] = {
        "open_loop": True,
        "stateful": False,
        "slack": False,
        "targets": [parse_target("http://127.0.0.1:9")],
    }
    assert pick_client("auto", **base) == "wire"
    assert pick_client("fast", **base) == "fast"
    assert pick_client("auto", **{**base, **kw}) == "fast"
    with pytest.raises(UserError, match=why):
        pick_client("wire", **{**base, **kw})
