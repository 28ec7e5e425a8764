"""The ``@http`` wrapper: streaming HTTP handlers, as in the iii documentation.

``@http`` turns ``async def handler(req: HttpRequest, response: HttpResponse)`` into an ordinary
one-argument function handler. The wrapper builds the request (with ``request_body`` as a
stream) and the response (``status()``, ``headers()``, ``writer``, ``stream``, ``close()``) from
the channel references the HTTP front puts in the payload, and closes the response when the
handler returns (so forgetting ``close_async()`` cannot hang the client). A handler may also
return a ``{status_code, headers, body}`` dict instead of writing: that is sent as is.
"""

from __future__ import annotations

import functools
import inspect
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from ..protocol import ErrorBody
from ..types import HttpRequest, HttpResponse
from .client import current_client


def http(handler: Callable[[HttpRequest, HttpResponse], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    if not inspect.iscoroutinefunction(handler):
        raise TypeError(f"@http needs an 'async def' handler, got {handler!r}")

    @functools.wraps(handler)
    async def wrapped(data: Any) -> Any:
        client = current_client()
        refs = data if isinstance(data, dict) else {}
        try:
            reader = client.channel_reader(refs["request_body"])
            writer = client.channel_writer(refs["response"])
        except (KeyError, TypeError, ValueError):
            raise TypeError("@http handlers must be bound to an 'http' trigger (no request/response channels "
                            "in the payload)") from None
        request = HttpRequest.from_data(refs, reader)
        response = HttpResponse(writer)
        try:
            result = await handler(request, response)
        except Exception as exc:
            await writer.close_async(ErrorBody(code="invocation_failed", message=str(exc) or type(exc).__name__,
                                               stacktrace=traceback.format_exc()))
            raise
        if result is None or writer.touched:
            await writer.close_async()
        return result

    wrapped.__iii_http__ = True  # type: ignore[attr-defined]
    return wrapped
