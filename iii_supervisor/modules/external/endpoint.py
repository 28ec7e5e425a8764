"""External HTTP functions, the pure part (no I/O): a ``registerfunction``'s ``invocation`` checked
into an :class:`Endpoint`, the request's headers and HMAC signature, and the endpoint's answer
turned into a result or an error.

The wire shape is the reference engine's (``engine/src/invocation/``) and the official SDK's
``HttpInvocationConfig``::

    {"url": "https://…", "method": "POST", "timeout_ms": 5000, "headers": {"x-a": "b"},
     "auth": {"type": "hmac", "secret_key": "ENV_NAME"}         # or
             {"type": "bearer", "token_key": "ENV_NAME"}        # or
             {"type": "api_key", "header": "x-api-key", "value_key": "ENV_NAME"}}

Secrets are named by environment variable and read from the *engine's* environment once, at
registration (a missing variable refuses the function, as in the reference). No message built
here contains a secret, a header value, or the URL's user info or query string.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import attrs
import orjson

from ...errors import HttpStatusError, InvalidInvocation, InvalidResponse, InvocationError, MissingEnvVar

#: the methods of the reference's ``HttpMethod`` (and the SDK's ``HttpInvocationConfig.method``)
METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE")
MAX_URL_LENGTH: Final = 8192
MAX_HEADERS: Final = 64
MAX_HEADER_VALUE: Final = 8192
#: header names the engine sets itself (a worker's ``headers`` may not replace them)
_RESERVED: Final = frozenset({"content-type", "content-length", "transfer-encoding", "host", "connection",
                              "accept-encoding", "traceparent", "baggage"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: a remote error code passed through as the call's code (``{"error": {"code": …}}``)
_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}")
_MAX_REMOTE_MESSAGE: Final = 1000


@attrs.frozen(kw_only=True)
class Auth:
    """An ``auth`` with its secret resolved (from the variable ``env``)."""

    type: Literal["hmac", "bearer", "api_key"]
    env: str
    secret: str = attrs.field(repr=False)
    #: ``api_key``: the header that carries it
    header: str | None = None


@attrs.frozen(kw_only=True)
class Endpoint:
    url: str
    method: str
    #: seconds (``timeout_ms``); None: the call's own deadline is the only limit
    timeout: float | None
    headers: tuple[tuple[str, str], ...] = ()
    auth: Auth | None = None

    @property
    def label(self) -> str:
        """``METHOD url`` for messages: without user info and query (either may carry a secret)."""
        return f"{self.method} {safe_url(self.url)}"


def safe_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}{'?…' if parts.query else ''}"


def _fail(function_id: str, message: str) -> InvalidInvocation:
    return InvalidInvocation(f"function {function_id!r}: {message}")


def _show(value: Any) -> str:
    """A value in a message: its type and a short repr."""
    return f"{type(value).__name__} {value!r:.80}"


def parse_invocation(function_id: str, invocation: Any, *, environ: Mapping[str, str], max_timeout_ms: int,
                     require_https: bool = False, allowed_hosts: Iterable[str] = ("*",),
                     allowed_secrets: Iterable[str] = ("*",),
                     secrets_setting: str = "allowed_secrets") -> Endpoint:
    """Check an ``invocation`` object (raising :class:`InvalidInvocation` naming the field, or
    :class:`MissingEnvVar`) and resolve its secret. Unknown keys are ignored, as elsewhere on the wire."""
    if not isinstance(invocation, dict):
        raise _fail(function_id, f"invocation must be an object, got {_show(invocation)}")
    url = invocation.get("url")
    if not isinstance(url, str) or not url:
        raise _fail(function_id, f"invocation.url must be a non-empty string, got {_show(url)}")
    if len(url) > MAX_URL_LENGTH:
        raise _fail(function_id, f"invocation.url is {len(url)} characters long (at most {MAX_URL_LENGTH})")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise _fail(function_id, "invocation.url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # ("Invalid IPv6 URL")
        raise _fail(function_id, f"invocation.url is not a URL ({exc}): {url[:80]!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(function_id, f"invocation.url must be an http:// or https:// URL with a host, got "
                                 f"{safe_url(url) if parts.hostname else repr(url[:80])}")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
    except ValueError:
        raise _fail(function_id, f"invocation.url has an invalid port: {parts.netloc.rsplit('@', 1)[-1]!r:.80}") \
            from None
    if require_https and parts.scheme != "https":
        raise _fail(function_id, f"invocation.url must be https:// ([external_functions] require_https), got "
                                 f"{safe_url(url)}")
    host = parts.hostname
    if ":" not in host and (len(host) > 253 or not all(0 < len(label) <= 63 for label in host.rstrip(".").split("."))):
        raise _fail(function_id, f"invocation.url's host is not a valid host name: {host[:80]!r}")
    patterns = list(allowed_hosts)
    if not any(fnmatch.fnmatchcase(host, p.lower()) for p in patterns):
        raise _fail(function_id, f"invocation.url's host {host!r} is not in [external_functions] allowed_hosts "
                                 f"({', '.join(map(repr, patterns)) or 'none'})")

    method = invocation.get("method", "POST")
    if method is None:
        method = "POST"
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise _fail(function_id, f"invocation.method must be one of {', '.join(METHODS)}, got {_show(method)}")

    timeout_ms = invocation.get("timeout_ms")
    if timeout_ms is not None and (isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int)
                                   or not 0 < timeout_ms <= max_timeout_ms):
        raise _fail(function_id, f"invocation.timeout_ms must be an integer from 1 to {max_timeout_ms} "
                                 f"(milliseconds), got {_show(timeout_ms)}")

    auth = _parse_auth(function_id, invocation.get("auth"), environ, tuple(allowed_secrets), secrets_setting)
    headers = _parse_headers(function_id, invocation.get("headers"), auth)
    return Endpoint(url=url, method=method.upper(), timeout=timeout_ms / 1000 if timeout_ms is not None else None,
                    headers=headers, auth=auth)


def _header_name(function_id: str, field: str, name: Any) -> str:
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise _fail(function_id, f"{field} must be an HTTP header name (letters, digits, -_.!#$%&'*+^`|~), "
                                 f"got {_show(name)}")
    lower = name.lower()
    if lower in _RESERVED or lower.startswith("x-iii-"):
        raise _fail(function_id, f"{field} {name!r} is set by the engine and cannot be given")
    return name


def _parse_headers(function_id: str, headers: Any, auth: Auth | None) -> tuple[tuple[str, str], ...]:
    if headers is None:
        return ()
    if not isinstance(headers, dict):
        raise _fail(function_id, f"invocation.headers must be an object of strings, got {_show(headers)}")
    if len(headers) > MAX_HEADERS:
        raise _fail(function_id, f"invocation.headers has {len(headers)} entries (at most {MAX_HEADERS})")
    taken = {"authorization"} if auth is not None and auth.type == "bearer" else \
        {auth.header.lower()} if auth is not None and auth.header else set()
    out = []
    for name, value in headers.items():
        _header_name(function_id, "invocation.headers name", name)
        if name.lower() in taken:
            raise _fail(function_id, f"invocation.headers {name!r} would replace the header invocation.auth sets")
        # (the value is not shown: headers may carry credentials)
        if not isinstance(value, str):
            raise _fail(function_id, f"invocation.headers[{name!r}] must be a string, got {type(value).__name__}")
        if len(value) > MAX_HEADER_VALUE or any(c in value for c in "\r\n\0") or not value.isascii():
            # (httpx encodes header values as ASCII: anything else failed every call)
            raise _fail(function_id, f"invocation.headers[{name!r}] must be at most {MAX_HEADER_VALUE} ASCII "
                                     f"characters without line breaks or NUL")
        out.append((name, value))
    return tuple(out)


_AUTH_KEYS: Final = {"hmac": "secret_key", "bearer": "token_key", "api_key": "value_key"}
_AUTH_NAMES: Final = {"hmac": "HMAC signing", "bearer": "Bearer token", "api_key": "API key"}


def _parse_auth(function_id: str, auth: Any, environ: Mapping[str, str], allowed: tuple[str, ...],
                setting: str) -> Auth | None:
    if auth is None:
        return None
    if not isinstance(auth, dict):
        raise _fail(function_id, f"invocation.auth must be an object, got {_show(auth)}")
    kind = auth.get("type")
    if not isinstance(kind, str) or kind not in _AUTH_KEYS:
        raise _fail(function_id, f"invocation.auth.type must be one of {', '.join(_AUTH_KEYS)}, got {_show(kind)}")
    key = _AUTH_KEYS[kind]
    env = auth.get(key)
    if not isinstance(env, str) or not env:
        raise _fail(function_id, f"invocation.auth.{key} must be the name of an environment variable, "
                                 f"got {_show(env)}")
    header = None
    if kind == "api_key":
        header = _header_name(function_id, "invocation.auth.header", auth.get("header"))
    if not any(fnmatch.fnmatchcase(env, p) for p in allowed):
        raise _fail(function_id, f"invocation.auth.{key} {env!r} is not in [external_functions] {setting} "
                                 f"({', '.join(map(repr, allowed)) or 'none'})")
    secret = environ.get(env)
    if not secret:
        state = "is empty" if secret is not None else "is not set"
        raise MissingEnvVar(f"function {function_id!r}: environment variable {env!r} ({_AUTH_NAMES[kind]} for "
                            f"invocation.auth) {state} in the supervisor's environment")
    if kind != "hmac" and (not secret.isascii() or any(c in secret for c in "\r\n\0")):
        # it is sent as a header value (the value is not shown: it is a secret)
        raise _fail(function_id, f"environment variable {env!r} ({_AUTH_NAMES[kind]} for invocation.auth) must be "
                                 "ASCII without line breaks or NUL: it is sent in a header")
    return Auth(type=kind, env=env, secret=secret, header=header)  # type: ignore[arg-type]  # (one of _AUTH_KEYS)


# --- the request ----------------------------------------------------------------------------------


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The reference's ``x-iii-Signature``: ``sha256=`` + hex HMAC-SHA256 of ``"{timestamp}:{base64(body)}"``."""
    payload = f"{timestamp}:{base64.b64encode(body).decode('ascii')}".encode()
    return "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def request_headers(endpoint: Endpoint, *, function_id: str, invocation_id: str, timestamp: int, body: bytes,
                    traceparent: str | None = None, baggage: str | None = None) -> list[tuple[str, str]]:
    headers = [("content-type", "application/json"), ("accept-encoding", "identity"),
               ("x-iii-Function-Path", function_id), ("x-iii-Invocation-ID", invocation_id),
               ("x-iii-Timestamp", str(timestamp))]
    if traceparent:
        headers.append(("traceparent", traceparent))
    if baggage:
        headers.append(("baggage", baggage))
    headers.extend(endpoint.headers)
    auth = endpoint.auth
    if auth is not None:
        if auth.type == "hmac":
            headers.append(("x-iii-Signature", sign(body, auth.secret, timestamp)))
        elif auth.type == "bearer":
            headers.append(("authorization", f"Bearer {auth.secret}"))
        else:
            assert auth.header is not None
            headers.append((auth.header, auth.secret))
    return headers


def encode_body(function_id: str, data: Any) -> bytes:
    try:
        return orjson.dumps(data)
    except TypeError as exc:  # (only an in-process caller can pass something that is not JSON)
        raise InvocationError(f"the payload of {function_id!r} cannot be encoded as JSON: {exc}",
                              code="serialization_error") from None


# --- the answer -----------------------------------------------------------------------------------


def result_of(endpoint: Endpoint, status: int, body: bytes) -> Any:
    """The call's result for the endpoint's answer (the reference's mapping): below 400 the JSON
    body (an empty body is ``None``; a 3xx body that is not JSON too), else an error."""
    if status < 400:
        if not body.strip():
            return None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if status >= 300:
                return None
            raise InvalidResponse(f"{endpoint.label} answered {status} with a body that is not JSON "
                                  f"({len(body)} bytes: {exc})") from None
    code, detail = HttpStatusError.code, ""
    try:
        answer = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        answer = None
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict):  # {"error": {"code", "message"}}: the endpoint's own error, passed on
        remote_code, remote_message = error.get("code"), error.get("message")
        if isinstance(remote_code, str) and _CODE.fullmatch(remote_code):
            code = remote_code
        if isinstance(remote_message, str):
            detail = f": {remote_message[:_MAX_REMOTE_MESSAGE]}"
    raise HttpStatusError(f"{endpoint.label} answered HTTP {status}{detail}", code=code)
