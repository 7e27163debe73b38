"""What is redacted (the policy) and how a secret becomes a marker (the redactor).

A redacted value becomes `[REDACTED:<kind>:<hash>]`, the hash being the first 8 hex digits of an
HMAC-SHA256 of the value keyed with the redaction key (captures/keys.py), so equal secrets get equal
markers wherever they stand (sessions and diffs still line up, two tenants' keys stay apart) and
no marker can be reversed without the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import formats, keywords, names
from .scope import Scope


@dataclass(frozen=True)
class RedactionPolicy:
    enabled: bool = True
    headers: frozenset[str] = frozenset()  # more header names, beyond the rule
    query_params: frozenset[str] = frozenset()  # more query, form and multipart names
    json_keys: frozenset[str] = frozenset()  # more names in JSON and text
    patterns: bool = True  # credential formats in text

    @classmethod
    def build(
        cls,
        *,
        enabled: bool = True,
        extra_headers: Iterable[str] = (),
        extra_query: Iterable[str] = (),
        extra_json_keys: Iterable[str] = (),
    ) -> RedactionPolicy:
        def norm(items: Iterable[str]) -> frozenset[str]:
            return frozenset(i.strip().lower() for i in items if i.strip())

        return cls(
            enabled=enabled,
            headers=norm(extra_headers),
            query_params=norm(extra_query),
            json_keys=norm(extra_json_keys),
        )

    def describe(self, key_fingerprint: str) -> dict[str, Any]:
        """What the capture's metadata says about redaction (never the key itself)."""
        if not self.enabled:
            return {"mode": "off"}
        return {
            "mode": "on",
            "names": {
                "words": sorted(names.WORDS),
                "stems": list(names.STEMS),
                "not_secret": sorted(names.NOT_SECRET),
                "headers": sorted(names.HEADERS | self.headers),
                "params": sorted(names.PARAMS | self.query_params),
                "json_keys": sorted(self.json_keys),
            },
            "text_stems": [s.decode() for s in keywords.STEMS],
            "formats": sorted({f.kind for f in formats.FORMATS}) if self.patterns else [],
            "echoes": True,
            "marker": "[REDACTED:<kind>:<hmac-sha256 first 8 hex>]",
            "key_fingerprint": key_fingerprint,
        }


@dataclass
class Redactor:
    policy: RedactionPolicy
    key: bytes
    _cache: dict[tuple[str, bytes], str] = field(default_factory=dict, repr=False)
    # short texts read before and found to hold no secret (scope.py): the same header values
    # come with every request of a client
    clean: set[str] = field(default_factory=set, repr=False)
    # secrets redacted from recorded exchanges, by kind (the capture's metrics)
    counts: dict[str, int] = field(default_factory=dict, repr=False)

    def counted(self, scope: Scope) -> None:
        """Add an exchange's redactions to the totals, once its record is built."""
        for kind, n in scope.kinds.items():
            self.counts[kind] = self.counts.get(kind, 0) + n

    def exchange(self) -> Scope:
        """A scope for one exchange (its echoes are its own)."""
        return Scope(self)

    def marker(self, kind: str, value: str | bytes) -> str:
        raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        ck = (kind, raw)
        m = self._cache.get(ck)
        if m is None:
            digest = hmac.new(self.key, raw, hashlib.sha256).hexdigest()
            m = f"[REDACTED:{kind}:{digest[:8]}]"
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[ck] = m
        return m

    # one-off use outside an exchange (importers' odd fields, tests)
    def text(self, s: str | None) -> str | None:
        return self.exchange().text(s)
