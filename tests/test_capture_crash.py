"""kill -9 of the capture proxy under steady load, then a restart on the same directory."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from captures import reader, store
from captures.reader import Capture
from proxy_addons.launch import CaptureConfig, CaptureProcess
from replay.mock.threaded import running_gateway

FLUSH_S = 0.1  # the addon's default capture_flush_interval


def _proc(tmp: Path, upstream: str) -> CaptureProcess:
    return CaptureProcess(
        CaptureConfig(
            out=tmp / "cap",
            upstream=upstream,
            listen_port=0,
            confdir=tmp / "mitmconf",
            options={"capture_redaction_key_file": str(tmp / "key")},
        )
    )


async def _load(url: str, ledger: dict[str, float], stop: asyncio.Event) -> None:
    """Eight clients sending back to back; the ledger holds each completed response's time."""
    n = 0

    async def worker(w: int) -> None:
        nonlocal n
        async with aiohttp.ClientSession(url) as s:
            while not stop.is_set():
                n += 1
                rid = f"r{w}-{n}"
                try:
                    async with s.get(f"/echo/{rid}?size=64", headers={"X-Req-Id": rid}) as r:
                        await r.read()
                        if r.status == 200:
                            ledger[rid] = time.time()
                except (aiohttp.ClientError, OSError):
                    await asyncio.sleep(0.01)

    await asyncio.gather(*(worker(w) for w in range(8)))


@pytest.mark.parametrize("victims", ["proxy", "group"])
async def test_kill_9_under_load_loses_nothing_older_than_the_flush_interval(
    tmp_path: Path, victims: str
) -> None:
    """victims=proxy: only mitmdump dies (the capture worker drains the pipe and closes the
    capture itself); victims=group: mitmdump and its worker die together, the journal is left
    behind and the next start recovers it."""
    with running_gateway(default_profile="instant") as gw:
        proc = _proc(tmp_path, gw.url).start()
        ledger: dict[str, float] = {}
        stop = asyncio.Event()
        load = asyncio.create_task(_load(proc.url, ledger, stop))
        await asyncio.sleep(2.5)
        kill_time = time.time()
        proc.kill(group=victims == "group")  # SIGKILL: no done hook, no flush
        await asyncio.sleep(0.3)
        stop.set()
        await load
        assert len(ledger) > 200, "the load should have completed a few hundred requests"
        if victims == "group":
            assert store.list_segments(tmp_path / "cap"), "a killed writer leaves its journal"

        # Restart on the same directory: the new writer recovers the dead one's journal.
        proc2 = _proc(tmp_path, gw.url).start()
        final = proc2.stop()
    assert final is not None and final["done"]
    cap = Capture(tmp_path / "cap")
    rows = cap.records(["writer_id", "seq", "req_headers"])
    ids = [dict(r["req_headers"]).get("X-Req-Id") for r in rows]
    assert len(ids) == len(set(ids)), "no record may be duplicated"
    assert len({(r["writer_id"], r["seq"]) for r in rows}) == len(rows)
    must_have = {rid for rid, t in ledger.items() if t < kill_time - FLUSH_S}
    missing = must_have - set(ids)
    assert not missing, f"{len(missing)} of {len(must_have)} completed responses lost"
    assert not store.list_segments(tmp_path / "cap"), "recovery compacts the dead journal"
    for part in store.list_parts(tmp_path / "cap"):
        reader.open_part(part).read()  # every part is readable end to end
    print(
        f"kill -9: {len(ledger)} responses completed, {len(must_have)} older than the flush "
        f"interval, all present; {len(rows)} records in the capture; recovery notes: {cap.notes}"
    )
