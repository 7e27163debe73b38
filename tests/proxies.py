"""A real capture proxy (mitmdump with the addon) for tests: private confdir and redaction key
under the test's directory, any free port."""

from __future__ import annotations

from pathlib import Path

from proxy_addons.launch import CaptureConfig, CaptureProcess


def start_proxy(
    tmp: Path,
    upstream: str | None,
    mode: str = "reverse",
    instance: str = "",
    out: Path | None = None,
    **options: str,
) -> CaptureProcess:
    cfg = CaptureConfig(
        instance=instance,
        out=out or tmp / "cap",
        upstream=upstream,
        mode=mode,
        listen_port=0,
        confdir=tmp / "mitmconf",
        options={"capture_redaction_key_file": str(tmp / "key" / "redaction.key"), **options},
    )
    return CaptureProcess(cfg).start()
