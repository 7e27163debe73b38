"""Redaction of secrets before a record touches disk.

What is redacted (on by default):
- header values of `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`, `X-Api-Key`,
  `Api-Key` and any configured header (names matched case-insensitively);
- query parameters such as `api_key`, `key`, `token` (and configured ones);
- JSON body keys such as `api_key`, `password`, `secret`, `token` at any depth (and configured
  ones);
- `sk-...` API keys and `Bearer ...` tokens anywhere: header values, paths, queries, bodies, text.

A redacted value becomes `[REDACTED:<kind>:<hash>]`, the hash being the first 8 hex digits of an
HMAC-SHA256 keyed with a secret kept outside the capture (`~/.config/loadtape/redaction.key`,
0600), so equal secrets get equal markers (two tenants' keys stay distinguishable) and a marker
cannot be reversed or brute-forced without the key.

Bodies are redacted after undoing their content encoding and re-encoded afterwards; a body that
cannot be decoded is dropped (marked `<where>:undecodable`) rather than stored unread.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_plus

from .errors import UserError

DEFAULT_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
DEFAULT_QUERY = frozenset(
    {
        "api_key",
        "apikey",
        "api-key",
        "key",
        "token",
        "access_token",
        "auth",
        "password",
        "secret",
        "sig",
        "signature",
        "client_secret",
    }
)
DEFAULT_JSON_KEYS = frozenset(
    {
        "api_key",
        "apikey",
        "api-key",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "authorization",
        "private_key",
    }
)

# sk-..., sk-proj-..., sk-ant-...: OpenAI/Anthropic-style keys; Bearer tokens of any kind.
SECRET_PATTERNS = (
    (re.compile(r"sk-[A-Za-z0-9_\-]{16,}"), "sk"),
    (re.compile(r"(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{8,}"), "bearer"),
)
_ANY_SECRET = re.compile("|".join(f"(?:{p.pattern})" for p, _ in SECRET_PATTERNS))
_ANY_SECRET_BYTES = re.compile(_ANY_SECRET.pattern.encode())
_BYTES_PATTERNS = tuple(
    (re.compile(p.pattern.encode(), p.flags & ~re.UNICODE), k) for p, k in SECRET_PATTERNS
)
MARKER_RE = re.compile(r"\[REDACTED:[a-z_\-]+:[0-9a-f]{8}\]")

DEFAULT_KEY_FILE = Path("~/.config/loadtape/redaction.key")
_UNPARSED: Any = object()


@dataclass(frozen=True)
class RedactionPolicy:
    enabled: bool = True
    headers: frozenset[str] = DEFAULT_HEADERS
    query_params: frozenset[str] = DEFAULT_QUERY
    json_keys: frozenset[str] = DEFAULT_JSON_KEYS
    patterns: bool = True

    @classmethod
    def build(
        cls,
        *,
        enabled: bool = True,
        extra_headers: Iterable[str] = (),
        extra_query: Iterable[str] = (),
        extra_json_keys: Iterable[str] = (),
    ) -> RedactionPolicy:
        return cls(
            enabled=enabled,
            headers=DEFAULT_HEADERS | {h.strip().lower() for h in extra_headers if h.strip()},
            query_params=DEFAULT_QUERY | {q.strip().lower() for q in extra_query if q.strip()},
            json_keys=DEFAULT_JSON_KEYS | {k.strip().lower() for k in extra_json_keys if k.strip()},
        )

    def describe(self, key_fingerprint: str) -> dict[str, Any]:
        """What the capture's metadata says about redaction (never the key itself)."""
        if not self.enabled:
            return {"mode": "off"}
        return {
            "mode": "on",
            "headers": sorted(self.headers),
            "query_params": sorted(self.query_params),
            "json_keys": sorted(self.json_keys),
            "patterns": [k for _, k in SECRET_PATTERNS] if self.patterns else [],
            "marker": "[REDACTED:<kind>:<hmac-sha256 first 8 hex>]",
            "key_fingerprint": key_fingerprint,
        }


def key_path(path: str | os.PathLike[str] | None = None) -> Path:
    """Where the redaction key lives: the given path, $LOADTAPE_REDACTION_KEY_FILE, or
    ~/.config/loadtape/redaction.key."""
    chosen = path or os.environ.get("LOADTAPE_REDACTION_KEY_FILE") or DEFAULT_KEY_FILE
    return Path(chosen).expanduser().resolve()


def load_or_create_key(path: str | os.PathLike[str] | None = None) -> bytes:
    """The redaction key: created (32 random bytes, 0600, in a 0700 directory) if missing."""
    p = key_path(path)
    try:
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass
        else:
            try:
                os.write(fd, secrets.token_hex(32).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            raise UserError(
                f"{p}: redaction key must not be readable by others (mode {mode:o}; chmod 600)"
            )
        key = p.read_bytes().strip()
    except OSError as exc:
        raise UserError(f"{p}: cannot create or read the redaction key ({exc.strerror})") from None
    if len(key) < 32:
        raise UserError(f"{p}: redaction key is too short")
    return key


def key_fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"loadtape-redaction-key-id\0" + key).hexdigest()[:12]


@dataclass
class Redactor:
    policy: RedactionPolicy
    key: bytes
    _cache: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)

    def marker(self, kind: str, value: str | bytes) -> str:
        raw = value if isinstance(value, str) else value.decode("latin-1")
        ck = (kind, raw)
        m = self._cache.get(ck)
        if m is None:
            digest = hmac.new(
                self.key, raw.encode("utf-8", "surrogatepass"), hashlib.sha256
            ).hexdigest()
            m = f"[REDACTED:{kind}:{digest[:8]}]"
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[ck] = m
        return m

    # -- text -----------------------------------------------------------------------------------
    def text(self, s: str | None, where: str = "", notes: list[str] | None = None) -> str | None:
        """Replace sk-... and Bearer ... anywhere in a string."""
        if not s or not self.policy.enabled or not self.policy.patterns:
            return s
        if _ANY_SECRET.search(s) is None:  # the common case: one scan, no substitution
            return s
        out = s
        for pat, kind in SECRET_PATTERNS:
            out = pat.sub(lambda m, k=kind: self.marker(k, m.group(0)), out)  # type: ignore[misc]
        if out != s and notes is not None and where:
            notes.append(f"{where}:text")
        return out

    def headers(
        self, pairs: list[tuple[str, str]], where: str, notes: list[str]
    ) -> list[tuple[str, str]]:
        if not self.policy.enabled:
            return pairs
        out = []
        for name, value in pairs:
            lname = name.lower()
            if lname in self.policy.headers:
                scheme, sep, rest = value.partition(" ")
                if sep and scheme.lower() in ("bearer", "basic", "token", "digest") and rest:
                    value = f"{scheme} {self.marker(lname, rest)}"
                else:
                    value = self.marker(lname, value)
                notes.append(f"{where}:{lname}")
            else:
                value = self.text(value, f"{where}:{lname}", notes) or value
            out.append((name, value))
        return out

    def query(self, query: str | None, notes: list[str]) -> str | None:
        if not query or not self.policy.enabled:
            return query
        parts = []
        for item in query.split("&"):
            name, sep, value = item.partition("=")
            lname = unquote_plus(name).lower()
            if sep and lname in self.policy.query_params and value:
                value = quote(
                    self.marker(f"query-{_kindsafe(lname)}", unquote_plus(value)), safe=""
                )
                notes.append(f"query:{lname}")
            elif value:
                red = self.text(unquote_plus(value))
                if red != unquote_plus(value):
                    value = quote(red or "", safe="")
                    notes.append(f"query:{lname}:text")
            parts.append(f"{name}{sep}{value}")
        return "&".join(parts)

    # -- bodies ---------------------------------------------------------------------------------
    def body(
        self,
        body: bytes | None,
        content_encoding: str | None,
        content_type: str | None,
        where: str,
        notes: list[str],
        *,
        decoded: Decoded | None = None,
    ) -> bytes | None:
        """Redact a body as sent (re-encoded the same way); None if it cannot be inspected.

        `decoded` (from `decode_and_parse`) saves decoding and parsing a body twice."""
        if not body or not self.policy.enabled:
            return body
        enc = (content_encoding or "").strip().lower()
        d = decoded or decode_and_parse(body, content_encoding, content_type)
        if d.plain is None:
            notes.append(f"{where}:undecodable")
            return None
        plain = d.plain
        red = self.plain_body(plain, content_type, where, notes, obj=d.obj)
        if red is plain:
            return body
        if enc in ("", "identity"):
            return red
        try:
            return _encode(red, enc)
        except Exception:
            notes.append(f"{where}:undecodable")
            return None

    def plain_body(
        self,
        plain: bytes,
        content_type: str | None,
        where: str,
        notes: list[str],
        *,
        obj: Any = _UNPARSED,
    ) -> bytes:
        """Redact decoded bytes. Returns the same object when nothing changed."""
        if obj is _UNPARSED:
            obj = parse_json(plain, content_type)
        if obj is not NOT_JSON or looks_like_json(plain, content_type):
            if obj is not NOT_JSON:
                hits: list[str] = []
                new = self._walk(obj, "$", hits)
                if hits:
                    notes.extend(f"{where}:{h}" for h in hits)
                    return json.dumps(new, ensure_ascii=False, separators=(",", ":")).encode()
                return plain
            # Not parseable (e.g. cut by the body limit): redact keys textually.
            plain2 = self._json_keys_textual(plain, where, notes)
        else:
            plain2 = plain
        out = plain2
        if self.policy.patterns and _ANY_SECRET_BYTES.search(plain2) is not None:
            for pat, kind in _BYTES_PATTERNS:
                out = pat.sub(lambda m, k=kind: self.marker(k, m.group(0)).encode(), out)  # type: ignore[misc]
        if out != plain2:
            notes.append(f"{where}:text")
        return plain if out == plain else out

    def _walk(self, obj: Any, path: str, hits: list[str]) -> Any:
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if (
                    isinstance(k, str)
                    and k.lower() in self.policy.json_keys
                    and v not in (None, "")
                ):
                    raw = v if isinstance(v, str) else json.dumps(v)
                    out[k] = self.marker(f"json-{_kindsafe(k.lower())}", raw)
                    hits.append(f"{path}.{k}")
                else:
                    out[k] = self._walk(v, f"{path}.{k}", hits)
            return out
        if isinstance(obj, list):
            return [self._walk(v, f"{path}[]", hits) for v in obj]
        if isinstance(obj, str) and self.policy.patterns:
            red = self.text(obj)
            if red != obj:
                hits.append(f"{path}:text")
            return red
        return obj

    def _json_keys_textual(self, raw: bytes, where: str, notes: list[str]) -> bytes:
        keys = "|".join(re.escape(k) for k in sorted(self.policy.json_keys))
        pat = re.compile(
            rb'("(?i:' + keys.encode() + rb')"\s*:\s*)("(?:[^"\\]|\\.)*"?|[-0-9.eE+]+|true|false)'
        )

        def sub(m: re.Match[bytes]) -> bytes:
            key = m.group(1).split(b'"')[1].decode(errors="replace")
            notes.append(f"{where}:{key}")
            return m.group(1) + b'"' + self.marker("json", m.group(2)).encode() + b'"'

        return pat.sub(sub, raw)


NOT_JSON: Any = object()  # parse_json's answer for a body that is not (complete) JSON


def looks_like_json(plain: bytes, content_type: str | None) -> bool:
    return "json" in (content_type or "").lower() or plain.lstrip()[:1] in (b"{", b"[")


def parse_json(plain: bytes, content_type: str | None) -> Any:
    if not looks_like_json(plain, content_type):
        return NOT_JSON
    try:
        return json.loads(plain)
    except (ValueError, UnicodeDecodeError):
        return NOT_JSON


@dataclass
class Decoded:
    plain: bytes | None  # None: the content encoding could not be undone
    obj: Any  # the parsed JSON, or NOT_JSON


def decode_and_parse(
    body: bytes, content_encoding: str | None, content_type: str | None
) -> Decoded:
    """Undo the content encoding (gzip, deflate, br, zstd) and parse JSON, once."""
    enc = (content_encoding or "").strip().lower()
    if enc in ("", "identity"):
        plain = body
    else:
        try:
            plain = _decode(body, enc)
        except Exception:
            return Decoded(None, NOT_JSON)
    return Decoded(plain, parse_json(plain, content_type))


def _kindsafe(name: str) -> str:
    return re.sub(r"[^a-z_\-]", "-", name)[:24]


def _decode(body: bytes, enc: str) -> bytes:
    from mitmproxy.net import encoding

    out = encoding.decode(body, enc)
    assert isinstance(out, bytes)
    return out


def _encode(body: bytes, enc: str) -> bytes:
    from mitmproxy.net import encoding

    out = encoding.encode(body, enc)
    assert isinstance(out, bytes)
    return out
