"""External HTTP functions in-process: the real module, a real Session per fake worker, and a
real HTTP server on 127.0.0.1 (tests/http_endpoint.py) as the endpoint."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid

import pytest
import trio

from http_endpoint import closed_port, endpoint_server
from iii_supervisor.errors import EngineError, FunctionNotFound
from iii_supervisor.modules import external
from iii_supervisor.protocol import FunctionRegistered, RegisterFunction
from inprocess import FakeWorker, engine_parts

SECRET = "hmac-s3cr3t-value"
TOKEN = "bearer-s3cr3t-value"


@pytest.fixture(autouse=True)
def _secrets(monkeypatch):
    monkeypatch.setenv("XF_HMAC", SECRET)
    monkeypatch.setenv("XF_TOKEN", TOKEN)
    monkeypatch.delenv("XF_MISSING", raising=False)


async def register(worker: FakeWorker, function_id: str, invocation: object) -> FunctionRegistered:
    start = len(worker.received)
    worker.send(RegisterFunction(id=function_id, invocation=invocation))  # type: ignore[arg-type]
    ack = await worker.wait_for(lambda e: isinstance(e, FunctionRegistered) and e.id == function_id, start=start)
    assert isinstance(ack, FunctionRegistered)
    return ack


async def registered(worker: FakeWorker, function_id: str, invocation: object) -> None:
    ack = await register(worker, function_id, invocation)
    assert ack.error is None, ack.error


async def failure(worker: FakeWorker, function_id: str, data: object = None, **fields: object) -> EngineError:
    with pytest.raises(EngineError) as info:
        await worker.call(function_id, data, **fields)
    return info.value


async def test_calls_reach_the_endpoint_signed_and_answers_map_to_results_and_errors():
    with endpoint_server() as server, trio.fail_after(20):
        async with engine_parts(modules=[external.SPEC]) as parts:
            owner, caller = await parts.worker("owner"), await parts.worker("caller")
            await registered(owner, "x.echo", {"url": server.url("/echo"), "headers": {"X-Team": "billing"},
                                               "auth": {"type": "hmac", "secret_key": "XF_HMAC"}})
            # another worker calls it (the relay path), with a trace
            traceparent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
            before = int(time.time())
            answer = await caller.call("x.echo", {"amount": 3}, traceparent=traceparent)
            assert answer["method"] == "POST" and answer["path"] == "/echo" and answer["body"] == {"amount": 3}
            headers = answer["headers"]
            assert headers["content-type"] == "application/json" and headers["x-team"] == "billing"
            assert headers["x-iii-function-path"] == "x.echo"
            uuid.UUID(headers["x-iii-invocation-id"])
            timestamp = int(headers["x-iii-timestamp"])
            assert before - 1 <= timestamp <= time.time() + 1
            assert headers["traceparent"].split("-")[1] == "ab" * 16  # the call's trace goes on
            # the endpoint can check the signature over exactly the bytes it received
            body = server.requests[-1].body
            mac = hmac.new(SECRET.encode(), f"{timestamp}:{base64.b64encode(body).decode()}".encode(), hashlib.sha256)
            assert headers["x-iii-signature"] == "sha256=" + mac.hexdigest()
            # an in-process caller (control socket, HTTP front, cron …) too
            assert (await parts.invoker.call("x.echo", [1, 2]))["body"] == [1, 2]
            # it is the owner's function, like any other
            entry = parts.registry.lookup("x.echo")
            assert entry is not None and entry.owner is owner.session
            assert parts.registry.functions_of(owner.session) == ["x.echo"]

            cases = {
                "x.e500": ({"url": server.url("/status/500")}, "http_error",
                           f"POST {server.url('/status/500')} answered HTTP 500"),
                "x.e422": ({"url": server.url("/status/422?json"), "method": "PATCH"}, "not_allowed",
                           f"PATCH {server.url('/status/422')}?… answered HTTP 422: amount too high"),
                "x.text": ({"url": server.url("/text"), "method": "GET"}, "invalid_response",
                           f"GET {server.url('/text')} answered 200 with a body that is not JSON"),
                "x.refused": ({"url": f"http://127.0.0.1:{closed_port()}/fn"}, "http_request_failed",
                              "http://127.0.0.1:"),
            }
            for function_id, (invocation, _, _) in cases.items():
                await registered(owner, function_id, {**invocation,
                                                      "auth": {"type": "bearer", "token_key": "XF_TOKEN"}})
            for function_id, (_, code, message) in cases.items():
                error = await failure(caller, function_id, {"k": 1})
                assert error.code == code and message in error.message, (function_id, error)
                assert TOKEN not in error.message and SECRET not in error.message
            assert server.requests[-1].headers["authorization"] == f"Bearer {TOKEN}"  # (the refused one never came)

            await registered(owner, "x.empty", {"url": server.url("/empty"), "method": "DELETE",
                                                "auth": {"type": "api_key", "header": "X-Api-Key",
                                                         "value_key": "XF_TOKEN"}})
            assert await caller.call("x.empty", None) is None
            assert server.requests[-1].method == "DELETE" and server.requests[-1].headers["x-api-key"] == TOKEN
            seen = len(server.requests)
            await registered(owner, "x.redirect", {"url": server.url("/redirect")})
            assert await caller.call("x.redirect") is None  # a 3xx is a result; the redirect is not followed
            assert len(server.requests) == seen + 1


async def test_timeouts_oversize_answers_and_the_connection_pool():
    config = {"supervisor": {"max_frame_size": 256 * 1024},
              "external_functions": {"max_connections": 1, "max_timeout_ms": 5000}}
    with endpoint_server() as server, trio.fail_after(20):
        async with engine_parts(modules=[external.SPEC], config=config) as parts:
            owner, caller = await parts.worker("owner"), await parts.worker("caller")
            await registered(owner, "x.slow", {"url": server.url("/hold"), "timeout_ms": 200})
            await registered(owner, "x.hold", {"url": server.url("/hold")})
            started = trio.current_time()
            error = await failure(caller, "x.slow")
            assert error.code == "invocation_timeout"
            assert f"POST {server.url('/hold')} (function 'x.slow') did not answer within 200 ms" in error.message
            # without its own timeout, the call's deadline ends it
            error = await failure(caller, "x.hold", timeout_ms=200)
            assert error.code == "invocation_timeout" and "'x.hold'" in error.message
            assert trio.current_time() - started < 3

            await registered(owner, "x.big", {"url": server.url(f"/big?n={4 * 1024 * 1024}")})
            await registered(owner, "x.declared", {"url": server.url(f"/declared?n={10**9}")})
            for function_id in ("x.big", "x.declared"):
                error = await failure(caller, function_id)
                assert error.code == "result_too_large" and f"more than {256 * 1024} bytes" in error.message, error
            # (an answer just under the limit passes)
            await registered(owner, "x.fits", {"url": server.url(f"/big?n={3 * 65536}")})
            assert len(await caller.call("x.fits")) == 3 * 65536

            # max_connections = 1: a second call waits for the first one's connection
            results: list[object] = []

            async def call_hold() -> None:
                results.append(await caller.call("x.hold", timeout_ms=10_000))

            stale = server.holding  # (the calls that timed out above are still held by the server)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call_hold)
                nursery.start_soon(call_hold)
                while server.holding < stale + 1:
                    await trio.sleep(0.01)
                await trio.sleep(0.3)
                assert server.holding == stale + 1
                server.release()
            assert results == [{"held": True}, {"held": True}]


async def test_refused_registrations_keep_the_worker_connected_and_leaving_removes_the_function():
    with endpoint_server() as server, trio.fail_after(20):
        async with engine_parts(modules=[external.SPEC]) as parts:
            owner, caller = await parts.worker("owner"), await parts.worker("caller")
            bad = {
                "x.scheme": ({"url": "file:///etc/passwd"}, "invalid_invocation", "invocation.url must be an http://"),
                "x.method": ({"url": server.url("/echo"), "method": "TRACE"}, "invalid_invocation",
                             "invocation.method must be one of"),
                "x.headers": ({"url": server.url("/echo"), "headers": {"x-a": 5}}, "invalid_invocation",
                              "invocation.headers['x-a'] must be a string"),
                "x.timeout": ({"url": server.url("/echo"), "timeout_ms": -1}, "invalid_invocation",
                              "invocation.timeout_ms must be an integer from 1 to 600000"),
                "x.env": ({"url": server.url("/echo"), "auth": {"type": "hmac", "secret_key": "XF_MISSING"}},
                          "missing_env_var", "environment variable 'XF_MISSING'"),
                "engine::x": ({"url": server.url("/echo")}, "registration_failed", "reserved"),
            }
            async def local(_data: object) -> str:
                return "local"

            for function_id, (invocation, code, message) in bad.items():
                ack = await register(owner, function_id, invocation)
                assert ack.error is not None and ack.error.code == code and message in ack.error.message, ack.error
                assert f"{function_id!r}" in ack.error.message
                assert parts.registry.lookup(function_id) is None
            # garbage of every kind in the invocation object: refused, never a crash or a disconnect
            for i, junk in enumerate([{"url": None}, {"url": []}, {"url": "http://h/", "auth": []},
                                      {"url": "http://h/", "headers": {"": "x"}}, {"url": "http://" + "h" * 300},
                                      {"url": "http://h/", "method": None, "timeout_ms": 2**62},
                                      {"url": "http://[::1/"}, {"url": "http://h/", "auth": {"type": None}}]):
                ack = await register(owner, f"x.junk{i}", junk)
                assert ack.error is not None and ack.error.code == "invalid_invocation", (junk, ack)
            # a function another worker owns is not taken over by an invocation
            await caller.register_function("c.own", local)
            ack = await register(owner, "c.own", {"url": server.url("/echo")})
            assert ack.error is not None and ack.error.code == "function_conflict"

            await registered(owner, "x.echo", {"url": server.url("/echo")})
            assert (await caller.call("x.echo", 7))["body"] == 7  # the owner's connection is fine
            # the same owner may turn it into an ordinary function, and back
            await owner.register_function("x.echo", local)
            assert await caller.call("x.echo", 1) == "local"
            await registered(owner, "x.echo", {"url": server.url("/echo")})
            assert (await caller.call("x.echo", 8))["body"] == 8

            owner.session.close()  # the worker leaves: its external function goes with it
            assert parts.registry.lookup("x.echo") is None
            with pytest.raises(FunctionNotFound):
                await caller.call("x.echo", 1)


async def test_attached_workers_may_name_no_secret_unless_attached_secrets_allows_it():
    invocation = {"url": "http://127.0.0.1:1/", "auth": {"type": "bearer", "token_key": "XF_TOKEN"}}
    with trio.fail_after(10):
        async with engine_parts(modules=[external.SPEC]) as parts:
            spawned, stranger = await parts.worker("spawned"), await parts.worker("stranger")
            stranger.session.attached = True  # what an iii-door connection without a spawn token is
            ack = await register(stranger, "s.leak", invocation)
            assert ack.error is not None and ack.error.code == "invalid_invocation", ack.error
            assert "'XF_TOKEN' is not in [external_functions] attached_secrets (none)" in ack.error.message
            assert TOKEN not in ack.error.message
            await registered(stranger, "s.plain", {"url": "http://127.0.0.1:1/"})  # no secret named: fine
            await registered(spawned, "s.signed", invocation)  # the supervisor's own worker may
        async with engine_parts(modules=[external.SPEC],
                                config={"external_functions": {"attached_secrets": ["XF_*"]}}) as parts:
            stranger = await parts.worker("stranger")
            stranger.session.attached = True
            await registered(stranger, "s.allowed", invocation)


async def test_disabled_and_stopped():
    with trio.fail_after(10):
        async with engine_parts(modules=[external.SPEC], config={"external_functions": {"enabled": False}}) as parts:
            worker = await parts.worker()
            ack = await register(worker, "x.f", {"url": "http://127.0.0.1:1/"})
            assert ack.error is not None and ack.error.code == "invalid_invocation"
            assert "[external_functions] enabled = false" in ack.error.message
        async with engine_parts(modules=[external.SPEC]) as parts:
            module = parts.modules["external"]
            assert isinstance(module, external.ExternalFunctions) and module._client is not None
            client = module._client
        assert module._client is None and client.is_closed  # the pool is closed with the module
        assert parts.registry._external is None


def test_the_section_is_validated_like_the_rest():
    from iii_supervisor.config import parse_config
    from iii_supervisor.errors import ConfigError

    config = parse_config({"external_functions": {"allowed_hosts": ["*.internal"], "require_https": True}},
                          modules=[external.SPEC])
    section = config.section("external_functions")
    assert section.allowed_hosts == ("*.internal",) and section.require_https is True
    for bad in ({"max_connections": 0}, {"max_timeout_ms": "1"}, {"unknown": 1}):
        with pytest.raises(ConfigError, match="external_functions"):
            parse_config({"external_functions": bad}, modules=[external.SPEC])


async def test_our_sdk_sends_the_invocation_and_keeps_no_local_handler():
    """``register_function`` with an invocation (three shapes) sends it; nothing runs in the worker."""
    import threading

    from iii_supervisor.protocol import Hello, WorkerRegistered
    from iii_supervisor.transport import FramedStream
    from iii_supervisor.worker import HttpInvocationConfig
    from iii_supervisor.worker.client import III

    class InLoop(III):
        def _start(self) -> None:
            self._thread = threading.current_thread()  # type: ignore[misc]  # registrations are sent, not awaited

    ours, theirs = trio.socket.socketpair()
    client = InLoop("(socketpair)", "t" * 43, "w")
    supervisor = FramedStream(trio.SocketStream(theirs))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run_writer)

            async def handshake() -> None:
                assert isinstance(await supervisor.receive(), Hello)
                supervisor.send_nowait(WorkerRegistered(worker_id="w-1", name="w"))

            nursery.start_soon(handshake)
            await nursery.start(client._serve_stream, trio.SocketStream(ours))
            client.register_function("x.a", HttpInvocationConfig(url="http://h/a", timeout_ms=5,
                                                                 auth={"type": "hmac", "secret_key": "K"}))
            client.register_function({"id": "x.b", "invocation": {"url": "http://h/b", "method": "GET"}})
            client.register_function("x.c", {"url": "http://h/c"})
            with pytest.raises(TypeError, match="must be callable or an HttpInvocationConfig"):
                client.register_function("x.d", 5)
            with pytest.raises(TypeError, match="'invocation' of 'x.e' must be a dict"):
                client.register_function({"id": "x.e", "invocation": "http://h/e"})
            sent = [await supervisor.receive() for _ in range(3)]
            assert [(m.id, m.invocation) for m in sent] == [  # type: ignore[union-attr]
                ("x.a", {"url": "http://h/a", "method": "POST", "timeout_ms": 5,
                         "auth": {"type": "hmac", "secret_key": "K"}}),
                ("x.b", {"url": "http://h/b", "method": "GET"}),
                ("x.c", {"url": "http://h/c"})]
            assert not set(client._functions) & {"x.a", "x.b", "x.c", "x.d", "x.e"}
            nursery.cancel_scope.cancel()
