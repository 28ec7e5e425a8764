"""HTTP messages as values: request fields, rendering of handler results, response bytes.

Pure: no sockets, no trio. Every response built here is also read back with a client-side h11
connection, so the bytes are checked by the same parser family the front trusts for requests.
"""

from __future__ import annotations

import re
from typing import Any

import h11
import pytest

from iii_supervisor.server.http import messages as http_messages
from iii_supervisor.server.http.messages import (
    LAST_CHUNK,
    Response,
    encode_chunk,
    encode_head,
    encode_response,
    handler_headers,
    http_date,
    parse_request,
    render_result,
    stream_framing,
)


@pytest.fixture(autouse=True)
def fixed_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_messages, "http_date", lambda: "Wed, 25 Nov 2026 07:00:00 GMT")


def h11_request(raw: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    return event


def request_of(raw: bytes) -> Any:
    event = h11_request(raw)
    return parse_request(event.method, event.target, event.headers, event.http_version)


def read_back(data: bytes, method: str = "GET") -> tuple[h11.Response, bytes, bool]:
    """Parse ``data`` as the answer to a ``method`` request: (head, body, ended without close)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")  # then the connection closes
    head, body = None, b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return head, body, True
        elif isinstance(event, h11.ConnectionClosed) or event is h11.NEED_DATA:
            raise AssertionError(f"response not complete: {data!r}")


def headers_of(head: h11.Response) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in head.headers}


# --- requests ---------------------------------------------------------------------------------


def test_request_fields() -> None:
    req = request_of(b"GET /users/1?x=1&y=&x=2 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-A: 2\r\n\r\n")
    assert (req.method, req.path) == ("GET", "/users/1")
    assert req.query == {"x": "2", "y": ""}  # the last value of a repeated parameter wins
    assert req.headers == {"host": "h", "x-a": "1, 2"}
    assert req.http_11 and req.keep_alive and not req.has_body and not req.head_only


def test_absolute_form_target_and_fragment() -> None:
    assert request_of(b"GET http://h/a/b?q=1 HTTP/1.1\r\nHost: h\r\n\r\n").path == "/a/b"
    req = request_of(b"GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (req.path, req.query) == ("/a", {})


@pytest.mark.parametrize(("raw", "keep_alive"), [
    (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, Close\r\n\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: closed\r\n\r\n", True),
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False),  # as h11: no HTTP/1.0 keep-alive
])
def test_keep_alive_follows_the_client(raw: bytes, keep_alive: bool) -> None:
    assert request_of(raw).keep_alive is keep_alive


def test_body_framing_of_requests() -> None:
    req = request_of(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n")
    assert req.has_body and req.content_length == 5 and req.is_json and not req.chunked
    req = request_of(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert req.has_body and req.chunked and req.content_length is None


# --- handler results --------------------------------------------------------------------------


def test_plain_values_become_json() -> None:
    for value, body in ([1, 2], b"[1,2]"), ("text", b'"text"'), (None, b"null"), ({"a": 1}, b'{"a":1}'):
        response = render_result(value)
        assert (response.status, response.headers, response.body) == (200, [("content-type", "application/json")],
                                                                       body)


def test_response_dicts() -> None:
    r = render_result({"status_code": 201, "headers": {"X-A": "1"}, "body": {"ok": True}})
    assert (r.status, r.headers, r.body) == (201, [("X-A", "1"), ("content-type", "application/json")],
                                             b'{"ok":true}')
    r = render_result({"statusCode": 200, "headers": ["Content-Type: text/plain", "X-B: 2"], "body": "as is"})
    assert (r.headers, r.body) == ([("Content-Type", "text/plain"), ("X-B", "2")], b"as is")
    r = render_result({"status_code": 200, "body": "no type: JSON"})
    assert r.body == b'"no type: JSON"'
    for status in (204, 304):
        assert render_result({"status_code": status, "body": {"dropped": 1}}).body == b""


def test_framing_headers_from_handlers_are_not_copied() -> None:
    r = render_result({"status_code": 200, "body": "x", "headers": {
        "content-type": "text/plain", "Content-Length": "999", "Transfer-Encoding": "chunked",
        "Connection": "close", "Keep-Alive": "timeout=5"}})
    assert r.headers == [("content-type", "text/plain")]
    assert r.close and r.content_length is None  # a buffered body is sent with its real length


def test_streamed_heads_keep_a_declared_length() -> None:
    head = Response(200, [])
    handler_headers({"content-length": "10", "x-a": "1"}, head)
    handler_headers(["X-B: 2"], head)  # set_headers may come more than once
    assert (head.headers, head.content_length, head.close) == ([("x-a", "1"), ("X-B", "2")], 10, False)
    for bad in ("ten", "-1", "1.5", "\u00b2"):
        with pytest.raises(ValueError, match="content-length must be a number of bytes"):
            handler_headers({"content-length": bad}, Response(200, []))


@pytest.mark.parametrize(("result", "match"), [
    ({"status_code": 150}, "status_code"),
    ({"status_code": "200"}, "status_code"),
    ({"status_code": True}, "status_code"),
    ({"status_code": 200, "headers": {"bad name": "v"}}, "invalid header name"),
    ({"status_code": 200, "headers": {"x": "a\r\nb"}}, "line break"),
    ({"status_code": 200, "headers": {"x": "\u2603"}}, "latin-1"),
    ({"status_code": 200, "headers": ["no colon"]}, "Name: value"),
    ({"status_code": 200, "headers": 5}, "headers must be"),
])
def test_invalid_results_name_the_bad_value(result: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render_result(result)


# --- bytes on the wire ------------------------------------------------------------------------


def test_buffered_response_bytes() -> None:
    data = encode_response(render_result({"hello": "world"}), head_only=False, close=False)
    assert data == (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nserver: iii-supervisor\r\n"
                    b"date: Wed, 25 Nov 2026 07:00:00 GMT\r\ncontent-length: 17\r\n\r\n" + b'{"hello":"world"}')
    head, body, _ = read_back(data)
    assert head.status_code == 200 and body == b'{"hello":"world"}'


def test_head_204_and_close() -> None:
    response = render_result({"status_code": 200, "body": {"a": 1}})
    head, body, _ = read_back(encode_response(response, head_only=True, close=False), method="HEAD")
    assert body == b"" and headers_of(head)["content-length"] == "7"  # the length a GET would get
    data = encode_response(render_result({"status_code": 204}), head_only=False, close=True)
    head, body, _ = read_back(data)
    assert head.status_code == 204 and body == b""
    assert "content-length" not in headers_of(head) and headers_of(head)["connection"] == "close"


def test_handler_server_and_date_replace_ours() -> None:
    response = render_result({"status_code": 200, "headers": {"Server": "mine", "Date": "then"}, "body": 1})
    head, _, _ = read_back(encode_response(response, head_only=False, close=False))
    assert [v for k, v in head.headers if k == b"server"] == [b"mine"]
    assert [v for k, v in head.headers if k == b"date"] == [b"then"]


def test_unknown_status_has_an_empty_reason() -> None:
    head, _, _ = read_back(encode_response(render_result({"status_code": 299}), head_only=False, close=False))
    assert head.status_code == 299 and head.reason == b""


def test_chunked_stream_bytes() -> None:
    head = encode_head(Response(200, [("content-type", "text/plain")]), length=None, chunked=True, close=False)
    data = head + encode_chunk(b"hello ") + encode_chunk(b"x" * 300) + LAST_CHUNK
    assert encode_chunk(b"x" * 300).startswith(b"12c\r\n")
    got, body, _ = read_back(data)
    assert headers_of(got)["transfer-encoding"] == "chunked" and body == b"hello " + b"x" * 300


def test_close_delimited_stream_bytes() -> None:
    head = encode_head(Response(200, []), length=None, chunked=False, close=True)
    got, body, _ = read_back(head + b"until the end")
    assert body == b"until the end" and headers_of(got)["connection"] == "close"
    assert "content-length" not in headers_of(got) and "transfer-encoding" not in headers_of(got)


def test_http_date_is_an_imf_fixdate() -> None:
    # (the fixture patches the module's name; this module imported the real function)
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", http_date())


def test_stream_framing_follows_the_client_and_the_handler() -> None:
    http11 = request_of(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    http10 = request_of(b"GET / HTTP/1.0\r\n\r\n")
    assert stream_framing(Response(200, []), http11) == (None, True, False)  # chunked
    assert stream_framing(Response(200, []), http10) == (None, False, True)  # ends by closing
    assert stream_framing(Response(200, [], content_length=10), http10) == (10, False, False)
    assert stream_framing(Response(204, [], content_length=10), http11) == (None, False, False)


def test_a_result_that_is_not_json_is_a_value_error_naming_it() -> None:
    # (a JSON result nested deeper than orjson encodes comes from a worker's 300-deep reply)
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    for result in ({1, 2}, {"body": {1, 2}}, deep, {"body": deep}):
        with pytest.raises(ValueError, match="the body cannot be encoded as JSON"):
            render_result(result)
