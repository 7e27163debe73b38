"""Credentials named in text: `password: hunter2`, `api_key=...`, `"client_secret": "..."`.

The same rule as for header, parameter and JSON key names (names.py) applied to every
`<name> <: or = or =>> <value>` in text: a prompt that pastes a config file, a JSON body (its keys
are such names, at any depth, and a JSON string that holds JSON, as tool arguments do, is read
too), an SSE event, a form or an HTML error page. The value is what follows: a quoted string
whole (JSON escapes included), else a bare word of 4 or more characters.

Two JSON names are not credentials by where they stand: a `token` beside a `logprob` is a
model's token, and a `signature` in a thinking block is Anthropic's integrity check of it.

Cost: the name must hold one of a few stems (`pass`, `pwd`, `secret`, `token`, `key`, `auth`,
`cred`, `sig`, `cookie`, `jwt`, `bearer`), found with `find` on a lowered copy; the pattern is
matched only where one occurs.
"""

from __future__ import annotations

import functools
import re

from .formats import Span
from .names import is_secret_name, words

STEMS = (
    b"pass",
    b"pwd",
    b"secret",
    b"token",
    b"key",
    b"auth",
    b"cred",
    b"sig",
    b"cookie",
    b"jwt",
    b"bearer",
)
_NAME_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-."
_NAME_MAP = bytes(ord("a") if bytes([i]) in _NAME_CHARS else ord(" ") for i in range(256))
_KV = re.compile(
    rb"(?P<name>[A-Za-z0-9_.\-]{1,64})(?:\\?[\"'])?[ \t]{0,3}(?::|=>|=)[ \t]{0,3}"
    rb"(?:\"(?P<dq>(?:[^\"\\\n]|\\[^\n]){1,16384}?)\""
    # a string in a string (JSON tool arguments): its escapes are escaped once more
    rb'|\\"(?P<edq>(?:\\\\(?:\\"|\\\\|[^\\])|\\[^"\\]|[^\\]){1,16384}?)\\"'
    rb"|'(?P<sq>[^'\n]{1,16384}?)'"
    rb"|(?P<bare>[^\s\"'\\&;,<>(){}\[\]]{4,4096}))"
)
_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
# Not a credential's value: a literal, not a secret (`use_password=True`, `"password": null`).
# Quoted, only JSON's own literals are let through: "True" or "None" in quotes is a string,
# and a string under a credential's name is redacted (fuzzing found `{"password": "True"}`
# kept in clear while `{"password": "Tru"}` was not).
_NOT_VALUES = frozenset({b"true", b"false", b"null", b"none", b"None", b"True", b"False"})
_NOT_QUOTED_VALUES = frozenset({b"true", b"false", b"null"})
_MARKER = b"[REDACTED:"
_LOOK = 160  # bytes around a name searched for its context (logprob, thinking)


def assignments(b: bytes, extra: frozenset[str] = frozenset()) -> list[Span]:
    """The values of credential-named assignments in `b` (`extra`: more names, lowercase, that
    are credentials): (start, end, kind), the kind made from the name."""
    low = b.lower()
    names: bytes | None = None
    starts: set[int] = set()
    out: list[Span] = []
    for stem in _stems(extra):
        p = low.find(stem)
        while p >= 0:
            if names is None:
                names = b.translate(_NAME_MAP)
            start = names.rfind(b" ", 0, p) + 1
            if start not in starts:
                starts.add(start)
                span = _value_at(b, start, extra)
                if span is not None:
                    out.append(span)
            p = low.find(stem, p + len(stem))
    return out


@functools.lru_cache(maxsize=64)
def _stems(extra: frozenset[str]) -> tuple[bytes, ...]:
    return STEMS + tuple(sorted(e.encode() for e in extra))


def _value_at(b: bytes, start: int, extra: frozenset[str]) -> Span | None:
    m = _KV.match(b, start)
    if m is None:
        return None
    name = m.group("name").decode("ascii", "replace")
    group = next(g for g in ("dq", "edq", "sq", "bare") if m.group(g) is not None)
    value = m.group(group)
    if value.startswith(_MARKER) or value in (
        _NOT_VALUES if group == "bare" else _NOT_QUOTED_VALUES
    ):
        return None
    if name.lower() not in extra and not _is_credential(name, value, group, b, start):
        return None
    kind = re.sub(r"[^a-z_\-]", "-", name.lower())[:24].strip("-") or "keyword"
    return (m.start(group), m.end(group), kind)


def _is_credential(name: str, value: bytes, group: str, b: bytes, start: int) -> bool:
    if not is_secret_name(name):
        ws = words(name)
        # `<vendor>_key = <long token>` (ibm_key, cloudant_key): a key by its value's shape
        if not (len(ws) > 1 and ws[-1] == "key" and len(value) >= 16 and b" " not in value):
            return False
    lname = name.lower()
    if lname == "token" and b"logprob" in b[start : start + _LOOK]:
        return False
    if lname == "signature":
        around = b[max(0, start - _LOOK) : start + _LOOK]
        if b"thinking" in around or b"signature_delta" in around:
            return False
    # a number is not a credential (`token=5`), and in JSON it is not quoted: a marker in its
    # place would break the document
    return not (group == "bare" and _NUMBER.fullmatch(value))
