"""Redaction: no secret a client or a server sends reaches disk.

One policy covers every part of an exchange, request and response alike:
- header values: credential names of any vendor and case (names.py), every auth scheme,
  cookies and `Set-Cookie` (parts.py); other header values are read as text;
- the path, query parameters (`&` and `;`), form and multipart fields (parts.py);
- bodies, their content coding undone first (gzip, deflate, br, zstd; captures/codec.py) and
  redone after, so a replay sends what was sent: JSON keys at any depth and `name: value`
  assignments in any text (keywords.py), credential formats anywhere (formats.py);
- echoes: every value redacted in a request, found again in the response in its raw,
  URL-encoded, JSON-escaped and HTML-escaped forms, and a Basic credential decoded (echo.py).

A marker is `[REDACTED:<kind>:<hmac>]` (policy.py, keyed by captures/keys.py). Markers keep JSON
valid and query strings parseable; replay leaves a redacted header, parameter or JSON field out
rather than sending the marker. What is not covered is listed in docs/reliability.md.
"""

from ..codec import NOT_JSON, Decoded, decode_and_parse, looks_like_json, parse_json
from ..keys import DEFAULT_KEY_FILE, key_fingerprint, key_path, load_or_create_key
from ..markers import MARKER_RE
from .policy import RedactionPolicy, Redactor
from .scope import Scope

__all__ = [
    "DEFAULT_KEY_FILE",
    "MARKER_RE",
    "NOT_JSON",
    "Decoded",
    "RedactionPolicy",
    "Redactor",
    "Scope",
    "decode_and_parse",
    "key_fingerprint",
    "key_path",
    "load_or_create_key",
    "looks_like_json",
    "parse_json",
]
