"""Capture faults on a real mitmdump: the disk fills up, the directory turns read-only, and the
stop policy. Needs a small tmpfs (mount, as root); skipped with the reason where mounting is not
allowed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxies import start_proxy

from captures.reader import Capture
from proxy_addons.launch import CaptureProcess
from replay.mock.threaded import running_gateway


@pytest.fixture()
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _proxy(tmp: Path, fs: Path, upstream: str, **options: str) -> CaptureProcess:
    return start_proxy(tmp, upstream, out=fs / "cap", **options)


def _get(url: str, tag: str) -> int:
    req = urllib.request.Request(f"{url}/echo/x?size=200", headers={"X-Tag": tag})
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()
        return int(r.status)


def _fill(fs: Path) -> Path:
    filler = fs / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


def test_disk_full_keeps_traffic_flowing_counts_the_loss_and_resumes(
    tmp_path: Path, small_fs: Path
) -> None:
    with running_gateway() as gw:
        proc = _proxy(tmp_path, small_fs, gw.url)
        try:
            assert all(_get(proc.url, f"before-{i}") == 200 for i in range(20))
            time.sleep(0.5)
            filler = _fill(small_fs)
            # the disk is full: traffic keeps flowing
            assert all(_get(proc.url, f"full-{i}") == 200 for i in range(30))
            time.sleep(1.0)
            assert proc.alive()
            filler.unlink()  # space returns
            time.sleep(1.0)
            assert all(_get(proc.url, f"after-{i}") == 200 for i in range(20))
            time.sleep(0.5)
            final = proc.stop()
        finally:
            proc.kill()
    assert final is not None and final["done"]
    tags = [dict(r["req_headers"]).get("X-Tag") for r in Capture(small_fs / "cap").records()]
    assert sum(t.startswith("before-") for t in tags) == 20
    assert sum(t.startswith("after-") for t in tags) == 20  # it resumed
    # every request is in the capture or counted as lost, never silently missing
    assert len(tags) + final["lost"] + final["dropped"] == 70, (len(tags), final)
    log = (small_fs / "cap" / "proxy.log").read_text(errors="replace")
    assert "again after" in log or final["lost"] == 0, log[-2000:]


def test_an_unwritable_directory_is_refused_at_start(tmp_path: Path) -> None:
    """A capture directory that cannot be created (under a regular file; as root, permission
    bits do not stop writes, so this is the unwritable case a test can make) gets one line and
    exit 2 before any traffic is accepted. Write failures during a run take the disk-full path
    above (the same OSError handling)."""
    import sys

    (tmp_path / "afile").write_text("x")
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            "import cli; cli.main()",
            "capture",
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--out",
            str(tmp_path / "afile" / "cap"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "afile" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_stop_policy_stops_the_proxy_when_the_disk_is_full(tmp_path: Path, small_fs: Path) -> None:
    with running_gateway() as gw:
        proc = _proxy(tmp_path, small_fs, gw.url, capture_on_error="stop")
        try:
            assert _get(proc.url, "first") == 200
            time.sleep(0.5)
            _fill(small_fs)
            with contextlib.suppress(urllib.error.URLError, ConnectionError, OSError):
                for i in range(50):
                    _get(proc.url, f"full-{i}")
                    time.sleep(0.05)
            deadline = time.monotonic() + 20
            while proc.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not proc.alive(), "the proxy kept running under capture_on_error=stop"
            with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
                _get(proc.url, "after-stop")  # no traffic rather than unrecorded traffic
        finally:
            proc.kill()
    os.sync()
