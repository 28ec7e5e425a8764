"""External HTTP functions, the I/O part: one shared ``httpx.AsyncClient`` and the call.

A worker's ``registerfunction`` with an ``invocation`` reaches :meth:`ExternalFunctions.handler`
(through ``Registry.external_handler``): the invocation is checked and its secret resolved there,
and the function is stored as the worker's own, with this handler serving its calls in-process.
The invoker runs it like a built-in — under the call's deadline — so a call to an ordinary worker
function pays nothing for this. The function goes away with its worker, like any other.

The client lives as long as :meth:`ExternalFunctions.run` (a nursery task of the engine): a
bounded connection pool (``max_connections``), no redirects followed, no proxy or ``.netrc``
from the environment, no compressed answers asked for. The answer is read in pieces and given up
past the frame limit, so a huge answer cannot grow memory.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import httpx
import trio

from ...config import positive
from ...errors import (
    HttpRequestFailed,
    InvalidInvocation,
    InvocationStopped,
    InvocationTimeout,
    RegistrationError,
    ResultTooLarge,
)
from ...registry import BuiltinHandler
from ...tracing import call_context
from ..base import ModuleContext
from .endpoint import Endpoint, encode_body, parse_invocation, request_headers, result_of

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class ExternalConfig:
    """The ``[external_functions]`` config section."""

    #: Accept ``registerfunction`` with an ``invocation`` (refused with ``invalid_invocation`` when off).
    enabled: bool = True
    #: Connections open at once to all endpoints together; more calls wait for one (under their deadline).
    max_connections: int = attrs.field(default=100, validator=positive)
    #: Idle connections kept for reuse.
    max_keepalive_connections: int = attrs.field(default=20, validator=attrs.validators.ge(0))
    #: The largest ``timeout_ms`` an invocation may ask for.
    max_timeout_ms: int = attrs.field(default=600_000, validator=positive)
    #: Refuse ``http://`` endpoints.
    require_https: bool = False
    #: Hosts an endpoint may be on (shell-style patterns: ``"*.example.com"``, ``"127.0.0.1"``).
    allowed_hosts: tuple[str, ...] = ("*",)
    #: Environment variables an ``auth`` may name (patterns: ``"III_SECRET_*"``); the default lets a
    #: worker have any variable of the supervisor's environment sent to its endpoint.
    allowed_secrets: tuple[str, ...] = ("*",)
    #: The same for *attached* workers (iii door connections the supervisor did not spawn: any local
    #: user, unless the door is restricted), in place of ``allowed_secrets``; the default lets them
    #: name none, so nobody outside the supervisor's own workers can have its secrets sent anywhere.
    attached_secrets: tuple[str, ...] = ()


class ExternalFunctions:
    def __init__(self, ctx: ModuleContext, config: ExternalConfig, *, environ: Mapping[str, str] | None = None) -> None:
        self.registry = ctx.registry
        self.config = config
        #: an answer larger than a frame could not be delivered to a worker anyway
        self.max_response = ctx.config.supervisor.max_frame_size
        self._environ = os.environ if environ is None else environ
        self._client: httpx.AsyncClient | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.config.enabled:
            task_status.started()
            return
        limits = httpx.Limits(max_connections=self.config.max_connections,
                              max_keepalive_connections=self.config.max_keepalive_connections)
        # timeout=None: the call's deadline (a trio cancel scope) bounds everything, pool waits included
        async with httpx.AsyncClient(limits=limits, timeout=None, follow_redirects=False, trust_env=False) as client:
            self._client = client
            self.registry.serve_external_functions(self.handler)
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self.registry.serve_external_functions(None)
                self._client = None

    def handler(self, function_id: str, invocation: dict[str, Any], attached: bool = False) -> BuiltinHandler:
        """Check ``invocation`` (raises the refusal) and return what serves the function's calls;
        ``attached``: registered by a worker the supervisor did not spawn."""
        try:
            endpoint = parse_invocation(function_id, invocation, environ=self._environ,
                                        max_timeout_ms=self.config.max_timeout_ms,
                                        require_https=self.config.require_https,
                                        allowed_hosts=self.config.allowed_hosts,
                                        allowed_secrets=self.config.attached_secrets if attached
                                        else self.config.allowed_secrets,
                                        secrets_setting="attached_secrets" if attached else "allowed_secrets")
        except RegistrationError:
            raise
        except Exception as exc:  # a bug here must refuse one function, not end the worker's session
            log.exception("checking the invocation of %r failed", function_id)
            raise InvalidInvocation(f"function {function_id!r}: the invocation could not be checked "
                                    f"({type(exc).__name__})") from None

        async def serve(data: Any) -> Any:
            return await self.call(function_id, endpoint, data)

        return serve

    async def call(self, function_id: str, endpoint: Endpoint, data: Any) -> Any:
        client = self._client
        if client is None:
            raise InvocationStopped(f"external function {function_id!r}: the supervisor is stopping")
        body = encode_body(function_id, data)
        context = call_context()
        headers = request_headers(endpoint, function_id=function_id, invocation_id=str(uuid.uuid4()),
                                  timestamp=int(time.time()), body=body,
                                  traceparent=context.traceparent, baggage=context.baggage)
        with trio.move_on_after(endpoint.timeout if endpoint.timeout is not None else math.inf) as scope:
            try:
                async with client.stream(endpoint.method, endpoint.url, content=body, headers=headers) as response:
                    answer = await self._read(endpoint, response)
                    status = response.status_code
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise HttpRequestFailed(f"{endpoint.label} (function {function_id!r}) failed: "
                                        f"{_describe(exc)}") from None
        if scope.cancelled_caught:
            assert endpoint.timeout is not None
            raise InvocationTimeout(f"{endpoint.label} (function {function_id!r}) did not answer within "
                                    f"{endpoint.timeout * 1000:g} ms")
        return result_of(endpoint, status, answer)

    async def _read(self, endpoint: Endpoint, response: httpx.Response) -> bytes:
        limit = self.max_response
        too_large = ResultTooLarge(f"{endpoint.label} answered more than {limit} bytes (the supervisor's "
                                   f"max_frame_size): the answer was dropped")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        parts, size = [], 0
        async for piece in response.aiter_bytes():
            size += len(piece)
            if size > limit:
                raise too_large
            parts.append(piece)
        return b"".join(parts)


def _describe(exc: Exception) -> str:
    """What went wrong, for the caller: the exception's kind and text (httpx's texts name neither
    headers nor the query), with the causes httpx wraps."""
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({cause})"
    return f"{type(exc).__name__}: {text}"[:500]
