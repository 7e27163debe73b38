"""Filler text standing in for prompts of a given token count (trace imports, anonymize,
synthetic makers), and the token count used for it.

Prompts of N tokens are filler text of N words drawn from ~200 of the commonest short English
words, which byte-pair vocabularies such as cl100k encode as about one token each (with the
leading space), so N words stand for about N tokens. When the `tiktoken` package is installed and
its cl100k encoding loads (it is downloaded once, then cached), the count is exact: words are
added or removed until the encoding gives N. Otherwise it is that word-count approximation; the
recorded `prompt_tokens` column always holds the count asked for.
"""

from __future__ import annotations

import functools
import random
from typing import Any

VOCAB = (
    "the of and to in is you that it he was for on are as with his they at be this have from or "
    "one had by word but not what all were we when your can said there use an each which she do "
    "how their if will up other about out many then them these so some her would make like him "
    "into time has look two more write go see number no way could people my than first water "
    "been call who its now find long down day did get come made may part over new sound take "
    "only little work know place year live me back give most very after thing our just name good "
    "sentence man think say great where help through much before line right too mean old any same "
    "tell boy follow came want show also around form three small set put end does another well "
    "large must big even such because turn here why ask went men read need land different home us "
    "move try kind hand picture again change off play spell air away animal house point page "
    "letter mother answer found study still learn should world high every near add food between own"
).split()


@functools.lru_cache(maxsize=1)
def _encoding() -> Any:
    try:
        import tiktoken  # type: ignore[import-not-found]

        return tiktoken.get_encoding("cl100k_base")
    except Exception:  # not installed, or its encoding file cannot be fetched (offline)
        return None


def token_count(text: str) -> int:
    enc = _encoding()
    if enc is not None:
        return len(enc.encode(text))
    return len(text.split())


def filler(n_tokens: int, rng: random.Random, prefix: str = "") -> str:
    """About n_tokens of text (exactly, with tiktoken), after an optional fixed prefix."""
    words = rng.choices(VOCAB, k=max(n_tokens, 0))
    text = (prefix + " " if prefix else "") + " ".join(words)
    enc = _encoding()
    if enc is not None and n_tokens > 0:
        total = n_tokens + (token_count(prefix) if prefix else 0)
        while token_count(text) > total and words:
            words.pop()
            text = (prefix + " " if prefix else "") + " ".join(words)
        while token_count(text) < total:
            words.append(rng.choice(VOCAB))
            text = (prefix + " " if prefix else "") + " ".join(words)
    return text
