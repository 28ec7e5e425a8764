"""External HTTP functions, the worker's side: a function the *supervisor* serves by calling a URL.

    iii.register_function("billing.charge", HttpInvocationConfig(
        url="https://billing.internal/charge", timeout_ms=5000,
        auth={"type": "hmac", "secret_key": "BILLING_HMAC_SECRET"}))

The shape is the official SDK's ``iii_helpers.http.HttpInvocationConfig`` (whose instances are
accepted too, as is a plain dict); secrets are *names* of environment variables of the supervisor.
See docs/external-functions.md.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen(kw_only=True)
class HttpInvocationConfig:
    url: str
    #: GET, POST, PUT, PATCH or DELETE
    method: str = "POST"
    #: the request's own deadline (the call's deadline applies too)
    timeout_ms: int | None = None
    headers: dict[str, str] | None = None
    #: ``{"type": "hmac", "secret_key": ENV}``, ``{"type": "bearer", "token_key": ENV}`` or
    #: ``{"type": "api_key", "header": NAME, "value_key": ENV}``
    auth: dict[str, str] | None = None


def invocation_wire(value: Any) -> dict[str, Any] | None:
    """The ``invocation`` object for ``value`` (ours, the official SDK's pydantic model, or a dict
    with a ``url``); None if ``value`` is not an invocation."""
    if isinstance(value, HttpInvocationConfig):
        return {k: v for k, v in attrs.asdict(value).items() if v is not None}
    if isinstance(value, dict) and "url" in value:
        return value
    dump = getattr(value, "model_dump", None)  # iii_helpers.http.HttpInvocationConfig (pydantic)
    if callable(dump) and hasattr(value, "url"):
        wire = dump(exclude_none=True)
        return wire if isinstance(wire, dict) else None
    return None
