"""The CLI as users run it: real subprocesses, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from captures import store
from captures.testing import synthetic_records, write_capture

LOADTAPE = [sys.executable, "-c", "import cli; cli.main()"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOADTAPE, *args], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(p: subprocess.CompletedProcess[str], needle: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("loadtape: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in p.stderr


def test_inspect_text_and_json(tmp_path: Path) -> None:
    cap = write_capture(
        tmp_path / "cap", synthetic_records(300, rate=30, seed=2), segment_max_records=100
    )
    p = run("inspect", str(cap))
    assert p.returncode == 0, p.stderr
    assert "requests     300" in p.stdout and "3 part(s)" in p.stdout
    j = json.loads(run("inspect", str(cap), "--json").stdout)
    assert j["rows"] == 300 and j["parts"] == 3 and j["format_version"] == 1
    assert 20 < j["mean_rate_per_s"] < 40
    assert j["peak_rate_per_s"] >= 30
    assert 0.3 < j["streamed_share"] < 0.7
    assert j["status_mix"] == {"200": 300}
    assert dict(j["top_models"]).keys() == {"small", "large"}
    assert j["percentiles"]["completion_tokens"]["p100"] <= 24
    assert j["recovery_notes"] == []


def test_inspect_reports_journal_damage(tmp_path: Path) -> None:
    cap = tmp_path / "cap"
    from captures.writer import CaptureWriter

    w = CaptureWriter(cap)
    w.append_many(synthetic_records(5))
    w.sync()
    seg = store.list_segments(cap)[0].path
    w._lock.release(unlink=False)  # as if the writer died
    with open(seg, "ab") as fh:
        fh.write(b"\x10\x00\x00\x00partial")
    j = json.loads(run("inspect", str(cap), "--json").stdout)
    assert j["rows"] == 5
    assert any("truncated" in n for n in j["recovery_notes"])


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    assert_one_line_error(run("inspect", str(tmp_path / "nope")), "no such capture")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("inspect", str(tmp_path / "empty")), "not a capture")
    cap = write_capture(tmp_path / "cap", synthetic_records(3))
    (cap / "parts" / "part-wbad-000009.parquet").write_bytes(b"garbage!" * 100)
    assert_one_line_error(run("inspect", str(cap)), "part-wbad-000009.parquet")
    cap2 = write_capture(tmp_path / "cap2", synthetic_records(3))
    m = json.loads((cap2 / "capture.json").read_text())
    m["format_version"] = 9
    (cap2 / "capture.json").write_text(json.dumps(m))
    assert_one_line_error(run("inspect", str(cap2)), "format v9")
    (tmp_path / "notjson").mkdir()
    (tmp_path / "notjson" / "capture.json").write_text("{{{")
    assert_one_line_error(
        run("inspect", str(tmp_path / "notjson")), "not a loadtape capture manifest"
    )
    p = run("inspect")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert_one_line_error(run("mock-gateway", "--stall", "1s"), "--stall")
    assert_one_line_error(run("mock-gateway", "--host", "0.0.0.0"), "loopback")


def test_mock_gateway_command_serves_and_stops_on_sigterm() -> None:
    with subprocess.Popen(
        [*LOADTAPE, "mock-gateway", "--port", "0", "--profile", "instant"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as p:
        try:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.startswith("mock gateway listening on http://127.0.0.1:"), line
            url = line.split()[-1]
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                assert r.status == 200
            p.send_signal(signal.SIGTERM)
            assert p.wait(10) == 0
        finally:
            if p.poll() is None:
                p.kill()


@pytest.mark.parametrize(("preset", "expected"), [(None, "1"), ("4", "4")])
def test_numpy_starts_one_blas_thread_unless_the_user_set_it(
    preset: str | None, expected: str
) -> None:
    """OpenBLAS's threads spun for 0.1 s of CPU at each start; every entry point imports
    `captures` before numpy. A value the user set is kept."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if preset is not None:
        env["OPENBLAS_NUM_THREADS"] = preset
    code = "import os, sys, cli; print(os.environ['OPENBLAS_NUM_THREADS'], 'numpy' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == expected  # (and set by the time cli has loaded numpy, if it has)
