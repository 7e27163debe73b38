"""`loadtape anonymize CAPTURE --out CAPTURE2`: a capture that replays like the original and can
be shared.

- Text in request and response bodies (prompts, completions, any JSON string that is not
  structure: model, role, type, object, finish_reason) becomes filler of about the same token
  count; SSE streams keep their events, one filler token per content token; plain text bodies
  keep their length; binary bodies become zero bytes of the same length.
- Identifiers become keyed hashes under a random key made for this anonymization and thrown away
  (so two anonymizations of one capture cannot be linked): the OpenAI `user` field, session keys,
  connection ids, `id` fields, query parameter values, and every header value except a short list
  of harmless ones (content type and encoding, accept, lengths, connection management).
- Structure, timing (all timestamps and chunk offsets), status, sizes (approximately), models and
  token usage are kept, so the result replays like the original.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from . import codec, protocols
from .errors import UserError
from .filler import filler, token_count
from .protocols.base import event_data, event_name, split_events
from .reader import Capture
from .schema import Headers, Record
from .writer import CaptureWriter

KEEP_KEYS = frozenset(
    {"model", "role", "type", "object", "finish_reason", "stop_reason", "status", "encoding_format"}
)
# end users and sessions, hashed under their own kind
USER_KEYS = frozenset({"user", "user_id", "session_id", "safety_identifier", "prompt_cache_key"})
# ids that link requests (a response and the previous_response_id naming it, a tool call and its
# result): hashed under one kind, so the links survive
LINK_KEYS = frozenset(
    {
        "id",
        "previous_response_id",
        "conversation_id",
        "call_id",
        "tool_call_id",
        "tool_use_id",
        "item_id",
    }
)
SAFE_HEADERS = frozenset(
    {
        "content-type",
        "content-encoding",
        "content-length",
        "accept",
        "accept-encoding",
        "connection",
        "transfer-encoding",
        "cache-control",
        "host",
        "te",
        "keep-alive",
    }
)


@dataclass
class Anonymizer:
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    rng: random.Random = field(default_factory=lambda: random.Random(secrets.randbits(64)))

    def ident(self, value: str, kind: str = "id") -> str:
        digest = hmac.new(
            self.key, value.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).hexdigest()
        return f"anon-{kind}-{digest[:12]}"

    def text(self, s: str) -> str:
        return filler(max(token_count(s), 1), self.rng) if s.strip() else s

    # -- JSON ----------------------------------------------------------------------------------
    def json_value(self, node: Any, key: str | None = None) -> Any:
        if isinstance(node, dict):
            return {k: self.json_value(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [self.json_value(v, key) for v in node]
        if isinstance(node, str):
            if key in KEEP_KEYS:
                return node
            if key in USER_KEYS:
                return self.ident(node, key)
            if key in LINK_KEYS:
                return self.ident(node, "id")
            return self.text(node)
        return node

    # -- bodies ----------------------------------------------------------------------------------
    def body(self, raw: bytes | None, encoding: str | None, ctype: str | None) -> bytes | None:
        if not raw:
            return raw
        plain = protocols.decode_body(raw, encoding)
        if plain is None:
            return bytes(len(raw))  # cannot read it, cannot keep it
        ctype = (ctype or "").lower()
        if "event-stream" in ctype or plain.startswith(b"data:"):
            out = self._sse(plain)
        elif "json" in ctype or plain.lstrip()[:1] in (b"{", b"["):
            try:
                out = json.dumps(self.json_value(json.loads(plain)), separators=(",", ":")).encode()
            except (ValueError, UnicodeDecodeError):
                out = self._plain(plain)
        else:
            out = self._plain(plain)
        return codec.encode(out, encoding)  # coded again as it came, whatever the coding

    def _plain(self, plain: bytes) -> bytes:
        try:
            text = plain.decode("utf-8")
        except UnicodeDecodeError:
            return bytes(len(plain))
        filler = self.text(text).encode()
        return (filler * (len(plain) // max(len(filler), 1) + 1))[: len(plain)] if filler else b""

    def _sse(self, plain: bytes) -> bytes:
        """Each event's data anonymized; its `event:` name (Responses, Anthropic) kept."""
        out = []
        for raw in split_events(plain):
            name = event_name(raw).decode("utf-8", "replace")
            data = event_data(raw).decode("utf-8", "replace")
            head = f"event: {name}\n" if name else ""
            if data.strip() == "[DONE]":
                out.append("data: [DONE]\n\n")
                continue
            try:
                obj = json.loads(data)
            except ValueError:
                out.append(f"{head}data: {self.text(data)}\n\n")
                continue
            body = json.dumps(self.json_value(obj), separators=(",", ":"))
            out.append(f"{head}data: {body}\n\n")
        return "".join(out).encode()

    # -- headers, query ----------------------------------------------------------------------------
    def headers(self, pairs: Headers | None, body_len: int | None) -> Headers | None:
        if pairs is None:
            return None
        out = []
        for name, value in pairs:
            lname = name.lower()
            if lname == "content-length" and body_len is not None:
                out.append((name, str(body_len)))
            elif lname in SAFE_HEADERS or value.startswith("[REDACTED:"):
                out.append((name, value))
            else:
                out.append((name, self.ident(value, "h")))
        return out

    def query(self, q: str | None) -> str | None:
        if not q:
            return q
        return urlencode([(k, self.ident(v, "q")) for k, v in parse_qsl(q, keep_blank_values=True)])

    # -- records -----------------------------------------------------------------------------------
    def record(self, r: Record) -> Record:
        out = dict(r)
        for col in ("capture_id", "writer_id", "seq"):
            out.pop(col, None)
        req_ct = _get(r["req_headers"], "content-type")
        out["req_body"] = self.body(r.get("req_body"), r.get("req_content_encoding"), req_ct)
        resp_ct = _get(r.get("resp_headers"), "content-type")
        out["resp_body"] = self.body(r.get("resp_body"), r.get("resp_content_encoding"), resp_ct)
        out["req_headers"] = self.headers(r["req_headers"], len(out["req_body"] or b""))
        out["resp_headers"] = self.headers(r.get("resp_headers"), None)
        out["query"] = self.query(r.get("query"))
        for col in ("session_key", "user", "conn_id"):
            if r.get(col):
                out[col] = self.ident(str(r[col]), col)
        if r.get("error_message"):
            out["error_message"] = (
                f"({r.get('error_kind') or 'error'}; message removed by anonymize)"
            )
        out["req_body_size"] = len(out["req_body"] or b"")
        if out.get("resp_body") is not None:
            out["resp_body_size"] = len(out["resp_body"])
        _, fields = protocols.parse_request(
            r.get("path") or "", out["req_body"], r.get("req_content_encoding")
        )
        if fields.prompt_chars is not None:
            out["prompt_chars"] = fields.prompt_chars
        return out


def _get(headers: Headers | None, name: str) -> str | None:
    for n, v in headers or ():
        if n.lower() == name:
            return v
    return None


@dataclass
class AnonymizeSummary:
    records: int


def anonymize(
    source: str | Path, out: str | Path, *, progress: Callable[[int], None] | None = None
) -> AnonymizeSummary:
    cap = Capture(source)
    dest = Path(out)
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"{dest}: exists and is not empty (anonymize writes a new capture)")
    anon = Anonymizer()
    n = 0
    meta = {"mode": "anonymized", "from_capture": anon.ident(cap.capture_id or "", "capture")}
    with CaptureWriter(dest, redaction=meta) as w:
        batch = []
        for row in cap.rows():
            batch.append(anon.record(row))
            if len(batch) >= 256:
                w.append_many(batch)
                n += len(batch)
                batch = []
                if progress:
                    progress(n)
        if batch:
            w.append_many(batch)
            n += len(batch)
    return AnonymizeSummary(n)
