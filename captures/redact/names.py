"""Which names hold credentials: header names, query and form parameters, JSON keys.

One rule for all vendors, cases and styles. A name is cut into words (`X-Auth-Token`,
`x_auth_token`, `xAuthToken` and `XAUTHTOKEN` all read as credential names): it is a credential
name when a word is a credential word (`token`, `secret`, `password`, `pwd`, `signature`,
`credential`, `cookie`, `auth`, ...) or its letters hold a credential stem (`apikey`,
`accesskey`, `passwd`, `clientsecret`, ...), unless a word says it is about credentials rather
than one (`max_tokens`, `token_type`, `tokenizer`, `auth_url`, `token_count`, ...).

Where each kind of name adds to that:
- headers: also `*-key` names (`X-Goog-Api-Key`, `Ocp-Apim-Subscription-Key`), every auth
  header, cookies, and the configured extras; `Idempotency-Key` and the like are not secrets;
- query and form parameters: also `key`, `code` (OAuth), `sig`, `pass`, `pw`;
- JSON keys: the rule alone (plus extras); only string values are taken, and a `token` beside
  a `logprob` is a model token, not a credential.
"""

from __future__ import annotations

import re
from functools import lru_cache

# whole words that make a credential name
WORDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "pwd",
        "secret",
        "secrets",
        "token",
        "apikey",
        "credential",
        "credentials",
        "signature",
        "cookie",
        "auth",
        "authorization",
        "authentication",
        "bearer",
        "jwt",
        "privatekey",
        "sessiontoken",
    }
)
# stems found in a name's letters run together (`xapikey`, `clientsecret`, `AWSSecretKey`)
STEMS = (
    "apikey",
    "accesskey",
    "secretkey",
    "privatekey",
    "password",
    "passwd",
    "passphrase",
    "secret",
    "authtoken",
    "accesstoken",
    "refreshtoken",
    "idtoken",
    "bearertoken",
    "sessiontoken",
    "securitytoken",
    "subscriptionkey",
    "credential",
    "signature",
)
# words that make a name about credentials rather than one
NOT_SECRET = frozenset(
    {
        "tokens",
        "tokenizer",
        "tokenize",
        "type",
        "types",
        "count",
        "counts",
        "limit",
        "limits",
        "max",
        "min",
        "usage",
        "length",
        "len",
        "expires",
        "expiry",
        "expiration",
        "ttl",
        "url",
        "uri",
        "endpoint",
        "method",
        "methods",
        "scheme",
        "schemes",
        "mode",
        "required",
        "enabled",
        "logprob",
        "logprobs",
        "budget",
        "version",
    }
)
HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
NOT_SECRET_HEADERS = frozenset(
    {
        "idempotency-key",
        "sec-websocket-key",
        "sec-websocket-accept",
        "www-authenticate",
        "proxy-authenticate",
        "x-request-id",
        "cache-key",
        "x-cache-key",
    }
)
PARAMS = frozenset({"key", "code", "sig", "pass", "pw", "auth", "apikey"})

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORD = re.compile(r"[a-z0-9]+")


def words(name: str) -> list[str]:
    return _WORD.findall(_CAMEL.sub("_", name).lower())


@lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """The rule shared by every kind of name."""
    ws = words(name)
    if not ws or any(w in NOT_SECRET for w in ws):
        return False
    if any(w in WORDS for w in ws):
        return True
    letters = "".join(ws)
    return any(s in letters for s in STEMS)


@lru_cache(maxsize=4096)
def is_secret_header(name: str, extra: frozenset[str] = frozenset()) -> bool:
    lname = name.strip().lower()
    if lname in HEADERS or lname in extra:
        return True
    if lname in NOT_SECRET_HEADERS:
        return False
    ws = words(lname)
    return is_secret_name(lname) or (bool(ws) and ws[-1] == "key")


@lru_cache(maxsize=4096)
def is_secret_param(name: str, extra: frozenset[str] = frozenset()) -> bool:
    lname = name.strip().lower()
    return lname in PARAMS or lname in extra or is_secret_name(lname)


@lru_cache(maxsize=4096)
def is_secret_key(name: str, extra: frozenset[str] = frozenset()) -> bool:
    return name.lower() in extra or is_secret_name(name)
