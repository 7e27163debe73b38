"""The redaction leak matrix: 57 planted secrets (tests/leak_matrix.py) and the server's own
cookies and keys, sent through a real mitmdump started by `loadtape capture` to an upstream that
echoes each request back (JSON and SSE, coded and not), then searched for in raw, URL-encoded and
base64 forms in every file of the capture (raw and decoded, the journal while it is live, the
parts after compaction), in the proxy's and the CLI's output, and after a replay in every
result, report, histogram and console output."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow.parquet as pq
from leak_matrix import SECRETS, hits, send_all

from captures import codec
from captures.redact import MARKER_RE
from replay.mock.threaded import running_gateway

LOADTAPE = [sys.executable, "-c", "import cli; cli.main()"]


def _decoded_strings(value: Any) -> list[str]:
    """Everything in a Parquet value as text, bodies with their content encoding undone."""
    if value is None:
        return []
    if isinstance(value, bytes):
        out = [value.decode("latin-1")]
        for enc in ("gzip", "deflate", "br", "zstd"):
            dec = codec.decode(value, enc)
            if dec:
                out.append(dec.decode("latin-1"))
        return out
    if isinstance(value, dict):
        return [s for v in value.values() for s in _decoded_strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _decoded_strings(v)]
    return [str(value), unquote(str(value))]  # query strings keep markers URL-encoded


def test_no_secret_survives_capture(tmp_path: Path) -> None:
    out = tmp_path / "cap"
    key_file = tmp_path / "key" / "redaction.key"
    env = {**os.environ, "LOADTAPE_REDACTION_KEY_FILE": str(key_file), "PYTHONUNBUFFERED": "1"}
    with running_gateway() as gw:
        cli_out = tmp_path / "cli.out"
        with (
            open(cli_out, "wb") as fh,
            subprocess.Popen(
                [
                    *LOADTAPE,
                    "capture",
                    "--upstream",
                    gw.url,
                    "--listen",
                    "127.0.0.1:0",
                    "--out",
                    str(out),
                    "--redact-header",
                    "X-Custom-Secret",
                    "--",
                    "--set",
                    f"confdir={tmp_path / 'mitmconf'}",
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
            ) as p,
        ):
            try:
                deadline = time.monotonic() + 30
                base = None
                while time.monotonic() < deadline and base is None:
                    for line in cli_out.read_text().splitlines():
                        if line.startswith("capture proxy listening on "):
                            base = line.split()[4]
                    time.sleep(0.1)
                assert base, cli_out.read_text()
                sent = send_all(base)
                time.sleep(0.5)  # the writer thread journals within its flush interval
                journal_copy = tmp_path / "journal-live"
                shutil.copytree(out / "journal", journal_copy)
                p.send_signal(signal.SIGTERM)
                assert p.wait(60) == 0, cli_out.read_text()
            finally:
                if p.poll() is None:
                    p.kill()
        issued = gw.gateway.issued
    secrets = dict(SECRETS)
    for i, c in enumerate(issued["cookies"]):
        secrets[f"s_cookie_{i}"] = c.split("=", 1)[1]
    for i, k in enumerate(issued["keys"]):
        secrets[f"s_key_{i}"] = k
    assert len(secrets) >= 60

    # The live journal really held the records (raw msgpack, uncompressed): search it raw.
    seg_bytes = b"".join(f.read_bytes() for f in journal_copy.glob("*.seg"))
    assert b"/v1/chat/completions" in seg_bytes and len(seg_bytes) > 2000
    assert not hits(seg_bytes.decode("latin-1"), secrets)

    files = [f for f in out.rglob("*") if f.is_file()]
    assert any(f.suffix == ".parquet" for f in files)
    for f in files:
        raw = f.read_bytes().decode("latin-1")
        assert not hits(raw, secrets), f
        if f.suffix == ".parquet":
            table = pq.read_table(f)
            text = "\n".join(s for row in table.to_pylist() for s in _decoded_strings(row))
            assert text.count("/echo/") + text.count("/v1/") >= 1
            assert not hits(text, secrets), f
    assert not hits(cli_out.read_text(), secrets)

    # Every request was kept, bodies stayed readable: a JSON body is still JSON, and it holds
    # markers where the secrets were.
    rows = [r for f in files if f.suffix == ".parquet" for r in pq.read_table(f).to_pylist()]
    assert len(rows) == sent
    markers = set()
    for r in rows:
        for s in _decoded_strings(r):
            markers.update(MARKER_RE.findall(s))
        for side in ("req", "resp"):
            body, ctype = r[f"{side}_body"], _ctype(r[f"{side}_headers"])
            if body and "json" in ctype:
                plain = codec.decode(body, r[f"{side}_content_encoding"])
                assert plain is not None and json.loads(plain) is not None, r["path"]
    assert len(markers) >= len(SECRETS), len(markers)
    chat = [r for r in rows if r["path"] == "/v1/chat/completions"]
    assert len(chat) == 2 and all(r["status"] == 200 and r["model"] == "small" for r in chat)
    assert key_file.read_bytes() not in b"".join(f.read_bytes() for f in files)
    _after_capture(out, key_file, tmp_path, secrets)


def _ctype(headers: list[tuple[str, str]] | None) -> str:
    return next((v.lower() for n, v in headers or () if n.lower() == "content-type"), "")


def _after_capture(cap: Path, key_file: Path, tmp: Path, secrets: dict[str, str]) -> None:
    """The rest of the way: inspect, replay (with a credential injected from the environment),
    every report format, compare and diff. No planted secret, nor the injected credential, in
    any file or output; capture files 0600, directories 0700, the redaction key 0600 and outside
    the capture."""
    injected = "sk-INJECTEDcredential0123456789"
    everything = {**secrets, "injected": injected}
    env = {**os.environ, "GATEWAY_KEY": injected}
    outputs: list[str] = []

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([*LOADTAPE, *args], capture_output=True, text=True, timeout=120, env=env)
        outputs.extend([p.stdout, p.stderr])
        return p

    assert run("inspect", str(cap)).returncode == 0
    assert run("inspect", str(cap), "--json").returncode == 0
    with running_gateway(default_profile="instant") as gw:
        for name in ("a", "b"):
            p = run(
                "replay",
                str(cap),
                "--target",
                gw.url,
                "--speed",
                "10",
                "-q",
                "--out",
                str(tmp / name),
                "--header",
                "Authorization: Bearer ${GATEWAY_KEY}",
            )
            assert p.returncode == 0, p.stderr
    for fmt in ("text", "json", "markdown", "html"):
        assert (
            run(
                "report", str(tmp / "a"), "--format", fmt, "--out", str(tmp / f"r.{fmt}")
            ).returncode
            == 0
        )
    assert (
        run(
            "report", str(tmp / "a"), "--hgrm", str(tmp / "hgrm"), "--hlog", str(tmp / "x.hlog")
        ).returncode
        == 0
    )
    assert run(
        "compare", str(tmp / "a"), str(tmp / "b"), "--format", "html", "--out", str(tmp / "c.html")
    ).returncode in (0, 1)
    assert run("diff", str(tmp / "a")).returncode == 0
    files = [f for d in (tmp / "a", tmp / "b", tmp / "hgrm") for f in d.rglob("*") if f.is_file()]
    files += [tmp / f"r.{fmt}" for fmt in ("text", "json", "markdown", "html")] + [
        tmp / "x.hlog",
        tmp / "c.html",
    ]
    for f in files:
        assert not hits(f.read_bytes().decode("latin-1"), everything), f
    for text in outputs:
        assert not hits(text, everything), text[:500]
    assert json.loads((tmp / "a" / "run.json").read_text())["options"]["headers"] == [
        "Authorization: <set>"
    ]
    # permissions: capture, results, reports and histograms: files 0600, directories 0700; the
    # key 0600, not in the capture
    written = [cap, *cap.rglob("*"), *files]
    for d in (tmp / "a", tmp / "b", tmp / "hgrm"):
        written += [d, *d.rglob("*")]
    for f in written:
        mode = f.stat().st_mode & 0o777
        assert mode == (0o700 if f.is_dir() else 0o600), (f, oct(mode))
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert cap not in key_file.parents
