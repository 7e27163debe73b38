"""Long file work says how it goes, and a sweep over a scenario finds where its users' SLO
first fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cli
from captures.testing import T0_NS, chat_record, write_capture
from replay.mock.threaded import running_gateway

CLI = [sys.executable, "-c", "import cli; cli.main()"]


def test_anonymize_and_import_print_progress_lines(tmp_path: Path) -> None:
    cap = write_capture(
        tmp_path / "cap", [chat_record(start_ns=T0_NS + i * 1_000_000) for i in range(3000)]
    )
    env_period = "import cli; cli.Ticker.PERIOD_S = 0.0; cli.main()"
    p = subprocess.run(
        [sys.executable, "-c", env_period, "anonymize", str(cap), "--out", str(tmp_path / "anon")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("anonymize: ")]
    assert any("/3000 requests" in ln and "ETA" in ln for ln in lines), p.stderr
    assert lines[-1].startswith("anonymize: done in"), lines
    trace = tmp_path / "mc.jsonl"
    trace.write_text(
        "".join(
            json.dumps({"timestamp": i, "input_length": 20, "output_length": 5, "hash_ids": [i]})
            + "\n"
            for i in range(2000)
        )
    )
    p = subprocess.run(
        [sys.executable, "-c", env_period, "import", "mooncake", str(trace), "--out",
         str(tmp_path / "imp"), "--model", "small"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert any(ln.startswith("import: ") and "requests" in ln for ln in p.stderr.splitlines())
    assert cli.Ticker.PERIOD_S > 0  # the default keeps logs short


def test_a_scenario_sweeps_users_until_the_slo_fails(tmp_path: Path) -> None:
    """Mixed traffic (a replay stream and a synthetic one) at 1, 4 and 16 users against a
    gateway that serves 4 at once: the served requests' p95 < 50 ms first fails at 16."""
    recs = [
        chat_record(start_ns=T0_NS + i * 10_000_000, model="small", max_tokens=4, prompt="hi")
        for i in range(40)
    ]
    write_capture(tmp_path / "cap", recs)
    sc = tmp_path / "mixed.toml"
    sc.write_text(
        '[[stream]]\nname = "recorded"\nkind = "replay"\ncapture = "cap"\n'
        '[[stream]]\nname = "stress"\nkind = "synthetic"\n'
        'arrival = { process = "constant", rate = 20 }\n'
        'request = { maker = "template", prompt_tokens = 8, output_tokens = 4 }\n'
        'duration = "5s"\n'
    )
    with running_gateway(max_in_service=4, max_queue=1000) as gw:
        p = subprocess.run(
            [*CLI, "sweep", str(sc), "--target", gw.url, "--concurrency", "1,4,16",
             "--requests", "120", "--slo", "latency.p95<50ms", "--out", str(tmp_path / "sw"),
             "--format", "json"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [f["level"] for f in doc["levels"]] == [1, 4, 16]
    assert all(f["count"] == 120 for f in doc["levels"])
    assert doc["slo_knee"] is not None and doc["slo_knee"]["level"] == 16, doc["slo_knee"]
    run = json.loads((Path(doc["levels"][0]["dir"]) / "run.json").read_text())
    assert set(run["streams"]) == {"recorded", "stress"}  # the mixed traffic, at every level
    bad = subprocess.run(
        [*CLI, "sweep", str(sc), "--target", "http://127.0.0.1:1", "--rates", "1,2",
         "--out", str(tmp_path / "bad")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "--concurrency" in bad.stderr, bad.stderr
