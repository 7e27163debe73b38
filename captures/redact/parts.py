"""The structured parts of an exchange: header values, query strings and forms, multipart bodies.

- Headers named as credentials (names.py) lose their value; an auth scheme is kept
  (`Bearer <marker>`, `AWS4-HMAC-SHA256 <marker>`, `Digest <marker>`), a Basic credential is
  also remembered decoded (echo.py), a `Cookie` keeps its cookie names and a `Set-Cookie` its
  name and attributes (`sid=<marker>; Path=/; HttpOnly`). Other header values are read as text
  (formats anywhere in them).
- Query strings and form bodies split on `&` and `;`; a credential-named parameter's value
  becomes a URL-encoded marker (replay leaves the parameter out), any other value is decoded and
  read as text.
- Multipart bodies keep their boundaries and part headers; a credential-named part's content
  becomes a marker, a textual part is read as text (JSON parts as JSON text), binary parts are
  kept.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote_plus

from .names import is_secret_header, is_secret_param

if TYPE_CHECKING:
    from .scope import Scope

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9._~+\-]*)([ \t]+)(\S.*)", re.S)
_SEP = re.compile(r"([&;])")
_BOUNDARY = re.compile(r'boundary=(?:"([^"]+)"|([^\s;]+))', re.I)
_PART_NAME = re.compile(rb'\bname="([^"]*)"', re.I)


def kind_of(name: str, prefix: str = "") -> str:
    return (prefix + re.sub(r"[^a-z_\-]", "-", name.lower()))[:24].strip("-") or "secret"


def header_value(scope: Scope, name: str, value: str, where: str) -> str:
    lname = name.lower()
    if not is_secret_header(lname, scope.policy.headers):
        return scope.text(value, f"{where}:{lname}") or value
    scope.note(f"{where}:{lname}")
    kind = kind_of(lname)
    if lname == "cookie":
        return "; ".join(_cookie(scope, c, kind) for c in value.split(";"))
    if lname == "set-cookie":
        first, sep, attrs = value.partition(";")
        return _cookie(scope, first, kind) + sep + attrs
    m = _SCHEME.fullmatch(value)
    if m and "=" not in m.group(1):
        scheme, space, rest = m.groups()
        marker = scope.secret(kind, rest)
        if scheme.lower() == "basic":
            scope.echoes.add_basic(rest, marker)
        return f"{scheme}{space}{marker}"
    return scope.secret(kind, value)


def _cookie(scope: Scope, item: str, kind: str) -> str:
    name, sep, value = item.strip().partition("=")
    if not sep:
        return scope.secret(kind, name) if name else item.strip()
    return f"{name}={scope.secret(kind, value)}" if value else item.strip()


def params(scope: Scope, query: str, where: str, prefix: str = "query-") -> str:
    """A query string or form body, its credential-named values replaced by URL-encoded
    markers and the rest read as text."""
    out = []
    for item in _SEP.split(query):
        if item in ("&", ";") or not item:
            out.append(item)
            continue
        name, sep, value = item.partition("=")
        lname = unquote_plus(name).strip().lower()
        if sep and value and is_secret_param(lname, scope.policy.query_params):
            marker = scope.secret(kind_of(lname, prefix), unquote_plus(value))
            scope.note(f"{where}:{lname}")
            out.append(f"{name}={quote(marker, safe='')}")
            continue
        text = unquote_plus(value if sep else name)
        red = scope.text(text, f"{where}:{lname}:text")
        if red != text:
            red_q = quote(red or "", safe="")
            out.append(f"{name}={red_q}" if sep else red_q)
        else:
            out.append(item)
    return "".join(out)


def multipart(scope: Scope, body: bytes, content_type: str, where: str) -> bytes:
    m = _BOUNDARY.search(content_type)
    if m is None:
        return scope.data(body, where)
    delim = b"--" + (m.group(1) or m.group(2)).encode("latin-1")
    pieces = body.split(delim)
    out = [pieces[0]]
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            out.append(piece)
            continue
        head, sep, content = piece.partition(b"\r\n\r\n")
        if not sep:
            out.append(scope.data(piece, where))
            continue
        core, tail = (content[:-2], b"\r\n") if content.endswith(b"\r\n") else (content, b"")
        found = _PART_NAME.search(head)
        name = found.group(1).decode("utf-8", "replace") if found else ""
        if name and core and is_secret_param(name, scope.policy.query_params):
            scope.note(f"{where}:{name.lower()}")
            core = scope.secret(kind_of(name, "form-"), core).encode()
        elif b"\x00" not in core[:4096]:
            core = scope.data(core, f"{where}:{name.lower() or 'part'}")
        out.append(scope.data(head, where) + sep + core + tail)
    return delim.join(out)
