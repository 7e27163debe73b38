"""Redaction leak test: secrets planted everywhere, captured through a real mitmdump started by
`loadtape capture`, then searched for in every file of the capture (raw and decoded, the journal
while it is live, the parts after compaction) and in the proxy's and the CLI's output."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow.parquet as pq

from captures.protocols import decode_body
from captures.redact import MARKER_RE
from replay.mock.threaded import running_gateway

SECRETS = {
    "auth_lower": "sk-LEAKauthlower0000000000000",
    "auth_upper": "LEAKauthupperplainvalue001",
    "x_api_key": "LEAKxapikey0000plain",
    "api_key_hdr": "LEAKapikeyheader0000",
    "cookie": "LEAKcookievalue00000",
    "proxy_auth": "LEAKproxyauth0000000",
    "custom": "LEAKcustomheader0000",
    "q_api_key": "LEAKqueryapikey00000",
    "q_token": "LEAKquerytoken000000",
    "q_key": "LEAKquerykey00000000",
    "json_deep": "LEAKjsondeep00000000",
    "json_password": "LEAKjsonpassword0000",
    "prompt_sk": "sk-LEAKpromptsk00000000000000",
    "prompt_bearer": "LEAKpromptbearer000000",
}

LOADTAPE = [sys.executable, "-c", "import cli; cli.main()"]


def _req(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return bytes(r.read())


def _send_everything(base: str) -> None:
    S = SECRETS
    plain = f"{base}/echo/x?size=10"
    _req(plain, headers={"authorization": f"Bearer {S['auth_lower']}"})
    _req(plain, headers={"AUTHORIZATION": S["auth_upper"]})
    _req(plain, headers={"x-API-key": S["x_api_key"]})
    _req(plain, headers={"Api-Key": S["api_key_hdr"]})
    _req(plain, headers={"Cookie": f"session={S['cookie']}; other=1"})
    _req(plain, headers={"Proxy-Authorization": f"Basic {S['proxy_auth']}"})
    _req(plain, headers={"X-Custom-Secret": S["custom"]})
    _req(f"{base}/echo/q?size=1&api_key={S['q_api_key']}&Token={S['q_token']}&key={S['q_key']}")
    _req(f"{base}/echo/c?size=1&set_cookie=1")
    body = {
        "model": "small",
        "max_tokens": 2,
        "config": {"deep": [{"nested": {"API_KEY": S["json_deep"]}}]},
        "password": S["json_password"],
        "messages": [
            {
                "role": "user",
                "content": f"key {S['prompt_sk']} and token Bearer {S['prompt_bearer']}",
            }
        ],
    }
    for stream in (False, True):
        _req(
            f"{base}/v1/chat/completions",
            json.dumps({**body, "stream": stream}).encode(),
            {"Content-Type": "application/json"},
        )


def _decoded_strings(value: Any) -> list[str]:
    """Everything in a Parquet value as text, bodies with their content encoding undone."""
    if value is None:
        return []
    if isinstance(value, bytes):
        out = [value.decode("latin-1")]
        for enc in ("gzip", "deflate"):
            dec = decode_body(value, enc)
            if dec:
                out.append(dec.decode("latin-1"))
        return out
    if isinstance(value, dict):
        return [s for v in value.values() for s in _decoded_strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _decoded_strings(v)]
    return [str(value), unquote(str(value))]  # query strings keep markers URL-encoded


def _hits(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, s in secrets.items() if s in text]


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
                _send_everything(base)
                time.sleep(0.5)  # the writer thread journals within its flush interval
                journal_copy = tmp_path / "journal-live"
                shutil.copytree(out / "journal", journal_copy)
                p.send_signal(signal.SIGTERM)
                assert p.wait(60) == 0, cli_out.read_text()
            finally:
                if p.poll() is None:
                    p.kill()
        cookie = gw.gateway.cookies_issued
    secrets = {**SECRETS, "set_cookie": cookie[0].split("=", 1)[1]}

    # The live journal really held the records (raw msgpack, uncompressed): search it raw.
    seg_bytes = b"".join(f.read_bytes() for f in journal_copy.glob("*.seg"))
    assert b"/v1/chat/completions" in seg_bytes and len(seg_bytes) > 2000
    assert not _hits(seg_bytes.decode("latin-1"), secrets)

    files = [f for f in out.rglob("*") if f.is_file()]
    assert any(f.suffix == ".parquet" for f in files)
    for f in files:
        raw = f.read_bytes().decode("latin-1")
        assert not _hits(raw, secrets), f
        if f.suffix == ".parquet":
            table = pq.read_table(f)
            text = "\n".join(s for row in table.to_pylist() for s in _decoded_strings(row))
            assert text.count("/echo/") + text.count("/v1/") >= 1
            assert not _hits(text, secrets), f
    assert not _hits(cli_out.read_text(), secrets)

    # Every planted secret became a marker; the capture kept 11 requests.
    rows = [r for f in files if f.suffix == ".parquet" for r in pq.read_table(f).to_pylist()]
    assert len(rows) == 11
    markers = set()
    for r in rows:
        for s in _decoded_strings(r):
            markers.update(MARKER_RE.findall(s))
    # One distinct marker per distinct secret (the streamed and plain chat share theirs).
    assert len(markers) == len(secrets), sorted(markers)
    assert key_file.read_bytes() not in b"".join(f.read_bytes() for f in files)
    _after_capture(out, key_file, tmp_path, secrets)


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
        assert not _hits(f.read_bytes().decode("latin-1"), everything), f
    for text in outputs:
        assert not _hits(text, everything), text[:500]
    assert json.loads((tmp / "a" / "run.json").read_text())["options"]["headers"] == [
        "Authorization: <set>"
    ]
    # permissions: capture files 0600, directories 0700; the key 0600, not in the capture
    for f in [cap, *cap.rglob("*")]:
        mode = f.stat().st_mode & 0o777
        assert mode == (0o700 if f.is_dir() else 0o600), (f, oct(mode))
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert cap not in key_file.parents
