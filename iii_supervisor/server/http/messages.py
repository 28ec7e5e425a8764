"""HTTP requests and responses as values (sans-IO): what a function receives, what the front
makes of its answer, and the bytes of a response head.

h11 parses everything a client sends. Responses are serialised here instead of by h11's send
path: building h11 event objects and re-validating their headers cost ~70 µs per response on
this machine, more than half of h11's whole per-request cost, while a response assembled from
parts validated once (below) is a join of strings. The framing rules are h11's (and RFC 9112's):

- a buffered body gets ``content-length``; 204 and 304 responses get no body and no length;
- a streamed body uses the length the handler declared, else chunked encoding for HTTP/1.1
  clients, else (HTTP/1.0) it is delimited by closing the connection;
- the answer to ``HEAD`` carries the headers a ``GET`` would get, and no body;
- hop-by-hop headers from handlers (``connection``, ``transfer-encoding`` …) are not copied:
  framing is the front's job. A handler's ``connection: close`` closes after the response.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import orjson

SERVER = "iii-supervisor"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
NO_BODY_STATUSES = frozenset({204, 304})
#: never copied from a handler's headers: the front frames the response itself
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                         "proxy-connection", "content-length"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


# --- requests ---------------------------------------------------------------------------------


@attrs.define(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    #: lower-case names; repeated headers joined with ", "
    headers: dict[str, str]
    content_length: int | None
    chunked: bool
    #: an HTTP/1.1 client (HTTP/1.0 gets no chunked encoding and no keep-alive)
    http_11: bool
    #: the client lets the connection stay open after this request
    keep_alive: bool

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def is_json(self) -> bool:
        return "application/json" in self.headers.get("content-type", "")

    @property
    def head_only(self) -> bool:
        return self.method == "HEAD"


def parse_request(method: bytes, target: bytes, headers: Any, http_version: bytes) -> Request:
    """A request from the fields of an ``h11.Request`` (which validated them)."""
    text = target.decode("latin-1")
    if text.startswith("/"):  # origin-form, as good as every request: no need for urlsplit
        path, _, query = text.partition("?")
        path = path.partition("#")[0]
        query = query.partition("#")[0]
    else:  # absolute-form (http://host/path?q), or "*"
        parts = urlsplit(text)
        path, query = parts.path, parts.query
    fields: dict[str, str] = {}
    for name, value in headers:  # h11 gives lower-case names
        key, val = name.decode("latin-1"), value.decode("latin-1")
        fields[key] = f"{fields[key]}, {val}" if key in fields else val
    length = fields.get("content-length")
    http_11 = http_version == b"1.1"
    return Request(
        method=method.decode("ascii").upper(),
        path=path or "/",
        query=dict(parse_qsl(query, keep_blank_values=True)) if query else {},
        headers=fields,
        content_length=int(length) if length is not None else None,
        chunked="chunked" in fields.get("transfer-encoding", "").lower(),
        http_11=http_11,
        keep_alive=http_11 and not _has_token(fields.get("connection"), "close"),
    )


def _has_token(value: str | None, token: str) -> bool:
    return value is not None and any(part.strip().lower() == token for part in value.split(","))


# --- responses --------------------------------------------------------------------------------


@attrs.define(slots=True)
class Response:
    """A response head, and its body when buffered.

    ``headers`` are validated and free of hop-by-hop headers (see :func:`handler_headers`).
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    #: the length a streaming handler declared (a buffered body always gets its exact length)
    content_length: int | None = None
    #: the handler asked to close the connection afterwards
    close: bool = False


def error_body(code: str, message: str, **extra: Any) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, **extra}})


def json_response(status: int, code: str, message: str, *, headers: list[tuple[str, str]] | None = None,
                  **extra: Any) -> Response:
    return Response(status, [("content-type", "application/json"), *(headers or [])],
                    error_body(code, message, **extra))


def valid_status(value: Any) -> int:
    # 1xx are interim responses: a handler's answer must be final
    if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
        raise ValueError(f"status_code must be an integer from 200 to 599, got {value!r}")
    return value


def _checked_header(name: str, value: str) -> tuple[str, str]:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"header {name!r} has a line break in its value")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"header {name!r} has a value that is not latin-1: {value!r:.80}") from None
    return name, value


def _header_pairs(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [_checked_header(str(k), str(v)) for k, v in value.items()]
    if isinstance(value, list):
        pairs = []
        for item in value:
            name, sep, val = str(item).partition(":")
            if not sep:
                raise ValueError(f"header {item!r} is not 'Name: value'")
            pairs.append(_checked_header(name.strip(), val.strip()))
        return pairs
    if value is None:
        return []
    raise ValueError(f"headers must be an object or a list of 'Name: value' strings, got {type(value).__name__}")


def handler_headers(value: Any, into: Response) -> None:
    """Add a handler's headers (``{"name": "value"}`` or ``["Name: value", ...]``) to ``into``,
    validated; framing headers set its ``content_length`` / ``close`` instead. ValueError names
    the bad header."""
    for name, val in _header_pairs(value):
        lower = name.lower()
        if lower not in _HOP_BY_HOP:
            into.headers.append((name, val))
        elif lower == "content-length":
            if not (val.isascii() and val.isdigit()):
                raise ValueError(f"content-length must be a number of bytes, got {val!r}")
            into.content_length = int(val)
        elif lower == "connection" and _has_token(val, "close"):
            into.close = True


def render_result(result: Any) -> Response:
    """A handler's return value as a buffered response (see docs/http.md for the rules);
    ValueError names a bad status or header, or a body that cannot be encoded as JSON."""
    if not isinstance(result, dict) or not ({"status_code", "statusCode", "body", "headers"} & result.keys()):
        return Response(200, [("content-type", "application/json")], _json_body(result))
    return render_response(result)


def _json_body(value: Any) -> bytes:
    # a built-in's result is any Python value, and a worker's may be nested deeper than orjson
    # encodes: both are the handler's mistake (500), not a reason to drop the connection
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise ValueError(f"the body cannot be encoded as JSON: {exc}") from None


def render_response(result: dict[str, Any]) -> Response:
    """A ``{status_code?, headers?, body?}`` object as a buffered response; ValueError names a
    bad status or header."""
    response = Response(valid_status(result.get("status_code", result.get("statusCode", 200))), [])
    handler_headers(result.get("headers"), response)
    response.content_length = None  # a buffered body is sent with its real length
    body = result.get("body")
    has_type = any(k.lower() == "content-type" for k, _ in response.headers)
    if body is None or response.status in NO_BODY_STATUSES:
        response.body = b""
    elif isinstance(body, str) and has_type:
        response.body = body.encode()
    else:
        response.body = _json_body(body)
        if not has_type:
            response.headers.append(("content-type", "application/json"))
    return response


# --- bytes on the wire ------------------------------------------------------------------------

_STATUS_LINES = {int(s): f"HTTP/1.1 {int(s)} {s.phrase}\r\n" for s in HTTPStatus}
_date_cache: list[Any] = [0, ""]


def _status_line(status: int) -> str:
    line = _STATUS_LINES.get(status)
    return line if line is not None else f"HTTP/1.1 {status} \r\n"


def http_date() -> str:
    """The current ``Date`` value, formatted once per second."""
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache[:] = [now, formatdate(now, usegmt=True)]
    return _date_cache[1]  # type: ignore[no-any-return]


def encode_head(response: Response, *, length: int | None, chunked: bool, close: bool) -> bytes:
    """The status line and headers, with ``content-length: length`` or chunked encoding (or
    neither: no body, or a body delimited by closing), and ``connection: close`` if ``close``."""
    parts = [_status_line(response.status)]
    own_server = own_date = True
    for name, value in response.headers:
        if own_server or own_date:
            lower = name.lower()
            own_server = own_server and lower != "server"
            own_date = own_date and lower != "date"
        parts += (name, ": ", value, "\r\n")
    if own_server:
        parts.append("server: " + SERVER + "\r\n")
    if own_date:
        parts += ("date: ", http_date(), "\r\n")
    if length is not None:
        parts += ("content-length: ", str(length), "\r\n")
    elif chunked:
        parts.append("transfer-encoding: chunked\r\n")
    if close:
        parts.append("connection: close\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


def encode_chunk(data: bytes) -> bytes:
    """``data`` in chunked encoding (not empty: an empty chunk ends the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def stream_framing(response: Response, request: Request) -> tuple[int | None, bool, bool]:
    """How a streamed body to ``request`` is delimited: ``(content_length, chunked,
    ends_by_closing)``; all empty for a status without a body."""
    if response.status in NO_BODY_STATUSES:
        return None, False, False
    length = response.content_length
    chunked = length is None and request.http_11
    return length, chunked, length is None and not chunked


def encode_response(response: Response, *, head_only: bool, close: bool) -> bytes:
    """A whole buffered response, head and body (no body if it answers a ``HEAD``)."""
    no_body = response.status in NO_BODY_STATUSES
    head = encode_head(response, length=None if no_body else len(response.body), chunked=False, close=close)
    if no_body or head_only or not response.body:
        return head
    return head + response.body


def request_data(request: Request, pattern: str, method: str, params: dict[str, str],
                 body: bytes | None) -> dict[str, Any]:
    """The payload an ``http`` trigger's function gets (without its channel references).

    ``body`` is the buffered body (None when it is streamed): parsed JSON for a JSON request,
    else text when it decodes, else None (the handler reads ``request_body``).
    """
    parsed: Any = None
    if body:
        if request.is_json:
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = None
        else:
            try:
                parsed = body.decode()
            except UnicodeDecodeError:
                parsed = None
    return {
        "method": request.method,
        "path": pattern,
        "request_path": request.path,
        "path_params": params,
        "query_params": request.query,
        "headers": request.headers,
        "body": parsed,
        "trigger": {"type": "http", "path": pattern, "method": method},
    }
