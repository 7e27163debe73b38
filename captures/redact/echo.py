"""Echoes: a value redacted in a request, found again wherever it reappears in the exchange.

Gateways' error pages, debug endpoints and echo servers return what they were sent, encoded as
their output needs it. So every value redacted in a request is remembered with the forms it can
come back in (raw; URL-encoded with `%20` and with `+`; JSON-escaped, ASCII and not; HTML-
escaped), and each form is replaced by the same
marker wherever it occurs later in the exchange: in the response's headers and body, and in the
request's own later parts (a key sent in a header and again in the body).

A Basic credential, base64 itself, adds its decoded `user:password` and the password alone
(base64 is where a credential travels encoded; other values are not looked for as base64: a
server that encodes what it echoes that way is not one we know). Values shorter
than 4 characters are not remembered: replacing every `abc` in a body would redact the body, not
a secret.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
from urllib.parse import quote, quote_plus

MIN = 4


class Echoes:
    def __init__(self) -> None:
        self._forms: dict[bytes, str] = {}  # a form of a redacted value -> its marker
        self._ordered: list[tuple[bytes, bytes]] | None = []

    def __bool__(self) -> bool:
        return bool(self._forms)

    def add(self, value: str | bytes, marker: str) -> None:
        raw = value if isinstance(value, str) else value.decode("utf-8", "replace")
        if len(raw) < MIN or raw.startswith("[REDACTED:"):
            return
        for form in forms(raw):
            if len(form) >= MIN:
                self._forms.setdefault(form.encode("utf-8", "surrogatepass"), marker)
        self._ordered = None

    def add_basic(self, credential: str, marker: str) -> None:
        """A Basic credential: the base64 itself, `user:password` and the password."""
        self.add(credential, marker)
        try:
            plain = base64.b64decode(credential.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return
        self.add(plain, marker)
        _, sep, password = plain.partition(":")
        if sep:
            self.add(password, marker)

    def _order(self) -> list[tuple[bytes, bytes]]:
        if self._ordered is None:  # longest first, so a form inside a longer one goes with it
            self._ordered = sorted(
                ((f, m.encode()) for f, m in self._forms.items()), key=lambda t: -len(t[0])
            )
        return self._ordered

    def replace(self, data: bytes) -> bytes:
        """`data` with every remembered form replaced by its marker."""
        for form, marker in self._order():
            if form in data:
                data = data.replace(form, marker)
        return data

    def replace_text(self, text: str) -> str:
        if not self._forms:
            return text
        data = text.encode("utf-8", "surrogatepass")
        out = self.replace(data)
        return text if out is data else out.decode("utf-8", "surrogatepass")


def forms(value: str) -> set[str]:
    return {
        value,
        quote(value, safe=""),
        quote(value, safe="/:"),
        quote_plus(value, safe=""),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        html.escape(value),
    }
