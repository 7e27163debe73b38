"""Plain HTTP: anything that is not an LLM API surface (health checks, model lists, a gateway's
own routes). No fields, no token events; a response is complete when its body is."""

from __future__ import annotations

from .base import Surface


class Plain(Surface):
    name = "http"


SURFACE = Plain()
