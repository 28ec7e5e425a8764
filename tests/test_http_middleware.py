"""HTTP middleware: the pure decisions (answers, inputs, config validation), then the front in this
process with fake workers over socket pairs (order, continue/respond, errors, timeouts)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from iii_supervisor.config import parse_config
from iii_supervisor.errors import ConfigError, FunctionNotFound, InvocationTimeout, TriggerRegistrationError
from iii_supervisor.protocol import InvokeFunction
from iii_supervisor.registry import TriggerEntry
from iii_supervisor.server import http as http_module
from iii_supervisor.server.http.messages import parse_request
from iii_supervisor.server.http.middleware import BadAnswer, Continue, Respond, middleware_input, read_answer
from iii_supervisor.server.http.routes import MAX_ROUTE_MIDDLEWARE, route_from_trigger
from inprocess import EngineParts, FakeWorker, engine_parts
from supervisor_harness import Supervisor, write_worker

# --- the answers ------------------------------------------------------------------------------


def test_continue_with_and_without_context() -> None:
    assert read_answer({"action": "continue"}) == Continue({})
    assert read_answer({"action": "continue", "context": None}) == Continue({})
    assert read_answer({"action": "continue", "context": {"user": "u1"}}) == Continue({"user": "u1"})


def test_respond_renders_the_response_as_a_handler_return_is_rendered() -> None:
    decision = read_answer({"action": "respond", "response": {
        "status_code": 401, "headers": ["WWW-Authenticate: Bearer"], "body": {"error": "no token"}}})
    assert isinstance(decision, Respond)
    response = decision.response
    assert response.status == 401
    assert ("WWW-Authenticate", "Bearer") in response.headers
    assert ("content-type", "application/json") in response.headers
    assert response.body == b'{"error":"no token"}'
    text = read_answer({"action": "respond", "response": {"status_code": 429, "headers": {
        "content-type": "text/plain"}, "body": "slow down"}})
    assert isinstance(text, Respond) and text.response.body == b"slow down"
    # an empty response object: 200 with no body (status_code defaults to 200, as for handlers)
    empty = read_answer({"action": "respond", "response": {}})
    assert isinstance(empty, Respond) and (empty.response.status, empty.response.body) == (200, b"")


@pytest.mark.parametrize(("answer", "says"), [
    (None, "returned None, not an object with an 'action'"),
    ([1, 2], "returned [1, 2], not an object"),
    ("continue", "returned 'continue', not an object"),
    ({}, "without an 'action'"),
    ({"context": {}}, "without an 'action'"),
    ({"action": "stop"}, "unknown action 'stop' (expected 'continue' or 'respond')"),
    ({"action": 1}, "unknown action 1"),
    ({"action": "continue", "context": [1]}, "context that is not an object: [1]"),
    ({"action": "respond"}, "'respond' without a response object (got None)"),
    ({"action": "respond", "response": "nope"}, "without a response object (got 'nope')"),
    ({"action": "respond", "response": {"status_code": 99}}, "invalid response: status_code must be an integer "
                                                               "from 200 to 599, got 99"),
    ({"action": "respond", "response": {"headers": {"bad name": "x"}}}, "invalid header name 'bad name'"),
    ({"action": "respond", "response": {"headers": 5}}, "headers must be an object or a list"),
])
def test_malformed_answers_say_what_is_wrong(answer: Any, says: str) -> None:
    with pytest.raises(BadAnswer) as caught:
        read_answer(answer)
    assert says in str(caught.value)


def test_a_huge_answer_is_named_briefly() -> None:
    with pytest.raises(BadAnswer) as caught:
        read_answer("x" * 100_000)
    assert len(str(caught.value)) < 300


def _garbage(rng: random.Random, depth: int = 0) -> Any:
    """A random answer, biased towards the keys and values read_answer looks at."""
    keys = ["action", "context", "response", "status_code", "statusCode", "headers", "body", "x", ""]
    scalars: list[Any] = [None, True, False, 0, -1, 200, 401, 599, 600, 1e300, "continue", "respond", "",
                          "a\r\nb", "é", "\u2603", "Name: v", "bad name: v", ["Content-Type: text/plain"],
                          2**70, float("nan")]
    roll = rng.random()
    if depth > 3 or roll < 0.4:
        return rng.choice(scalars)
    if roll < 0.55:
        return [_garbage(rng, depth + 1) for _ in range(rng.randrange(4))]
    value = {rng.choice(keys): _garbage(rng, depth + 1) for _ in range(rng.randrange(5))}
    if rng.random() < 0.6:
        value["action"] = rng.choice(["continue", "respond", "stop", None, 3])
    if value.get("action") == "respond" and rng.random() < 0.8:
        value["response"] = {rng.choice(keys[3:]): _garbage(rng, depth + 1) for _ in range(rng.randrange(4))}
    return value


def test_garbage_answers_are_read_or_refused_never_crash() -> None:
    rng = random.Random(13)
    outcomes = {Continue: 0, Respond: 0, BadAnswer: 0}
    for _ in range(5000):
        answer = _garbage(rng)
        try:
            outcomes[type(read_answer(answer))] += 1
        except BadAnswer as exc:
            assert len(str(exc)) < 700
            outcomes[BadAnswer] += 1
    assert all(n > 100 for n in outcomes.values()), outcomes  # every outcome was exercised


def test_middleware_input_has_the_reference_shape() -> None:
    request = parse_request(b"GET", b"/users/42?page=2", [(b"host", b"x"), (b"authorization", b"Bearer t")], b"1.1")
    payload = middleware_input(request, "/users/:id", {"id": "42"}, {"user": "u1"})
    assert payload == {
        "phase": "preHandler",
        "request": {"path_params": {"id": "42"}, "query_params": {"page": "2"},
                    "headers": {"host": "x", "authorization": "Bearer t"}, "method": "GET",
                    "path": "/users/:id", "request_path": "/users/42"},
        "context": {"user": "u1"},
    }


# --- validation at registration ---------------------------------------------------------------


def _trigger(config: dict[str, Any]) -> TriggerEntry:
    return TriggerEntry("t1", "http", "api.fn", {"api_path": "/x", **config}, None)


def test_middleware_ids_are_optional_and_kept_in_order() -> None:
    assert route_from_trigger(_trigger({})).middleware_function_ids == ()
    assert route_from_trigger(_trigger({"middleware_function_ids": None})).middleware_function_ids == ()
    assert route_from_trigger(_trigger({"middleware_function_ids": []})).middleware_function_ids == ()
    route = route_from_trigger(_trigger({"middleware_function_ids": ["b.auth", "a.log"]}))
    assert route.middleware_function_ids == ("b.auth", "a.log")


@pytest.mark.parametrize(("value", "says"), [
    ("auth", "must be a list of function ids, got 'auth'"),
    ({"a": 1}, "must be a list of function ids"),
    (["ok", 42], "middleware_function_ids[1] must be a non-empty function id"),
    ([""], "middleware_function_ids[0] must be a non-empty function id"),
    (["  "], "middleware_function_ids[0]"),
    (["x" * 1025], "at most 1024 characters"),
    (["m"] * (MAX_ROUTE_MIDDLEWARE + 1), f"lists {MAX_ROUTE_MIDDLEWARE + 1} functions, more than the "
                                         f"{MAX_ROUTE_MIDDLEWARE} allowed"),
])
def test_bad_middleware_ids_are_refused_naming_the_value(value: Any, says: str) -> None:
    with pytest.raises(TriggerRegistrationError) as caught:
        route_from_trigger(_trigger({"middleware_function_ids": value}))
    assert "http trigger 't1': config.middleware_function_ids" in caught.value.message
    assert says in caught.value.message


def test_global_middleware_config_is_ordered_by_priority_then_file_order() -> None:
    config = parse_config({"http": {"middleware": [
        {"function_id": "c", "priority": 10}, {"function_id": "a"}, {"function_id": "b", "phase": "preHandler"},
        {"function_id": "first", "priority": -1}]}}, modules=[http_module.SPEC])
    assert config.section("http").global_middleware() == ("first", "a", "b", "c")


@pytest.mark.parametrize(("middleware", "says"), [
    ("auth", "http.middleware"),
    (["auth"], "expected a list of tables ([[http.middleware]] entries), got 'auth' as entry 0"),
    ([{"priority": 1}], "http.middleware[0].function_id"),
    ([{"function_id": ""}], "function_id must be a non-empty function id"),
    ([{"function_id": "a", "phase": "onResponse"}], "'phase' must be in ['preHandler'] (got 'onResponse')"),
    ([{"function_id": "a", "prio": 1}], "extra fields found (prio)"),
    ([{"function_id": "a", "priority": "high"}], "http.middleware[0].priority"),
    ([{"function_id": "a"}] * 17, "at most 16"),
])
def test_bad_global_middleware_config_is_refused(middleware: Any, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"http": {"middleware": middleware}}, modules=[http_module.SPEC])
    assert says in caught.value.message


# --- in process: the front, fake workers ------------------------------------------------------


@asynccontextmanager
async def api(**http_config: Any) -> AsyncIterator[tuple[EngineParts, FakeWorker, httpx.AsyncClient]]:
    config = {"http": {"port": 0, "request_timeout_ms": 2000, **http_config}}
    async with engine_parts(modules=[http_module.SPEC], config=config) as parts:
        worker = await parts.worker("api")
        port = parts.modules["http"].port  # type: ignore[attr-defined]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
            yield parts, worker, client


def _error(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    return error


async def test_order_payloads_and_context_with_global_and_route_middleware() -> None:
    calls: list[tuple[str, Any]] = []

    def recorder(name: str, answer: Any) -> Any:
        async def handler(data: Any) -> Any:
            calls.append((name, data))
            return answer
        return handler

    with trio.fail_after(10):
        async with api(middleware=[{"function_id": "g.late", "priority": 5},
                                   {"function_id": "g.early", "priority": 1}]) as (_parts, worker, client):
            await worker.register_function("g.early", recorder("g.early", {"action": "continue",
                                                                          "context": {"tenant": "t1"}}))
            await worker.register_function("g.late", recorder("g.late", {"action": "continue"}))
            await worker.register_function("cond", recorder("cond", True))
            await worker.register_function("m.auth", recorder("m.auth", {"action": "continue",
                                                                         "context": {"user": "u1", "tenant": "t2"}}))
            await worker.register_function("m.log", recorder("m.log", {"action": "continue"}))
            await worker.register_function("h", recorder("h", {"status_code": 200, "body": "ok",
                                                               "headers": {"content-type": "text/plain"}}))
            await worker.register_function("plain", recorder("plain", {"body": "plain"}))
            await worker.register_trigger("http", "h", {"api_path": "/users/:id", "http_method": "POST",
                                                        "condition_function_id": "cond",
                                                        "middleware_function_ids": ["m.auth", "m.log"]})
            await worker.register_trigger("http", "plain", {"api_path": "/plain"})

            r = await client.post("/users/42?x=1", json={"name": "n"}, headers={"authorization": "Bearer t"})
            assert (r.status_code, r.text) == (200, "ok")
            assert [name for name, _ in calls] == ["g.early", "g.late", "cond", "m.auth", "m.log", "h"]
            by_name = dict(calls)
            first = by_name["g.early"]
            assert first["phase"] == "preHandler" and first["context"] == {}
            assert first["request"] == {"path_params": {"id": "42"}, "query_params": {"x": "1"},
                                        "headers": first["request"]["headers"], "method": "POST",
                                        "path": "/users/:id", "request_path": "/users/42"}
            assert first["request"]["headers"]["authorization"] == "Bearer t"
            assert "body" not in first["request"]  # middleware does not get the body
            # each middleware sees what the ones before it added; later keys win
            assert by_name["g.late"]["context"] == {"tenant": "t1"}
            assert by_name["m.auth"]["context"] == {"tenant": "t1"}
            assert by_name["m.log"]["context"] == {"tenant": "t2", "user": "u1"}
            handler = by_name["h"]
            assert handler["context"] == {"tenant": "t2", "user": "u1"}
            assert handler["body"] == {"name": "n"} and "request_body" in handler
            assert "context" not in by_name["cond"]  # the condition runs before the route's middleware
            # all the calls for one request are in one trace (the client sent none: a new one)
            traces = {event.traceparent.split("-")[1] for event in worker.received
                      if isinstance(event, InvokeFunction) and event.traceparent}
            assert len(traces) == 1, traces

            # a route without middleware of its own still gets the global ones
            calls.clear()
            r = await client.get("/plain")
            assert r.json() == "plain"
            assert [name for name, _ in calls] == ["g.early", "g.late", "plain"]
            assert calls[-1][1]["context"] == {"tenant": "t1"}

            # no route: no middleware runs
            calls.clear()
            assert (await client.get("/nope")).status_code == 404
            assert calls == []


async def test_respond_short_circuits_and_a_false_condition_skips_middleware() -> None:
    ran: list[str] = []

    async def deny(data: Any) -> Any:
        ran.append("deny")
        if data["request"]["headers"].get("authorization") == "Bearer good":
            return {"action": "continue"}
        return {"action": "respond", "response": {"status_code": 401, "headers": {"www-authenticate": "Bearer"},
                                                  "body": {"error": "missing_or_invalid_bearer"}}}

    async def never(_data: Any) -> Any:
        ran.append("never")
        return {"action": "continue"}

    async def handler(data: Any) -> Any:
        ran.append("handler")
        return {"status_code": 200, "body": {"hello": data["path_params"]["id"]}}

    async def allow(data: Any) -> Any:
        return data["query_params"].get("ok") == "1"

    with trio.fail_after(10):
        async with api() as (_parts, worker, client):
            for fid, fn in [("deny", deny), ("never", never), ("h", handler), ("allow", allow)]:
                await worker.register_function(fid, fn)
            await worker.register_trigger("http", "h", {"api_path": "/a/:id", "condition_function_id": "allow",
                                                        "middleware_function_ids": ["deny", "never"]})
            r = await client.get("/a/1?ok=1")
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert r.json() == {"error": "missing_or_invalid_bearer"}
            assert ran == ["deny"]  # neither the next middleware nor the handler ran
            r = await client.head("/a/1?ok=1")  # HEAD falls back to GET: same answer, no body
            assert r.status_code == 401 and r.content == b""
            ran.clear()
            r = await client.get("/a/2?ok=0", headers={"authorization": "Bearer good"})
            assert r.status_code == 422 and ran == []  # the condition said no: no middleware ran
            r = await client.get("/a/3?ok=1", headers={"authorization": "Bearer good"})
            assert r.json() == {"hello": "3"} and ran == ["deny", "never", "handler"]


async def test_errors_timeouts_missing_functions_and_malformed_answers() -> None:
    async def boom(_data: Any) -> Any:
        raise RuntimeError("no auth backend")

    async def slow(_data: Any) -> Any:
        await trio.sleep(30)

    async def as_told(data: Any) -> Any:
        answers = {"none": None, "list": [1], "stop": {"action": "stop"},
                   "bad-status": {"action": "respond", "response": {"status_code": "401"}}}
        return answers[data["request"]["query_params"]["a"]]

    handled: list[Any] = []

    async def handler(data: Any) -> Any:
        handled.append(data)
        return {"status_code": 200}

    with trio.fail_after(15):
        async with api(request_timeout_ms=300) as (parts, worker, client):
            for fid, fn in [("boom", boom), ("slow", slow), ("as_told", as_told), ("h", handler)]:
                await worker.register_function(fid, fn)
            async def nested(_data: Any) -> Any:
                raise FunctionNotFound("function 'elsewhere' not found")

            async def nested_timeout(_data: Any) -> Any:
                raise InvocationTimeout("'elsewhere' took too long")

            parts.registry.add_builtin("mw.nested", nested, "")
            parts.registry.add_builtin("mw.nested_timeout", nested_timeout, "")
            for path, mw in [("/boom", "boom"), ("/slow", "slow"), ("/told", "as_told"), ("/missing", "gone.mw"),
                             ("/nested", "mw.nested"), ("/nested-timeout", "mw.nested_timeout")]:
                await worker.register_trigger("http", "h", {"api_path": path, "middleware_function_ids": [mw]})

            r = await client.get("/boom")
            assert r.status_code == 500
            assert _error(r) == {"code": "invocation_failed", "message": "middleware 'boom' failed: no auth backend"}

            started = trio.current_time()
            r = await client.get("/slow")
            assert r.status_code == 504
            err = _error(r)
            assert err["code"] == "MIDDLEWARE_TIMEOUT" and "'slow' of route GET /slow" in err["message"]
            assert trio.current_time() - started < 2.5

            for answer, says in [("none", "returned None, not an object"), ("list", "returned [1]"),
                                 ("stop", "unknown action 'stop'"), ("bad-status", "status_code must be")]:
                r = await client.get("/told", params={"a": answer})
                assert r.status_code == 500, (answer, r.text)
                err = _error(r)
                assert err["code"] == "invalid_middleware_response"
                assert err["message"].startswith("middleware 'as_told' ") and says in err["message"], err

            # a built-in middleware whose own call fails (its error keeps its code): not "not registered"
            r = await client.get("/nested")
            assert r.status_code == 503
            assert _error(r) == {"code": "function_not_found",
                                 "message": "middleware 'mw.nested' failed: function 'elsewhere' not found"}
            # a built-in middleware whose own call timed out, well before the request's deadline: not ours
            r = await client.get("/nested-timeout")
            assert r.status_code == 504
            assert _error(r) == {"code": "invocation_timeout",
                                 "message": "middleware 'mw.nested_timeout' failed: 'elsewhere' took too long"}

            r = await client.get("/missing")
            assert r.status_code == 503
            assert _error(r) == {"code": "function_not_found", "message": "route GET /missing has middleware "
                                                                          "'gone.mw', which is not registered"}
            # once it is registered, the same route works: functions are looked up per request
            await worker.register_function("gone.mw", lambda _d: _continue())
            assert (await client.get("/missing")).status_code == 200

            assert len(handled) == 1  # only that last request reached the handler
            assert parts.invoker.pending == {}  # the timed-out middleware call was forgotten too
            assert len(parts.channels) == 0  # no channel was opened for an answer given by middleware


async def _continue() -> dict[str, str]:
    return {"action": "continue"}


async def test_bad_middleware_ids_are_refused_to_the_registering_worker() -> None:
    with trio.fail_after(10):
        async with api() as (_parts, worker, client):
            await worker.register_function("h", _continue)
            with pytest.raises(TriggerRegistrationError, match=r"middleware_function_ids\[0\] must be a non-empty"):
                await worker.register_trigger("http", "h", {"api_path": "/x", "middleware_function_ids": [7]})
            with pytest.raises(TriggerRegistrationError, match="must be a list of function ids"):
                await worker.register_trigger("http", "h", {"api_path": "/x", "middleware_function_ids": "auth"})
            assert (await client.get("/x")).status_code == 404  # nothing was registered
            assert not worker.session.closed.is_set()


async def test_global_middleware_answers_before_the_body_is_read() -> None:
    async def gate(data: Any) -> Any:
        if data["request"]["headers"].get("x-key") == "k":
            return {"action": "continue"}
        return {"action": "respond", "response": {"status_code": 403, "body": {"error": "forbidden"}}}

    async def upload(data: Any) -> Any:
        return {"status_code": 200, "body": {"size": len(data["body"] or "")}}

    with trio.fail_after(10):
        async with api(middleware=[{"function_id": "gate"}]) as (_parts, worker, client):
            await worker.register_function("gate", gate)
            await worker.register_function("upload", upload)
            await worker.register_trigger("http", "upload", {"api_path": "/upload", "http_method": "POST"})
            body = b"x" * 10_000
            r = await client.post("/upload", content=body)
            assert r.status_code == 403 and r.json() == {"error": "forbidden"}
            r = await client.post("/upload", content=body, headers={"x-key": "k"})
            assert r.status_code == 200 and r.json() == {"size": 10_000}
            # a client that sends the head and then nothing: answered at once, not after body_timeout
            port = client.base_url.port
            assert port is not None
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            with trio.fail_after(2):
                answer = b""
                while chunk := await stream.receive_some(65536):  # until the front closes
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 403 ") and b"connection: close" in answer
            await stream.aclose()


# --- end to end: a real supervisor, real worker processes (our SDK) ---------------------------

#: the middleware live in one worker, the routes in another: middleware are plain functions,
#: called through the registry like any other
AUTH_WORKER = """
def _step(name):
    def middleware(req):
        order = req["context"].get("order", []) + [name]
        return {"action": "continue", "context": {"order": order}}
    return middleware


def bearer(req):
    token = req["request"]["headers"].get("authorization", "").removeprefix("Bearer ")
    if not token:
        return {"action": "respond", "response": {"status_code": 401, "headers": {"www-authenticate": "Bearer"},
                                                  "body": {"error": "missing_or_invalid_bearer"}}}
    order = req["context"].get("order", []) + ["auth.bearer"]
    return {"action": "continue", "context": {"order": order, "user": token,
                                              "route": req["request"]["path"]}}


def broken(req):
    raise RuntimeError("auth backend down")


def nested(req):  # a middleware whose own call fails: its error, not "middleware not registered"
    return iii.trigger({"function_id": "auth.nowhere", "payload": {}})


iii.register_function("auth.global", _step("auth.global"))
iii.register_function("auth.bearer", bearer)
iii.register_function("auth.broken", broken)
iii.register_function("auth.nested", nested)
iii.register_function("auth.ready", lambda d: True)
"""

API_WORKER = """
from iii_supervisor import http
from iii_supervisor.types import HttpRequest, HttpResponse


def me(req):
    return {"status_code": 200, "body": {"context": req.get("context"), "id": req["path_params"]["id"]}}


@http
async def stream(req: HttpRequest, response: HttpResponse):
    await response.status(200)
    await response.headers({"content-type": "text/plain"})
    await response.writer.write(f"hello {req.context['user']}\\n".encode())
    await response.writer.close_async()


@http
async def upload(req: HttpRequest, response: HttpResponse):
    data = await req.request_body.read_all()
    return {"status_code": 200, "body": {"size": len(data), "user": req.context["user"]}}


def route(function_id, api_path, middleware, method="GET"):
    iii.register_trigger({"type": "http", "function_id": function_id,
                          "config": {"api_path": api_path, "middleware_function_ids": middleware,
                                     "http_method": method}})


iii.register_function("api.me", me)
iii.register_function("api.tag", lambda req: {"action": "continue",
                                              "context": {"order": req["context"]["order"] + ["api.tag"]}})
iii.register_function("api.stream", stream)
iii.register_function("api.upload", upload)
route("api.upload", "/upload", ["auth.bearer"], "POST")
route("api.me", "/me/:id", ["auth.bearer", "api.tag"])
route("api.stream", "/stream", ["auth.bearer"])
route("api.me", "/broken/:id", ["auth.broken"])
route("api.me", "/missing/:id", ["auth.nowhere"])
route("api.me", "/nested/:id", ["auth.nested"])
iii.register_function("api.ready", lambda d: True)
"""


async def test_middleware_end_to_end_across_worker_processes(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    write_worker(workers, "auth", AUTH_WORKER)
    write_worker(workers, "api", API_WORKER)
    config = tmp_path / "config.toml"
    config.write_text('[http]\nrequest_timeout_ms = 5000\n\n'
                      '[[http.middleware]]\nfunction_id = "auth.global"\npriority = 1\n')
    with trio.fail_after(40):
        async with Supervisor(workers, "--config", str(config)) as sup:
            await sup.start(functions=("auth.ready", "api.ready"))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sup.http_port}", trust_env=False,
                                         timeout=10) as client:
                r = await client.get("/me/7", headers={"authorization": "Bearer alice"})
                assert r.status_code == 200, r.text
                assert r.json() == {"id": "7", "context": {"order": ["auth.global", "auth.bearer", "api.tag"],
                                                           "user": "alice", "route": "/me/:id"}}
                r = await client.get("/me/7")
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
                assert r.json() == {"error": "missing_or_invalid_bearer"}
                r = await client.get("/stream", headers={"authorization": "Bearer bob"})
                assert (r.status_code, r.text) == (200, "hello bob\n")  # an @http stream behind middleware
                # a streamed (chunked, not buffered) upload waits while the middleware runs, then flows
                async def body() -> AsyncIterator[bytes]:
                    for _ in range(16):
                        yield b"x" * 65536

                r = await client.post("/upload", content=body(), headers={"authorization": "Bearer carol"})
                assert (r.status_code, r.json()) == (200, {"size": 16 * 65536, "user": "carol"})
                r = await client.post("/upload", content=body())
                assert r.status_code == 401  # answered without reading the upload
                r = await client.get("/broken/1")
                assert r.status_code == 500
                assert _error(r) == {"code": "invocation_failed",
                                     "message": "middleware 'auth.broken' failed: auth backend down"}
                r = await client.get("/missing/1")
                assert r.status_code == 503 and "'auth.nowhere', which is not registered" in _error(r)["message"]
                r = await client.get("/nested/1")
                assert r.status_code == 500
                assert _error(r) == {"code": "invocation_failed", "message": "middleware 'auth.nested' failed: "
                                     "function_not_found: function 'auth.nowhere' not found"}
            assert "Traceback" not in sup.output()
