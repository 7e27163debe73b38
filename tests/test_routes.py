"""Results are grouped by route: a path's identifier segments are one group, not one each (a
group's histograms are 1.5 MB: ten thousand GETs of /v1/responses/<id> were ten thousand)."""

from __future__ import annotations

import json
import random
import string
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from scrape import Samples, free_port, scrape, total

from captures.testing import T0_NS, http_record, write_capture
from replay.decide.report import build
from replay.decide.samples import samples
from replay.measure.groups import route
from replay.measure.resultsdir import Results
from replay.mock.threaded import running_gateway

CLI = [sys.executable, "-c", "import cli; cli.main()"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1/messages?beta=true", "/v1/messages"),
        ("/v1/responses/resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b4", "/v1/responses/{id}"),
        ("/v1/files/file-XjGxS3KTG0uNmNOK362iJua3/content", "/v1/files/{id}/content"),
        ("/v1/messages/batches/msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d", "/v1/messages/batches/{id}"),
        (
            "/v1/chat/completions/chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
            "/v1/chat/completions/{id}",
        ),
        ("/users/123e4567-e89b-12d3-a456-426614174000/keys", "/users/{id}/keys"),
        ("/api/v2/items/42", "/api/v2/items/{id}"),
        ("/blobs/9f86d081884c7d659a2feaa0c55ad015", "/blobs/{id}"),
        ("/t/Zx81kQ2mN0pLr7sT4uVw", "/t/{id}"),
        # names with separators of their own are endpoints, not identifiers
        (
            "/openai/deployments/gpt-4o-mini-2024-07-18/chat/completions?api-version=2024-02-01",
            "/openai/deployments/gpt-4o-mini-2024-07-18/chat/completions",
        ),
        (
            "/openai/deployments/text-embedding-3-large/embeddings",
            "/openai/deployments/text-embedding-3-large/embeddings",
        ),
        (
            "/v1beta/models/gemini-1.5-pro:streamGenerateContent",
            "/v1beta/models/gemini-1.5-pro:streamGenerateContent",
        ),
        ("/v1/models/llama3.1:8b", "/v1/models/llama3.1:8b"),
        ("/v1/embeddings", "/v1/embeddings"),
        ("/", "/"),
    ],
)
def test_route(path: str, expected: str) -> None:
    assert route(path) == expected


def _an_id(rng: random.Random) -> str:
    return "resp_" + "".join(rng.choices(string.ascii_letters, k=20)) + str(rng.randrange(10**6))


def test_a_replay_of_many_ids_is_one_group_and_keeps_each_path(tmp_path: Path) -> None:
    rng = random.Random(7)
    paths = [f"/echo/{_an_id(rng)}" for _ in range(40)] + ["/echo/plain"] * 10
    cap = write_capture(
        tmp_path / "cap",
        [http_record(start_ns=T0_NS + i * 1_000_000, path=p) for i, p in enumerate(paths)],
    )
    out = tmp_path / "run"
    port = free_port()
    final: Samples = {}
    with running_gateway(default_profile="instant") as gw:
        proc = subprocess.Popen(
            [*CLI, "replay", str(cap), "--target", gw.url, "--out", str(out), "-q",
             "--metrics-listen", f"127.0.0.1:{port}", "--metrics-linger", "20s"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and total(final, "loadtape_run_finished") != 1:
            time.sleep(0.2)
            try:
                final = scrape(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                continue
        proc.terminate()  # the linger cut short; the run is over
        _, err = proc.communicate(timeout=60)
    assert total(final, "loadtape_run_finished") == 1, err
    # the live endpoint's series are the routes too (one label set, not one per id)
    live = {lab["endpoint"]: v for lab, v in final["loadtape_latency_seconds_count"]}
    assert live == {"/echo/{id}": 40, "/echo/plain": 10}, live
    assert json.loads((out / "run.json").read_text())["counts"]["failed"] == 0
    # the results keep every path as it was sent
    sent = pq.read_table(next(out.glob("results*.parquet")), columns=["endpoint"])
    assert sorted(sent["endpoint"].to_pylist()) == sorted(paths)
    # the histograms, the report and compare's samples group them by route
    results = Results.open(out)
    report = build(results, by="endpoint")
    counts = {g["key"]["endpoint"]: g["count"] for g in report["groups"]}
    assert counts == {"/echo/{id}": 40, "/echo/plain": 10}, counts
    by_route = samples(results, ("endpoint",))
    assert {k: v["count"] for k, v in by_route.items()} == {
        ("/echo/{id}",): 40,
        ("/echo/plain",): 10,
    }
