"""`loadtape import FORMAT FILE --out CAPTURE`: what users already have, as capture v1.

| format | input | what a row becomes |
|---|---|---|
| har | HAR 1.2 JSON (browsers, mitmproxy, Charles) | the real request and response, timings |
| mitmproxy | a mitmproxy flow file (`mitmdump -w`) | the real request and response, timings |
| azure | Azure LLM inference trace CSV (2023, 2024 editions) | a chat request, that many tokens |
| mooncake | Mooncake trace JSONL (ms timestamps, `hash_ids`) | a chat request sharing prefixes |
| burstgpt | BurstGPT CSV (v1 or v3 columns) | a chat request of that many tokens |
| sharegpt | ShareGPT JSON, with an arrival process | first user turns at synthetic times |

Real traffic (har, mitmproxy) goes through the same redaction and field parsing as a live
capture. Trace rows carry token counts, not text: the prompt is filler of about that many tokens
(see captures/filler.py for how tokens are counted) and `max_tokens` is the output length; the
recorded prompt/completion token counts are the trace's. Timestamps keep their exact spacing,
many requests in the same millisecond included; traces with relative times start at
2025-01-01T00:00:00Z.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captures.errors import UserError
from captures.filler import filler
from captures.schema import Record
from captures.writer import CaptureWriter

BASE_NS = 1_735_689_600 * 1_000_000_000  # 2025-01-01T00:00:00Z, for traces with relative times
TRACE_HOST = "trace.invalid"
FORMATS = ("har", "mitmproxy", "azure", "mooncake", "burstgpt", "sharegpt")


@dataclass
class ImportOptions:
    limit: int | None = None  # first N rows
    model: str | None = None  # model name for traces without one
    stream: bool = True  # trace requests ask for streamed answers
    seed: int = 0
    arrival: str | None = None  # sharegpt: e.g. "poisson:rate=5"
    duration_s: float | None = None  # sharegpt: how long the arrival process runs
    output_tokens: str | None = None  # sharegpt: distribution of max_tokens
    redact: bool = True  # har, mitmproxy
    key_file: str | None = None
    progress: Callable[[int], None] | None = None  # called with the records written so far


@dataclass
class ImportSummary:
    records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # rows left out, by reason
    noted: dict[str, int] = field(default_factory=dict)  # rows kept with a remark, by remark

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def note(self, remark: str) -> None:
        self.noted[remark] = self.noted.get(remark, 0) + 1


def trace_request(
    start_ns: int,
    prompt: str,
    prompt_tokens: int,
    output_tokens: int,
    *,
    model: str,
    stream: bool,
    session: str | None = None,
) -> Record:
    """A chat-completion request standing for one trace row."""
    body_obj: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": output_tokens,
        "stream": stream,
    }
    if stream:
        body_obj["stream_options"] = {"include_usage": True}
    body = json.dumps(body_obj).encode()
    return {
        "req_start_ns": start_ns,
        "method": "POST",
        "scheme": "http",
        "host": TRACE_HOST,
        "port": 0,
        "path": "/v1/chat/completions",
        "http_version": "HTTP/1.1",
        "req_headers": [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        "req_body": body,
        "req_body_size": len(body),
        "session_key": session,
        "model": model,
        "stream": stream,
        "max_tokens": output_tokens,
        "message_count": 1,
        "prompt_chars": len(prompt),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": output_tokens,
    }


def _records(fmt: str, path: Path, opts: ImportOptions, summary: ImportSummary) -> Iterator[Record]:
    if fmt == "azure":
        from .traces import azure_rows

        return azure_rows(path, opts, summary)
    if fmt == "mooncake":
        from .traces import mooncake_rows

        return mooncake_rows(path, opts, summary)
    if fmt == "burstgpt":
        from .traces import burstgpt_rows

        return burstgpt_rows(path, opts, summary)
    if fmt == "sharegpt":
        from .traces import sharegpt_rows

        return sharegpt_rows(path, opts, summary)
    if fmt == "har":
        from .traffic import har_rows

        return har_rows(path, opts, summary)
    if fmt == "mitmproxy":
        from .traffic import flow_rows

        return flow_rows(path, opts, summary)
    raise UserError(f"unknown import format {fmt!r} (want {', '.join(FORMATS)})")


def import_file(
    fmt: str, source: str | Path, out: str | Path, opts: ImportOptions | None = None
) -> ImportSummary:
    """Read FILE in FORMAT and write its rows into the capture directory OUT."""
    opts = opts or ImportOptions()
    path = Path(source)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    summary = ImportSummary()
    try:
        return _import(fmt, path, out, opts, summary)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        # what a format's own checks did not foresee in a malformed file: one line naming it
        raise UserError(
            f"{path}: not a readable {fmt} file ({type(exc).__name__}: {exc})"[:300]
        ) from None


def _import(
    fmt: str, path: Path, out: str | Path, opts: ImportOptions, summary: ImportSummary
) -> ImportSummary:
    rows = _records(fmt, path, opts, summary)
    redaction = {"mode": "import", "format": fmt, "source": path.name}
    with CaptureWriter(out, redaction=redaction) as writer:
        batch: list[Record] = []
        for rec in rows:
            batch.append(rec)
            if len(batch) >= 512:
                writer.append_many(batch)
                summary.records += len(batch)
                batch = []
                if opts.progress is not None:
                    opts.progress(summary.records)
            if opts.limit is not None and summary.records + len(batch) >= opts.limit:
                break
        if batch:
            writer.append_many(batch)
            summary.records += len(batch)
    if summary.records == 0:
        raise UserError(f"{path}: no {fmt} rows found")
    return summary


def block_text(block_id: int, tokens: int = 512) -> str:
    """The deterministic text of one 512-token prefix block (Mooncake hash_ids)."""
    return filler(tokens, random.Random(block_id * 2_654_435_761 % (2**32)))


def trace_lengths(path: Path, which: str) -> list[int]:
    """Prompt or output token counts of a trace file (for `empirical:` distributions)."""
    from .traces import lengths

    return lengths(path, which)
