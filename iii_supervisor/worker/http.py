"""The ``@http`` wrapper for streaming HTTP handlers (completed with the HTTP front)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any


def http(handler: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    raise NotImplementedError("streaming HTTP handlers arrive with the HTTP front")
