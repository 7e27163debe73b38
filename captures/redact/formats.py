"""Credential formats found anywhere in text: prompts, answers, header values, paths, bodies.

The formats are detect-secrets' own (its regex-based plugins, read from the installed package:
AWS, Azure storage, GitHub, GitLab, Slack, Stripe, Twilio, SendGrid, npm, PyPI, Discord,
Telegram, Mailchimp, JWTs, PEM private keys, passwords in URLs, ...), with the ones it lacks
added here: OpenAI and Anthropic keys of every generation, Bearer tokens, Google API keys and
OAuth tokens, GitHub fine-grained tokens, Hugging Face, Stripe test keys, npm's new tokens and
PEM blocks whole (detect-secrets finds the BEGIN line; the key material follows it).

Left out of detect-secrets' set:
- public IP addresses (not credentials);
- Artifactory's password form, which matches capitalised words in prose (`APPROXIMATELY`);
- the vendor-keyword forms (`cloudant_password = ...`, `ibm_api_key: ...`, `aws ... key '...'`):
  the keyword rule (keywords.py) finds `<credential name> = <value>` for every vendor, and as
  regexes these cost 0.5 to 1.2 ms per 10 KB of prose each, more than all the others together.

Cost: a regex scan in Python costs about 20 ns a byte, so the formats never scan whole bodies.
Every format either lies within one word of 16 or more characters holding a run of 16 token
characters (`[A-Za-z0-9_-]`; a word also takes `.+/=:~@`), or has anchors, literals that must
all occur (`PRIVATE KEY`; `@` and `://`; `earer`). Two `bytes.translate` passes and `find`
locate the long runs and the words around them; only those words are matched, and a cache
answers the words seen before (a stream repeats its ids in every event). Anchored formats run
over the whole text, and only where their anchors occur.

A match keeps the separators around it (quotes, `=`, spaces), so a JSON string stays a string
once its secret is replaced. The secret is the longest captured group of at least 4 characters
that starts after the match does, where the format captures one (`://user:PASSWORD@`; not a
prefix such as `(ghp|gho)`), else the whole match, extended over the token characters that
follow it (a JWT's signature).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.plugins.base import RegexBasedDetector

Span = tuple[int, int, str]  # start, end, kind

LEFT_OUT = frozenset({"IPPublicDetector"})
_KEYWORD_FORM = re.compile(r"\(\?:\(\?<=\\W\)\|\(\?<=\^\)\)|^aws\.\{0,20\}")  # vendor-keyword forms
_LEFT_OUT_PATTERNS = frozenset({r'(?:\s|=|:|"|^)AP[\dABCDEF][a-zA-Z0-9]{8,}(?:\s|"|$)'})

# (kind, pattern, flags): the formats detect-secrets has not
OURS: tuple[tuple[str, str, int], ...] = (
    ("sk", r"sk-(?:ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{16,}", 0),
    ("bearer", r"(?:bearer)\s+[A-Za-z0-9._~+/=\-]{8,}", re.I),
    ("google-api-key", r"AIza[0-9A-Za-z_\-]{30,}", 0),
    ("google-oauth", r"ya29\.[0-9A-Za-z_\-]{20,}", 0),
    ("github-token", r"github_pat_[A-Za-z0-9_]{22,}", 0),
    ("huggingface", r"hf_[A-Za-z0-9]{30,}", 0),
    ("stripe-key", r"(?:sk|rk)_test_[0-9a-zA-Z]{24,}", 0),
    ("npm-token", r"npm_[A-Za-z0-9]{36}", 0),
    ("slack-token", r"xapp-\d-[A-Za-z0-9\-]{20,}", 0),
    (  # a whole PEM block, its END line included
        "private-key",
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.{0,16384}?"
        r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
        re.S,
    ),
    (  # one cut before its END line: the base64 lines that follow the BEGIN line
        "private-key",
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
        r"(?:\s|\\[nr])*(?:[A-Za-z0-9+/=]{16,}(?:\s|\\[nr])*){0,256}",
        0,
    ),
)

# formats that need no 16-character run, found only where all of their anchors occur (the
# PEM header; a password in a URL, which may be short)
_ANCHORS: tuple[tuple[str, tuple[bytes, ...]], ...] = (
    ("PRIVATE KEY", (b"PRIVATE KEY",)),
    ("://[^", (b"@", b"://")),
    ("bearer", (b"earer",)),
)


@dataclass(frozen=True)
class Format:
    kind: str
    pattern: re.Pattern[bytes]
    anchors: tuple[bytes, ...]  # empty: a token format (needs a 16-character run)


def _slug(name: str) -> str:
    s = re.sub(r"[^a-z]+", "-", name.lower()).strip("-")
    return s[:24] or "secret"


def _format(kind: str, pattern: str, flags: int) -> Format:
    anchors: tuple[bytes, ...] = ()
    for key, lits in _ANCHORS:
        if key in pattern:
            anchors = lits
            break
    return Format(kind, re.compile(pattern.encode(), flags & (re.I | re.S | re.X | re.M)), anchors)


def _load() -> list[Format]:
    out = [_format(k, p, f) for k, p, f in OURS]
    plugins: dict[str, type[Any]] = get_mapping_from_secret_type_to_class()
    for secret_type, cls in sorted(plugins.items()):
        if not issubclass(cls, RegexBasedDetector) or cls.__name__ in LEFT_OUT:
            continue
        denylist: Iterable[re.Pattern[str]] = cls.__dict__.get("denylist", ())
        for p in denylist:
            if p.pattern in _LEFT_OUT_PATTERNS or _KEYWORD_FORM.search(p.pattern):
                continue
            out.append(_format(_slug(secret_type), p.pattern, p.flags))
    return out


FORMATS = _load()
TOKEN_FORMATS = [f for f in FORMATS if not f.anchors]
ANCHORED = [f for f in FORMATS if f.anchors]
ANY_TOKEN = re.compile(
    b"|".join(
        (b"(?i:%s)" if f.pattern.flags & re.I else b"(?:%s)") % f.pattern.pattern
        for f in TOKEN_FORMATS
    )
)

RUN = 16
_RUN = b"a" * RUN
_TOKEN = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_WIDE = _TOKEN + b".+/=:~@"
_NARROW_MAP = bytes(ord("a") if bytes([i]) in _TOKEN else ord(" ") for i in range(256))
_LETTER_MAP = bytes(
    ord("a") if chr(i).isascii() and chr(i).isalpha() else ord(" ") for i in range(256)
)
_WIDE_MAP = bytes(ord("a") if bytes([i]) in _WIDE else ord(" ") for i in range(256))
_TOKEN_SET = frozenset(_TOKEN)
_EDGE = frozenset(b" \t\r\n=:\"'")
_ANCHOR_GROUPS = [
    (anchors, [f for f in ANCHORED if f.anchors == anchors])
    for anchors in dict.fromkeys(f.anchors for f in ANCHORED)
]
_cache: dict[bytes, list[Span]] = {}


def spans(b: bytes) -> list[Span]:
    """Where credentials are in `b` (str callers pass `s.encode("ascii", "replace")`, which
    keeps offsets): (start, end, kind), sorted, not overlapping."""
    found: list[Span] = []
    narrow = b.translate(_NARROW_MAP)
    i = narrow.find(_RUN)
    if i >= 0:
        letters = b.translate(_LETTER_MAP)
        wide = b.translate(_WIDE_MAP)
        cache, n = _cache, len(b)
        while i >= 0:
            e = narrow.find(b" ", i)
            if e < 0:
                e = n
            p = letters.find(b"a", i)
            if p < 0:
                break
            if p >= e:  # digits only (a JSON number's): on to the word with the next letter
                i = narrow.find(_RUN, max(e, narrow.rfind(b" ", 0, p) + 1))
                continue
            ws = wide.rfind(b" ", 0, i) + 1
            we = wide.find(b" ", i)
            if we < 0:
                we = n
            word = b[ws:we]
            got = cache.get(word)
            if got is None:
                got = _window(word)
                if len(cache) > 4096:
                    cache.clear()
                cache[word] = got
            if got:
                found.extend((s + ws, e + ws, k) for s, e, k in got)
            i = narrow.find(_RUN, we)
    for anchors, group in _ANCHOR_GROUPS:
        for a in anchors:  # a loop, not all() of a generator: this runs for every value
            if a not in b:
                break
        else:
            for f in group:
                found.extend(_matches(f, b, 0, len(b)))
    return merged(found) if found else found


def _window(w: bytes) -> list[Span]:
    if ANY_TOKEN.search(w) is None:
        return []
    out: list[Span] = []
    for f in TOKEN_FORMATS:
        out.extend(_matches(f, w, 0, len(w)))
    return out


def _matches(f: Format, b: bytes, pos: int, end: int) -> list[Span]:
    out: list[Span] = []
    pat = f.pattern
    for m in pat.finditer(b, pos, end):
        best = max(  # a group after the match's start holds the secret (not a prefix group)
            (g for g in range(1, pat.groups + 1) if m.start(g) > m.start()),
            key=lambda g: m.end(g) - m.start(g),
            default=0,
        )
        if best and m.end(best) - m.start(best) >= 4:
            s, e = m.start(best), m.end(best)
        else:
            s, e = m.start(), m.end()
            while s < e and b[s] in _EDGE:
                s += 1
            while e > s and b[e - 1] in _EDGE:
                e -= 1
            while e < len(b) and b[e] in _TOKEN_SET:
                e += 1
        if e > s:
            out.append((s, e, f.kind))
    return out


def merged(found: list[Span]) -> list[Span]:
    """Spans sorted and joined where they overlap (the first one's kind kept)."""
    found.sort(key=lambda t: (t[0], -t[1]))
    out: list[Span] = []
    for start, end, kind in found:
        if out and start < out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end, out[-1][2])
            continue
        out.append((start, end, kind))
    return out
