"""Types handed to ``@http`` handlers: :class:`HttpRequest` and :class:`HttpResponse`.

Import them as in the iii documentation: ``from iii_supervisor.types import HttpRequest, HttpResponse``.
"""

from __future__ import annotations

from typing import Any

import attrs

from .worker.channels import ChannelReader, ChannelWriter, WritableStream


@attrs.define(kw_only=True)
class HttpRequest:
    method: str
    #: the route pattern (``/users/:id``); the path actually requested is ``request_path``
    path: str
    request_path: str
    path_params: dict[str, str]
    query_params: dict[str, str]
    headers: dict[str, str]
    #: parsed JSON for JSON bodies; text for small non-JSON bodies; else None (read ``request_body``)
    body: Any
    #: the raw body as a stream: ``async for chunk in req.request_body`` / ``await req.request_body.read_all()``
    request_body: ChannelReader
    trigger: dict[str, Any] = attrs.Factory(dict)
    #: what the route's middleware added with ``{"action": "continue", "context": {...}}``
    context: dict[str, Any] = attrs.Factory(dict)

    @classmethod
    def from_data(cls, data: dict[str, Any], request_body: ChannelReader) -> HttpRequest:
        return cls(method=data.get("method", ""), path=data.get("path", ""),
                   request_path=data.get("request_path", data.get("path", "")),
                   path_params=data.get("path_params") or {}, query_params=data.get("query_params") or {},
                   headers=data.get("headers") or {}, body=data.get("body"), request_body=request_body,
                   trigger=data.get("trigger") or {}, context=data.get("context") or {})


class HttpResponse:
    """Imperative control of a streamed response."""

    def __init__(self, writer: ChannelWriter) -> None:
        self.writer = writer
        self.stream = WritableStream(writer)

    async def status(self, status_code: int) -> None:
        await self.writer.send_message_async({"type": "set_status", "status_code": status_code})

    async def headers(self, headers: dict[str, str]) -> None:
        await self.writer.send_message_async({"type": "set_headers", "headers": headers})

    def close(self) -> None:
        self.writer.close()


__all__ = ["ChannelReader", "ChannelWriter", "HttpRequest", "HttpResponse", "WritableStream"]
