"""The capture addon's options (`--set capture_...`), declared to mitmproxy's loader."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def declare(loader: Any) -> None:
    add = loader.add_option
    add("capture_dir", str | None, None, "Capture directory to write (created 0700).")
    add("capture_body_limit", str, "4m", "Keep at most this much of each body (e.g. 64k, 4m).")
    add("capture_flush_interval", str, "100ms", "fsync the journal at least this often.")
    add(
        "capture_session_key",
        str,
        "header:X-Session-Id,user,chain,connection",
        "Where a request's session key comes from, first match wins: header:NAME, user "
        "(the OpenAI user field), connection (the client connection), none.",
    )
    add("capture_include_hosts", Sequence[str], [], "Only record these hosts (globs).")
    add("capture_exclude_hosts", Sequence[str], [], "Never record these hosts (globs).")
    add("capture_include_paths", Sequence[str], [], "Only record these paths (globs).")
    add("capture_exclude_paths", Sequence[str], [], "Never record these paths (globs).")
    add("capture_methods", Sequence[str], [], "Only record these methods.")
    add("capture_redact", str, "on", "Redact secrets before writing: on or off.", ["on", "off"])
    add(
        "capture_allow_secrets",
        bool,
        False,
        "Required together with capture_redact=off: store secrets in clear text.",
    )
    add("capture_redact_headers", Sequence[str], [], "More header names to redact.")
    add("capture_redact_query", Sequence[str], [], "More query parameter names to redact.")
    add("capture_redact_json_keys", Sequence[str], [], "More JSON body keys to redact.")
    add(
        "capture_redaction_key_file",
        str | None,
        None,
        "Key for redaction markers (default ~/.config/loadtape/redaction.key, never in the "
        "capture).",
    )
    add(
        "capture_on_error",
        str,
        "continue",
        "When the capture directory cannot be written: continue (traffic flows, loss is "
        "counted and reported) or stop (shut the proxy down).",
        ["continue", "stop"],
    )
    add("capture_queue_size", int, 10_000, "Records waiting for the writer before drops.")
    add("capture_queue_bytes", str, "256m", "Bytes waiting for the writer before drops.")
    add(
        "capture_writer",
        str,
        "process",
        "Where records are built and written: process (a worker process, off the proxy's "
        "GIL) or thread (a thread inside the proxy).",
        ["process", "thread"],
    )
    add(
        "capture_compaction",
        str,
        "process",
        "With capture_writer=thread, where compaction runs.",
        ["process", "inline"],
    )
    add(
        "capture_worker_nice",
        int,
        10,
        "Niceness of the capture worker process (0-19): when the CPUs are contended the proxy "
        "and the traffic come first, the records follow (queued, within capture_queue_size); "
        "0 runs it as the proxy.",
    )
    add("capture_status_file", str | None, None, "Write live counters here (JSON).")
    add(
        "capture_stream",
        str,
        "auto",
        "Which responses to stream through with per-chunk timing: auto (SSE, unknown length, "
        "or larger than capture_stream_above) or all.",
        ["auto", "all"],
    )
    add("capture_stream_above", str, "256k", "In auto mode, stream bodies larger than this.")
    add(
        "capture_hold_headers",
        str,
        "1ms",
        "Hold a streamed response's head back until its first body bytes, at most this long, "
        "so the two reach an HTTP/1 client in one segment (0: send the head at once).",
    )
    add(
        "capture_stream_requests",
        bool,
        True,
        "Pass request bodies on to the upstream as they arrive, kept whole for the record (as "
        "stream_large_bodies does; buffering them first costs a hook's turn before the upstream "
        "sees the request). Turn off when another addon must see or change whole request "
        "bodies in its request hook.",
    )
