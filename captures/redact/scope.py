"""One exchange's redaction: every part of it, request and response, under one policy.

A `Scope` is made per exchange (`Redactor.exchange()`). It replaces secrets with markers and
remembers each value it replaced (echo.py), so that the value is replaced wherever it reappears
later in the exchange. The record builder redacts the request first (headers, path, query,
body), then the response (headers, body, the fields read from it), and keeps the notes of what
was redacted where.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .. import codec
from . import formats, keywords, parts
from .echo import Echoes

if TYPE_CHECKING:
    from .policy import RedactionPolicy, Redactor

_MARKER = re.compile(rb"\[REDACTED:[a-z_\-]+:[0-9a-f]{8}\]")
CLEAN_LEN = 256  # texts up to this long are remembered when they hold no secret
CLEAN_COUNT = 8192  # and up to this many (then forgotten, all at once)


class Scope:
    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.policy: RedactionPolicy = redactor.policy
        self.echoes = Echoes()
        self.notes: list[str] = []
        self.kinds: dict[str, int] = {}  # secrets found in this exchange, by kind
        self.on = self.policy.enabled

    def note(self, what: str) -> None:
        self.notes.append(what)

    def secret(self, kind: str, value: str | bytes) -> str:
        """The marker for a secret value, remembered for its echoes."""
        marker = self.redactor.marker(kind, value)
        self.echoes.add(value, marker)
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        return marker

    # -- text -----------------------------------------------------------------------------------
    def text(self, s: str | None, where: str = "") -> str | None:
        """A string with its echoes, credential formats and credential assignments replaced."""
        if not s or not self.on:
            return s
        out = self.echoes.replace_text(s) if self.echoes else s
        clean = self.redactor.clean
        if out is s:
            if s in clean:  # read before, no secret in it (the policy is the redactor's)
                return s
        elif where:
            self.note(f"{where}:echo")
        found = self._spans(out.encode("ascii", "replace"))
        if not found:
            if out is s and len(s) <= CLEAN_LEN:
                if len(clean) >= CLEAN_COUNT:
                    clean.clear()
                clean.add(s)
            return out
        pieces, last = [], 0
        for start, end, kind in found:
            pieces += [out[last:start], self.secret(kind, out[start:end])]
            last = end
        pieces.append(out[last:])
        if where:
            self.note(f"{where}:text")
        return "".join(pieces)

    def data(self, b: bytes, where: str = "") -> bytes:
        """Bytes as `text` treats a string (the same object back when nothing changed)."""
        if not b or not self.on:
            return b
        out = self.echoes.replace(b) if self.echoes else b
        if out is not b and where:
            self.note(f"{where}:echo")
        found = self._spans(out)
        if not found:
            return out
        pieces, last = [], 0
        for start, end, kind in found:
            pieces += [out[last:start], self.secret(kind, out[start:end]).encode()]
            last = end
        pieces.append(out[last:])
        if where:
            self.note(f"{where}:text")
        return b"".join(pieces)

    def _spans(self, b: bytes) -> list[formats.Span]:
        if len(b) < 8:  # no format, and no `name=value` with a 4-character value, is shorter
            return []
        found = formats.spans(b) if self.policy.patterns else []
        found += keywords.assignments(b, extra=self.policy.json_keys)
        if not found:
            return found
        if b"[REDACTED:" in b:  # nothing inside a marker is a secret (`authorization:1a2b3c4d`)
            taken = [m.span() for m in _MARKER.finditer(b)]
            found = [f for f in found if not any(s <= f[0] < e for s, e in taken)]
        return formats.merged(found)

    # -- the parts of an exchange -----------------------------------------------------------------
    def headers(self, pairs: list[tuple[str, str]], where: str) -> list[tuple[str, str]]:
        if not self.on:
            return pairs
        return [(n, parts.header_value(self, n, v, where)) for n, v in pairs]

    def query(self, query: str | None) -> str | None:
        if not query or not self.on:
            return query
        return parts.params(self, query, "query")

    def body(
        self,
        body: bytes | None,
        content_encoding: str | None,
        content_type: str | None,
        where: str,
        *,
        decoded: codec.Decoded | None = None,
    ) -> bytes | None:
        """A body redacted and coded as it was sent; None if it could not be read (a body that
        cannot be inspected is not stored)."""
        if not body or not self.on:
            return body
        plain = decoded.plain if decoded is not None else codec.decode(body, content_encoding)
        if plain is None:
            self.note(f"{where}:undecodable")
            return None
        ctype = (content_type or "").lower()
        if "x-www-form-urlencoded" in ctype:
            text = plain.decode("latin-1")
            red_text = parts.params(self, text, where, prefix="form-")
            red = plain if red_text == text else red_text.encode("latin-1")
        elif "multipart/" in ctype:
            red = parts.multipart(self, plain, content_type or "", where)
        else:
            red = self.data(plain, where)
        if red == plain:
            return body
        if not codec.codings(content_encoding):
            return red
        try:
            return codec.encode(red, content_encoding)
        except ValueError:
            self.note(f"{where}:undecodable")
            return None
