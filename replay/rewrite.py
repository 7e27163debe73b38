"""Rewrite: a recorded request made ready for the target.

- The target is always given (`--target`): a replay never goes to the host found in the capture.
- Hop-by-hop headers are dropped, `Host` is the target's (or the recorded one with keep_host),
  `Content-Length` is recomputed.
- Redacted values are never sent as they are: a header, query parameter or JSON field whose value
  is a redaction marker is dropped (set the header yourself: `--header 'Authorization: Bearer
  ${GATEWAY_KEY}'`). Markers inside free text (a prompt that contained a key) stay: they are data.
- `--header 'Name: value'` sets (replaces) a header, with ${VAR} expanded from the environment
  once at start; `--header 'Name:'` removes one; `--model-map old=new` rewrites the body's model.

The result is a `Prepared` request whose HTTP/1.1 bytes are built once, before the run, so the
send path only writes them.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from captures import codec, protocols
from captures.markers import MARKER_RE
from captures.protocols import PLAIN, Surface
from captures.schema import Headers

from .plan import Shot
from .planrows import Request
from .targets import Target

HEADER_CACHE = 4096  # distinct recorded header lists kept prepared (per target's rewriter)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "content-length",
        "host",
        "expect",
    }
)
_QUOTED_MARKER = re.compile(r"%5BREDACTED%3A", re.I)
_QUERY_SEP = re.compile(r"([&;])")


@dataclass(slots=True)
class Prepared:
    method: str
    target: Target
    path: str  # with query
    headers: Headers
    body: bytes
    raw: bytes  # the whole HTTP/1.1 request
    model: str | None
    stream: bool
    surface: Surface = PLAIN  # the API surface: how its response is read
    refs: tuple[str, ...] = ()  # server-minted ids the body names (a stateful replay maps them)

    @property
    def url(self) -> str:
        return f"{self.target.scheme}://{self.target.host_header}{self.path}"


class Rewriter:
    def __init__(
        self,
        target: Target,
        *,
        set_headers: Sequence[tuple[str, str]] = (),
        remove_headers: set[str] | frozenset[str] = frozenset(),
        model_map: Mapping[str, str] | None = None,
        keep_host: bool = False,
    ) -> None:
        self.target = target
        self.set_headers = list(set_headers)
        self._set_names = {n.lower() for n, _ in set_headers}
        self.remove = set(remove_headers) | self._set_names
        self.model_map = dict(model_map or {})
        self.keep_host = keep_host
        self.dropped_redacted = 0  # redacted values left out, for the run's report
        self._head_cache: dict[Any, tuple[Headers, str | None, int, str]] = {}

    def prepare(self, req: Request, extra: Mapping[str, Any] | None = None) -> Prepared:
        """The request for the target. `extra` (from amplification): `copy` (k: the end user's
        id becomes `<user>~c<k>`) and `salt` (a nonce prefixed to the prompt), each where the
        request's API surface keeps them."""
        body = req.body or b""
        model = req.model
        surface = self._surface(req)
        refs: tuple[str, ...] = ()
        if body and (
            self.model_map
            or b"[REDACTED:" in body
            or extra
            or (surface is PLAIN and req.method.upper() == "POST" and body[:1] == b"{")
            or any(k in body for k in _ID_KEYS)
        ):
            body, model, surface, refs = self._rewrite_body(body, req, model, surface, extra)
        kept, recorded_host, dropped, block = self._headers(req.headers)
        self.dropped_redacted += dropped
        host = recorded_host if self.keep_host and recorded_host else self.target.host_header
        headers: Headers = [("Host", host), *kept, *self.set_headers]
        head_end = "\r\n"
        if body or req.method.upper() in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Length", str(len(body))))
            head_end = f"Content-Length: {len(body)}\r\n\r\n"
        path = self.target.base_path + (req.path if req.path.startswith("/") else "/" + req.path)
        query = self._query(req.query)
        if query:
            path = f"{path}?{query}"
        head = f"{req.method} {path} HTTP/1.1\r\nHost: {host}\r\n{block}{head_end}"
        raw = head.encode("utf-8") + body
        return Prepared(
            req.method,
            self.target,
            path,
            headers,
            body,
            raw,
            model,
            bool(req.stream),
            surface,
            refs,
        )

    def _headers(self, recorded: Headers) -> tuple[Headers, str | None, int, str]:
        """The recorded headers this target gets (hop-by-hop, removed and redacted ones left
        out), the recorded Host, how many redacted ones were left out, and the kept and set
        headers as request lines. Once per distinct header list: a capture's clients send the
        same few (an SDK's 15 headers cost ~10 us a request, each lowered and searched)."""
        try:
            key: Any = tuple(recorded)
            hit = self._head_cache.get(key)
        except TypeError:  # unhashable values: not cached
            key, hit = None, None
        if hit is not None:
            return hit
        kept: Headers = []
        host, dropped = None, 0
        for name, value in recorded:
            lname = name.lower()
            if lname == "host":
                host = value
            if lname in HOP_BY_HOP or lname in self.remove:
                continue
            if MARKER_RE.search(value):
                dropped += 1
                continue
            kept.append((name, value))
        block = "".join(f"{n}: {v}\r\n" for n, v in (*kept, *self.set_headers))
        hit = (kept, host, dropped, block)
        if key is not None and len(self._head_cache) < HEADER_CACHE:
            self._head_cache[key] = hit
        return hit

    @staticmethod
    def _surface(req: Request) -> Surface:
        """The surface recorded with the request, else the one its path names (else its body's,
        read in _rewrite_body)."""
        if req.api:
            return protocols.BY_NAME.get(req.api, PLAIN)
        return protocols.detect(req.path)

    def _query(self, query: str | None) -> str | None:
        if not query or "REDACTED" not in query:
            return query
        out: list[str] = []  # items and the separators (`&` or `;`) before them
        for item in _QUERY_SEP.split(query):
            if item in ("&", ";"):
                out.append(item)
            elif _QUOTED_MARKER.search(item) or "[REDACTED:" in item:
                self.dropped_redacted += 1
                if out:
                    out.pop()  # its separator goes with it
            else:
                out.append(item)
        return "".join(out).lstrip("&;")

    def _rewrite_body(
        self,
        body: bytes,
        req: Request,
        model: str | None,
        surface: Surface,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[bytes, str | None, Surface, tuple[str, ...]]:
        enc = req.content_encoding
        plain = codec.decode(body, enc)
        if plain is None:
            return body, model, surface, ()
        try:
            obj = json.loads(plain)
        except (ValueError, RecursionError):
            return body, model, surface, ()
        if not isinstance(obj, dict):
            return body, model, surface, ()
        if surface is PLAIN:  # a gateway's own path: the body's shape may say which API it is
            anthropic = any(n.lower() == "anthropic-version" for n, _ in req.headers)
            surface = protocols.detect(req.path, obj, anthropic=anthropic)
        refs = tuple(dict.fromkeys(surface.referenced_ids(obj)))
        changed = self._drop_markers(obj)
        old = obj.get("model")
        if (
            isinstance(old, str)
            and old in self.model_map
            and surface.set_model(obj, self.model_map[old])
        ):
            model = self.model_map[old]
            changed = True
        if extra:
            copy, salt = extra.get("copy"), extra.get("salt")
            if copy:
                changed |= surface.copy_user(obj, int(copy))
            if salt:
                changed |= surface.salt(obj, str(salt))
        if not changed:
            return body, model, surface, refs
        return _encoded(obj, enc), model, surface, refs

    def _drop_markers(self, obj: Any) -> bool:
        """Remove JSON fields whose whole value is a redaction marker (a key we do not have)."""
        changed = False
        if isinstance(obj, dict):
            for k in list(obj):
                v = obj[k]
                if isinstance(v, str) and MARKER_RE.fullmatch(v):
                    del obj[k]
                    self.dropped_redacted += 1
                    changed = True
                else:
                    changed |= self._drop_markers(v)
        elif isinstance(obj, list):
            for v in obj:
                changed |= self._drop_markers(v)
        return changed


# keys of server-minted ids a request can name (previous_response_id, tool-call ids)
_ID_KEYS = (
    b'"previous_response_id"',
    b'"tool_call_id"',
    b'"call_id"',
    b'"tool_use_id"',
    b'"tool_calls"',
)


def _encoded(obj: Any, enc: str | None) -> bytes:
    """The edited body, coded as the recorded one was (gzip, deflate, br, zstd)."""
    return codec.encode(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode(), enc)


def rebuilt(p: Prepared, body: bytes) -> Prepared:
    """A prepared request with another body (its Content-Length and raw bytes made anew)."""
    headers = [
        (n, str(len(body))) if n.lower() == "content-length" else (n, v) for n, v in p.headers
    ]
    head = f"{p.method} {p.path} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    raw = head.encode("utf-8") + b"\r\n" + body
    return replace(p, headers=headers, body=body, raw=raw)


# The prepared requests kept for a repeat (a loop of the capture): at most so many, holding
# at most so many bytes. Counted by bytes too: a capture of distinct requests never repeats
# within the cache (a loop longer than the cache misses every time), and replaying 10k POSTs
# of 50 KB peaked at 1.2 GB with all of them kept, 0.87 GB with a cache of 16.
CACHE_REQUESTS = 16_384
CACHE_BYTES = 32 << 20


def cached_prepare(
    rewriter: Rewriter, maxsize: int = CACHE_REQUESTS, max_bytes: int = CACHE_BYTES
) -> Callable[[Shot], Prepared]:
    """Prepare each distinct recorded request once (loops and repeats reuse it)."""
    # An OrderedDict: a plain dict's oldest key is found by skipping every key deleted before
    # it (until the next resize), which made each eviction cost ~10 us at this size.
    cache: OrderedDict[tuple[tuple[str, int], int], Prepared] = OrderedDict()
    held = 0

    def prepare(shot: Shot) -> Prepared:
        nonlocal held
        if shot.source is None or shot.extra.get("salt"):
            return rewriter.prepare(shot.request, shot.extra)
        key = (shot.source, shot.copy)
        p = cache.get(key)
        if p is None:
            p = rewriter.prepare(shot.request, shot.extra)
            held += len(p.raw)
            cache[key] = p
            while len(cache) > maxsize or held > max_bytes:
                held -= len(cache.popitem(last=False)[1].raw)
        return p

    return prepare
