"""`loadtape demo` as the README runs it (shortened): mock gateway, real proxy, two replays."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            "import cli; cli.main()",
            "demo",
            "--dir",
            str(root),
            "--seconds",
            "3",
            "--sessions",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "replay at 1x" in p.stdout and "replay at 5x" in p.stdout
    for sub in ("capture", "replay-1x", "replay-5x"):
        assert (root / sub).is_dir()
    for speed in ("1x", "5x"):
        run = json.loads((root / f"replay-{speed}" / "run.json").read_text())
        assert run["counts"]["sent"] > 10 and run["counts"]["failed"] == 0
        html = (root / f"replay-{speed}" / "report.html").read_text()
        assert html.startswith("<!DOCTYPE html>") and html.count("<svg") >= 10
        for f in (root / f"replay-{speed}").iterdir():  # nor did they reach results or reports
            assert b"sk-demo-key" not in f.read_bytes(), f
    assert "requests in" in p.stdout and "latency" in p.stdout  # the text report
    # The demo's API keys were redacted in the capture and never replayed.
    for f in (root / "capture").rglob("*"):
        if f.is_file():
            assert b"sk-demo-key" not in f.read_bytes()
    # It refuses to wipe a directory it did not create.
    (tmp_path / "mine").mkdir()
    p3 = subprocess.run(
        [sys.executable, "-c", "import cli; cli.main()", "demo", "--dir", str(tmp_path / "mine")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p3.returncode == 2 and "not a loadtape demo directory" in p3.stderr
