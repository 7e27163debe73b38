"""The compiled sender in tests: skipped where it is not built, unless CI asks for it
(LOADTAPE_REQUIRE_WIRE=1: .ci/run), where its absence fails."""

from __future__ import annotations

import asyncio
import os

import pytest

from replay.send import wire
from replay.send.outcome import Outcome


def needs_wire() -> None:
    if not wire.available() and not os.environ.get("LOADTAPE_REQUIRE_WIRE"):
        pytest.skip("the compiled sender is not built here (no C compiler at install)")
    assert wire.available(), "the compiled sender was not built (replay/send/_wire)"


def resolve(fut: asyncio.Future[Outcome], out: Outcome) -> None:
    """A timed client's `done` for tests whose tag is the future awaiting the outcome."""
    fut.set_result(out)
