"""The iii door: the translation (pure), and in-process tests with a trio-websocket client against a
real listener (handshake, calls both ways, reattach, paths, auth, bad input, a fuzz test)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    connect_websocket_url,
    open_websocket_url,
)

from iii_supervisor.errors import MalformedMessage, UnknownMessageType
from iii_supervisor.protocol import ErrorBody, FunctionRegistered, InvokeFunction, TriggerRegistrationResult
from iii_supervisor.server import iii_door
from iii_supervisor.server.iii_door import wire
from iii_supervisor.server.iii_door.door import IiiDoor
from inprocess import EngineParts, engine_parts
from supervisor_harness import Supervisor, write_worker

# --- the translation (pure) ----------------------------------------------------------------------


def test_decode_reattach_ignored_and_refused_types() -> None:
    msg = wire.decode('{"type":"reattach","previous_worker_id":"w1","reattach_token":"t"}')
    assert msg == wire.Reattach(previous_worker_id="w1", reattach_token="t")
    assert wire.decode('{"type":"registerservice","id":"s","name":"n"}') is None
    call = wire.decode('{"type":"invokefunction","function_id":"f","data":{"a":1},"namespace":"default",'
                       '"caller":{"function_id":"g"},"action":{"type":"void"}}')
    assert isinstance(call, InvokeFunction) and call.action is not None and call.action.type == "void"
    with pytest.raises(UnknownMessageType, match="not part of the iii worker protocol"):
        wire.decode('{"type":"hello","token":"x"}')
    with pytest.raises(UnknownMessageType):
        wire.decode('{"type":"channelwindow","channel_id":1,"size":5}')
    with pytest.raises(UnknownMessageType, match="'bogus'"):
        wire.decode('{"type":"bogus"}')
    with pytest.raises(MalformedMessage, match="not valid JSON"):
        wire.decode("{nope")
    with pytest.raises(MalformedMessage, match="JSON object"):
        wire.decode("[1]")
    with pytest.raises(MalformedMessage, match="invokefunction.function_id"):
        wire.decode('{"type":"invokefunction","function_id":5}')
    with pytest.raises(MalformedMessage, match="previous_worker_id"):
        wire.decode('{"type":"reattach","previous_worker_id":7}')


def test_encode_acks_only_on_error() -> None:
    assert wire.encode(FunctionRegistered(id="f")) is None
    rejected = orjson.loads(wire.encode(FunctionRegistered(id="f", error=ErrorBody(code="function_conflict",
                                                                                  message="taken")),
                                        owner_of=lambda fid: "owner-1") or b"")
    # the one code iii-sdk 0.25 does not treat as fatal: the worker keeps serving its other functions
    assert rejected == {"type": "registrationrejected", "code": "FUNCTION_NAMESPACE_CONFLICT", "namespace": "default",
                        "function_id": "f", "owner_worker_id": "owner-1", "message": "taken"}
    assert wire.encode(TriggerRegistrationResult(id="t", trigger_type="cron", function_id="f")) is None
    failed = orjson.loads(wire.encode(TriggerRegistrationResult(
        id="t", trigger_type="cron", function_id="f", error=ErrorBody(code="trigger_registration_failed",
                                                                      message="bad")) ) or b"")
    assert failed["type"] == "triggerregistrationresult" and failed["error"]["code"] == "trigger_registration_failed"


def test_map_refs_copies_only_the_path_to_a_reference() -> None:
    shared = {"keep": [1, 2]}
    payload = {"a": shared, "body": {"channel_id": 7, "direction": "read"}, "list": [{"channel_id": 8,
                                                                                    "direction": "write"}]}

    def convert(value: dict[str, Any]) -> dict[str, Any] | None:
        return {"ref": value["channel_id"]} if "channel_id" in value else None

    out = wire.map_refs(payload, convert)
    assert out == {"a": shared, "body": {"ref": 7}, "list": [{"ref": 8}]}
    assert out["a"] is shared and payload["body"] == {"channel_id": 7, "direction": "read"}  # the input is intact
    untouched = {"x": [{"y": 1}]}
    assert wire.map_refs(untouched, convert) is untouched
    assert wire.is_sdk_ref({"channel_id": "c", "access_key": "k", "direction": "read"})
    assert not wire.is_sdk_ref({"channel_id": 1, "direction": "read"})


def test_route_takes_the_targets_both_sdks_build() -> None:
    assert wire.route("/").kind == "worker" and wire.route("/?token=T").param("token") == "T"
    assert wire.route("/otel?token=T").kind == "otel" and wire.route("/otel/").kind == "otel"
    python = wire.route("/ws/channels/abc?token=T&key=K&dir=read")
    assert (python.kind, python.channel_id, python.param("key"), python.param("dir")) == ("channel", "abc", "K", "read")
    node = wire.route("/?token=T/ws/channels/abc?key=K&dir=write")  # the Node SDK appends the path after the query
    assert (node.kind, node.channel_id, node.param("key"), node.param("dir"), node.param("token")) == \
        ("channel", "abc", "K", "write", "T")
    assert wire.route("/elsewhere").kind is None and wire.route("/x/ws/channels/abc").kind is None


def test_close_codes_and_reasons() -> None:
    assert wire.close_code("frame_too_large") == 1009
    assert wire.close_code("unknown_message_type") == 1003 and wire.close_code("binary_frame") == 1003
    assert wire.close_code("malformed_message") == 1002
    assert len(wire.close_reason("é" * 200).encode()) <= 123


# --- in process: a real listener, trio-websocket clients ------------------------------------------


@asynccontextmanager
async def door(config: dict[str, Any] | None = None) -> AsyncIterator[tuple[EngineParts, IiiDoor]]:
    section = dict(config or {})
    extra = section.pop("_extra", {})
    section = {"port": 0, "ping_interval": 5, "close_timeout": 0.2, **section}
    async with engine_parts([iii_door.SPEC], {"iii": section, **extra}) as parts:
        module = parts.modules["iii"]
        assert isinstance(module, IiiDoor) and module.port
        yield parts, module


class Client:
    """A raw WebSocket peer speaking the reference's JSON."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, **msg: Any) -> None:
        await self.ws.send_message(orjson.dumps(msg).decode())

    async def receive(self) -> dict[str, Any]:
        return orjson.loads(await self.ws.get_message())  # type: ignore[no-any-return]

    async def receive_type(self, kind: str) -> dict[str, Any]:
        while (msg := await self.receive())["type"] != kind:
            pass
        return msg

    async def closed_with(self) -> tuple[int, str]:
        with trio.fail_after(5):
            try:
                while True:
                    await self.ws.get_message()
            except ConnectionClosed as exc:
                assert exc.reason is not None
                return exc.reason.code, exc.reason.reason or ""


async def connect(nursery: trio.Nursery, module: IiiDoor, path: str = "/", *,
                  headers: list[tuple[bytes, bytes]] | None = None) -> Client:
    ws = await connect_websocket_url(nursery, f"ws://127.0.0.1:{module.port}{path}", extra_headers=headers,
                                     max_message_size=64 * 1024 * 1024)
    return Client(ws)


async def rejection(module: IiiDoor, path: str = "/", headers: list[tuple[bytes, bytes]] | None = None) -> int:
    """The HTTP status an upgrade was refused with."""
    try:
        async with open_websocket_url(f"ws://127.0.0.1:{module.port}{path}", extra_headers=headers):
            pass
    except ConnectionRejected as exc:
        return int(exc.status_code)
    except BaseExceptionGroup as group:
        match, _ = group.split(ConnectionRejected)
        assert match is not None, group
        leaf = match
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        assert isinstance(leaf, ConnectionRejected)
        return int(leaf.status_code)
    raise AssertionError("the upgrade was accepted")


async def test_handshake_calls_both_ways_and_registration_answers() -> None:
    with trio.fail_after(10):
        async with door() as (parts, module), trio.open_nursery() as nursery:
            ours = await parts.worker("ours")
            await ours.register_function("ours::double", lambda data: _value({"d": data["n"] * 2}))
            sdk = await connect(nursery, module)
            hello = await sdk.receive()  # at once, no client hello
            assert hello["type"] == "workerregistered" and hello["worker_id"] in module.sessions
            assert len(hello["reattach_token"]) > 20
            await sdk.send(type="registerfunction", id="sdk::inc")
            await sdk.send(type="registerfunction", id="ours::double")  # taken: refused, non-fatal code
            rejected = await sdk.receive()
            assert rejected["type"] == "registrationrejected" and rejected["code"] == "FUNCTION_NAMESPACE_CONFLICT"
            assert rejected["function_id"] == "ours::double" and rejected["owner_worker_id"] == "ours-1"
            await sdk.send(type="registertrigger", id="t1", trigger_type="nope", function_id="sdk::inc", config={})
            refused = await sdk.receive()
            assert refused["type"] == "triggerregistrationresult" and refused["error"]["code"] == \
                "trigger_registration_failed"
            await sdk.send(type="invokefunction", function_id="engine::workers::register",
                           data={"runtime": "python", "version": "0.25.0", "name": "probe", "pid": 1},
                           action={"type": "void"})

            async def serve_one() -> None:
                call = await sdk.receive_type("invokefunction")
                assert call["function_id"] == "sdk::inc" and call["data"] == {"n": 1}
                await sdk.send(type="invocationresult", invocation_id=call["invocation_id"], function_id="sdk::inc",
                               result={"n": 2})

            nursery.start_soon(serve_one)
            assert await ours.call("sdk::inc", {"n": 1}) == {"n": 2}  # ours → SDK
            await sdk.send(type="invokefunction", invocation_id="u1", function_id="ours::double", data={"n": 4})
            answer = await sdk.receive_type("invocationresult")  # SDK → ours
            assert answer == {"type": "invocationresult", "invocation_id": "u1", "function_id": "ours::double",
                              "result": {"d": 8}}
            session = module.sessions[hello["worker_id"]]
            assert session.name == "probe" and session.metadata["version"] == "0.25.0"
            await sdk.send(type="invokefunction", invocation_id="u2", function_id="missing", data=None)
            missing = await sdk.receive_type("invocationresult")
            assert missing["error"]["code"] == "function_not_found"
            await sdk.ws.aclose()
            with trio.fail_after(3):
                while parts.registry.lookup("sdk::inc") is not None:  # removed on disconnect
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


async def test_a_call_that_cannot_be_encoded_fails_that_call_only() -> None:
    with trio.fail_after(10):
        async with door() as (parts, module), trio.open_nursery() as nursery:
            target = await connect(nursery, module)
            await target.receive()
            await target.send(type="registerfunction", id="sdk::deep")
            with trio.fail_after(3):
                while parts.registry.lookup("sdk::deep") is None:
                    await trio.sleep(0.01)
            caller = await connect(nursery, module)
            await caller.receive()
            deep = '"leaf"'
            for _ in range(400):  # orjson decodes this deep, but encodes at most 254 levels
                deep = f"[{deep}]"
            await caller.ws.send_message('{"type":"invokefunction","invocation_id":"d1","function_id":"sdk::deep",'
                                         f'"data":{deep}}}')
            answer = await caller.receive_type("invocationresult")
            assert answer["invocation_id"] == "d1" and answer["error"]["code"] == "request_too_large"
            await caller.send(type="invokefunction", invocation_id="d2", function_id="missing", data={})
            assert (await caller.receive_type("invocationresult"))["invocation_id"] == "d2"  # both still connected
            assert len(module.sessions) == 2
            nursery.cancel_scope.cancel()


async def _value(value: Any) -> Any:
    return value


async def test_reattach_with_the_token_evicts_the_old_connection_before_the_replay() -> None:
    with trio.fail_after(10):
        async with door() as (parts, module), trio.open_nursery() as nursery:
            first = await connect(nursery, module)
            hello = await first.receive()
            await first.send(type="registerfunction", id="sdk::f")
            with trio.fail_after(3):
                while parts.registry.lookup("sdk::f") is None:
                    await trio.sleep(0.01)
            # a wrong token is ignored: the old connection keeps its function
            intruder = await connect(nursery, module)
            await intruder.receive()
            await intruder.send(type="reattach", previous_worker_id=hello["worker_id"], reattach_token="wrong")
            await intruder.send(type="registerfunction", id="sdk::f")
            assert (await intruder.receive())["type"] == "registrationrejected"
            # the right one: the old connection is closed and cleaned up, the replay lands
            second = await connect(nursery, module)
            await second.receive()
            await second.send(type="reattach", previous_worker_id=hello["worker_id"],
                              reattach_token=hello["reattach_token"])
            await second.send(type="registerfunction", id="sdk::f")
            code, _ = await first.closed_with()
            assert code == 1000
            entry = parts.registry.lookup("sdk::f")
            assert entry is not None and entry.owner is not None and entry.owner.worker_id in module.sessions
            assert hello["worker_id"] not in module.sessions
            nursery.cancel_scope.cancel()


async def test_paths_other_than_the_three_are_refused_with_404() -> None:
    with trio.fail_after(10):
        async with door() as (_parts, module), trio.open_nursery() as nursery:
            assert await rejection(module, "/elsewhere") == 404
            otel = await connect(nursery, module, "/otel")  # accepted (telemetry)
            await otel.ws.aclose()
            nursery.cancel_scope.cancel()


async def test_shared_token_and_auth_function(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOOR_TEST_TOKEN", "s3cret")
    with trio.fail_after(10):
        async with door({"token_env": "DOOR_TEST_TOKEN", "auth_function_id": "auth::check"}) as (parts, module), \
                trio.open_nursery() as nursery:
            seen: list[Any] = []

            async def check(data: Any) -> Any:
                seen.append(data)
                if data["headers"].get("x-user") == "boom":
                    raise RuntimeError("the auth backend is down")
                return {"allowed": data["headers"].get("x-user") == "ada"}

            auth = await parts.worker("auth")
            await auth.register_function("auth::check", check)
            for headers, status in (([], 401), ([(b"authorization", b"Bearer nope")], 401),
                                    ([(b"authorization", b"Bearer s3cret"), (b"x-user", b"eve")], 403),
                                    ([(b"authorization", b"Bearer s3cret"), (b"x-user", b"boom")], 401)):
                assert await rejection(module, headers=headers) == status
            ok = await connect(nursery, module, "/?team=a",
                               headers=[(b"authorization", b"Bearer s3cret"), (b"x-user", b"ada")])
            assert (await ok.receive())["type"] == "workerregistered"
            assert seen[-1]["query_params"] == {"team": ["a"]} and seen[-1]["ip_address"] == "127.0.0.1"
            # the token may come in the URL instead (the Node SDK sends no Authorization header)
            by_query = await connect(nursery, module, "/?token=s3cret", headers=[(b"x-user", b"ada")])
            assert (await by_query.receive())["type"] == "workerregistered"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("frame", "code", "reason"), [
    ("{not json", 1002, "not valid JSON"),
    ('{"type":"invokefunction","function_id":5}', 1002, "function_id"),
    ('{"type":"teleport"}', 1003, "unknown message type"),
    (b"\x00\x01binary", 1003, "binary frames"),
    ("x" * 5000, 1009, ""),
])
async def test_bad_input_closes_with_a_code_and_a_reason(frame: str | bytes, code: int, reason: str) -> None:
    with trio.fail_after(10):
        async with door({"max_message_size": 4096}) as (parts, module), trio.open_nursery() as nursery:
            bad = await connect(nursery, module)
            await bad.receive()
            await bad.ws.send_message(frame)
            got_code, got_reason = await bad.closed_with()
            assert got_code == code and reason in got_reason
            good = await connect(nursery, module)  # the door serves on
            assert (await good.receive())["type"] == "workerregistered"
            nursery.cancel_scope.cancel()


async def test_fuzz_garbage_frames_leave_the_door_serving() -> None:
    rng = random.Random(1313)
    kinds = ["invokefunction", "invocationresult", "registerfunction", "registertrigger", "unregistertrigger",
             "registertriggertype", "reattach", "registerservice", "ping", "pong", "hello", "bogus", None]
    values: list[Any] = [None, 1, -1, 2**62, 1.5, "", "x" * 300, True, [], {}, [1, {"a": None}],
                         {"channel_id": "c", "access_key": "k", "direction": "read"}, {"type": "void"}]
    fields = ["id", "function_id", "invocation_id", "data", "result", "error", "action", "config", "trigger_type",
              "previous_worker_id", "reattach_token", "metadata", "timeout_ms"]

    def garbage() -> str | bytes:
        roll = rng.random()
        if roll < 0.15:
            return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64)))
        if roll < 0.3:
            return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(1, 64)))
        msg: dict[str, Any] = {} if (kind := rng.choice(kinds)) is None else {"type": kind}
        for _ in range(rng.randrange(0, 5)):
            msg[rng.choice(fields)] = rng.choice(values)
        return orjson.dumps(msg).decode()

    with trio.fail_after(30):
        async with door({"max_message_size": 8192}) as (parts, module), trio.open_nursery() as nursery:
            ours = await parts.worker("ours")
            await ours.register_function("ours::ok", lambda data: _value("ok"))
            for _ in range(40):
                client = await connect(nursery, module)
                await client.receive()
                try:
                    for _ in range(rng.randrange(1, 8)):
                        await client.ws.send_message(garbage())
                        await trio.sleep(0)
                except ConnectionClosed:
                    pass
                await client.ws.aclose()
            # a well-behaved worker still registers, calls and is called
            good = await connect(nursery, module)
            await good.receive()
            await good.send(type="invokefunction", invocation_id="c1", function_id="ours::ok", data={})
            assert (await good.receive_type("invocationresult"))["result"] == "ok"
            with trio.fail_after(5):
                while len(module.sessions) > 1:  # every fuzzed connection is gone, its state with it
                    await trio.sleep(0.02)
            owners = {f.owner_name for f in parts.registry.list_functions() if f.owner is not None}
            assert owners <= {"ours", *(s.name for s in module.sessions.values())}
            nursery.cancel_scope.cancel()


async def test_a_worker_that_does_not_read_gets_worker_overloaded_not_our_memory() -> None:
    config = {"max_message_size": 65536,
              "_extra": {"supervisor": {"max_frame_size": 65536, "max_queued_bytes": 262144}}}
    with trio.fail_after(20):
        async with door(config) as (parts, module), trio.open_nursery() as nursery:
            stalled = await connect(nursery, module)
            await stalled.receive()
            await stalled.send(type="registerfunction", id="sdk::stalled")
            with trio.fail_after(3):
                while (entry := parts.registry.lookup("sdk::stalled")) is None:
                    await trio.sleep(0.01)
            # the client stops reading; calls pile up until the invoker refuses them
            codes = []
            for _ in range(2000):
                pending = parts.invoker.start_local(entry, {"blob": "x" * 32768}, timeout=30)
                if pending.outcome is not None and pending.outcome.error is not None:
                    codes.append(pending.outcome.error.code)
                    break
                await trio.sleep(0)
            assert codes == ["worker_overloaded"]
            session = next(iter(module.sessions.values()))
            assert session.backlog() <= module.send_limit
            nursery.cancel_scope.cancel()


def test_config_section_is_strict_and_off_by_default() -> None:
    from iii_supervisor.config import parse_config
    from iii_supervisor.errors import ConfigError

    assert parse_config({}).section("iii").port is None  # off unless a port is set
    with pytest.raises(ConfigError, match=r"extra fields found \(prot\) @ iii"):
        parse_config({"iii": {"prot": 1}})
    with pytest.raises(ConfigError, match="iii.port must be between 0 and 65535"):
        parse_config({"iii": {"port": 70000}})
    with pytest.raises(ConfigError, match="expected an integer, got '1'"):
        parse_config({"iii": {"port": "1"}})
    with pytest.raises(ConfigError, match="token_file and iii.token_env are both set"):
        parse_config({"iii": {"port": 0, "token_file": "a", "token_env": "B"}})
    with pytest.raises(ConfigError, match="must be the name of an environment variable"):
        parse_config({"iii": {"token_env": "not a name"}})
    with pytest.raises(ConfigError, match=r"iii.max_message_size \(200000000\) must be at most"):
        parse_config({"iii": {"port": 0, "max_message_size": 200_000_000}})


async def test_missing_token_env_fails_the_start_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from iii_supervisor.errors import ConfigError

    monkeypatch.delenv("DOOR_NO_SUCH_TOKEN", raising=False)
    with trio.fail_after(5), pytest.raises(BaseException) as raised:  # noqa: PT011 - unwrapped below
        async with door({"token_env": "DOOR_NO_SUCH_TOKEN"}):
            pass
    leaf: BaseException = raised.value
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, ConfigError) and "DOOR_NO_SUCH_TOKEN" in leaf.message


@pytest.mark.parametrize("content, message", [(b"\xff\xfe not text", "is not UTF-8 text"), (b"  \n", "is empty")])
async def test_a_token_file_that_is_not_a_token_fails_the_start_naming_it(tmp_path: Path, content: bytes,
                                                                       message: str) -> None:
    from iii_supervisor.errors import ConfigError

    token_file = tmp_path / "door.token"
    token_file.write_bytes(content)
    with trio.fail_after(5), pytest.raises(BaseException) as raised:  # noqa: PT011 - unwrapped below
        async with door({"token_file": str(token_file)}):
            pass
    leaf: BaseException = raised.value
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, ConfigError) and "iii.token_file" in leaf.message and message in leaf.message


async def test_supervisor_pings_become_websocket_pings_and_connections_are_limited() -> None:
    with trio.fail_after(10):
        async with door({"max_connections": 2}) as (_parts, module), trio.open_nursery() as nursery:
            first = await connect(nursery, module)
            hello = await first.receive()
            session = module.sessions[hello["worker_id"]]
            nursery.start_soon(first.closed_with)  # keep reading (trio-websocket answers the ping)
            answered = session.ping()  # what the pool does to a spawned worker
            with trio.fail_after(3):
                await answered.wait()
            second = await connect(nursery, module)
            await second.receive()
            with pytest.raises(HandshakeError):  # the third is refused before its handshake
                async with open_websocket_url(f"ws://127.0.0.1:{module.port}/", connect_timeout=0.5):
                    pass
            nursery.cancel_scope.cancel()


async def test_an_unfinished_upgrade_is_cut_at_the_handshake_deadline() -> None:
    with trio.fail_after(10):
        async with door({"handshake_timeout": 0.3}) as (_parts, module):
            silent = await trio.open_tcp_stream("127.0.0.1", module.port)
            await silent.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
            started = trio.current_time()
            with trio.fail_after(3):
                while await silent.receive_some(1024):
                    pass
            assert trio.current_time() - started < 2
            await silent.aclose()


async def test_a_token_that_is_not_ascii_is_just_a_wrong_token(tmp_path: Path) -> None:
    """With spawned workers, every presented token is compared with theirs: a non-ASCII one
    (a latin-1 header, a percent-encoded query) is an attached worker, not a failed connection."""
    workers = tmp_path / "workers"
    workers.mkdir()
    write_worker(workers, "ours", 'iii.register_function("ours::f", lambda d: d)\n')
    with trio.fail_after(30):
        async with Supervisor(workers, "--iii-port", "0") as sup:
            await sup.start(expect_workers=1)
            port = sup.iii_port
            for path, headers in (("/", [(b"authorization", "Bearer é".encode("latin-1"))]),
                                  ("/?token=%C3%A9", [])):
                with trio.fail_after(5):
                    async with open_websocket_url(f"ws://127.0.0.1:{port}{path}", extra_headers=headers) as ws:
                        assert orjson.loads(await ws.get_message())["type"] == "workerregistered"
            assert "a connection failed" not in sup.output()


async def test_an_auth_builtin_failing_with_an_engine_error_of_its_own_refuses_with_401() -> None:
    from iii_supervisor.errors import StoreError

    async def check(_data: Any) -> Any:
        raise StoreError("the store is closed")

    with trio.fail_after(10):
        async with door({"auth_function_id": "auth::store"}) as (parts, module):
            parts.registry.add_builtin("auth::store", check, "")
            assert await rejection(module) == 401


async def test_repeated_reattach_and_register_frames_do_not_write_a_log_line_each(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    with trio.fail_after(10):
        async with door() as (_parts, module), trio.open_nursery() as nursery:
            peer = await connect(nursery, module)
            await peer.receive_type("workerregistered")
            for _ in range(200):
                await peer.send(type="reattach", previous_worker_id="gone", reattach_token="t")
                await peer.send(type="invokefunction", function_id="engine::workers::register", data={"name": "n"})
            await peer.send(type="invokefunction", function_id="engine::workers::register", invocation_id="last",
                            data={"name": "n"})
            assert (await peer.receive_type("invocationresult"))["invocation_id"] == "last"
            lines = [r.getMessage() for r in caplog.records if r.levelno >= 20 and
                     ("reattach" in r.getMessage() or " registered (" in r.getMessage())]
            assert len(lines) <= 3, lines[:5]
            nursery.cancel_scope.cancel()


async def test_registrations_nested_too_deep_to_be_listed_are_refused() -> None:
    """orjson decodes 1024 levels and encodes 254: a function or trigger kept with a deeper field
    would break engine::functions::list / triggers (the CLI) for everyone while it is registered."""
    deep = "[" * 300 + "]" * 300
    with trio.fail_after(10):
        async with door() as (parts, module), trio.open_nursery() as nursery:
            peer = await connect(nursery, module)
            await peer.receive_type("workerregistered")
            await peer.ws.send_message('{"type":"registerfunction","id":"evil.f","metadata":{"m":' + deep + "}}")
            rejected = await peer.receive_type("registrationrejected")
            assert rejected["function_id"] == "evil.f" and "metadata cannot be encoded as JSON" in rejected["message"]
            await peer.send(type="registerfunction", id="ok.f")
            for field in ("config", "metadata"):
                await peer.ws.send_message(f'{{"type":"registertrigger","id":"t-{field}","trigger_type":"cron",'
                                           f'"function_id":"ok.f","{field}":{{"x":{deep}}}}}')
                result = await peer.receive_type("triggerregistrationresult")
                assert result["error"]["code"] == "trigger_registration_failed", result
                assert f"{field} cannot be encoded as JSON" in result["error"]["message"]
            assert parts.registry.lookup("evil.f") is None and parts.registry.lookup("ok.f") is not None
            assert not parts.registry.triggers
            orjson.dumps(list(parts.registry.functions))
            nursery.cancel_scope.cancel()


async def test_registrations_per_connection_are_capped_and_refusals_do_not_flood_the_log(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from iii_supervisor import session as session_mod

    monkeypatch.setattr(session_mod, "MAX_REGISTRATIONS", 3)
    caplog.set_level("WARNING")
    with trio.fail_after(10):
        async with door() as (parts, module), trio.open_nursery() as nursery:
            peer = await connect(nursery, module)
            await peer.receive_type("workerregistered")
            for i in range(4):
                await peer.send(type="registerfunction", id=f"f{i}")
            rejected = await peer.receive_type("registrationrejected")
            assert rejected["function_id"] == "f3" and "holds 3 functions already" in rejected["message"]
            await peer.send(type="registerfunction", id="f0")  # the same again: no more room needed
            await peer.send(type="unregisterfunction", id="f1")
            await peer.send(type="registerfunction", id="f4")
            await peer.send(type="registertriggertype", id="mine", description="")
            for i in range(4):
                await peer.send(type="registertrigger", id=f"t{i}", trigger_type="mine", function_id="f0", config={})
            result = await peer.receive_type("triggerregistrationresult")
            assert result["id"] == "t3" and "holds 3 triggers already" in result["error"]["message"]
            assert {f for f in parts.registry.functions if f.startswith("f")} == {"f0", "f2", "f4"}
            assert sorted(parts.registry.triggers) == ["t0", "t1", "t2"]
            for _ in range(100):  # refused again and again: not a log line each
                await peer.send(type="registerfunction", id="engine::mine")
            await peer.send(type="invokefunction", function_id="engine::workers::register", invocation_id="last",
                            data={})
            await peer.receive_type("invocationresult")
            refused = [r for r in caplog.records if "refused" in r.getMessage()]
            assert len(refused) <= session_mod.LOGGED_REFUSALS + 1, len(refused)
            nursery.cancel_scope.cancel()


async def test_a_peer_holding_upgrades_open_cannot_keep_the_door_shut() -> None:
    """Past ``max_handshakes`` connections that have not finished their upgrade, the oldest is cut
    (refusing the newest would let a peer that opens connections and sends nothing lock others out)."""
    with trio.fail_after(10):
        async with door({"max_handshakes": 2, "handshake_timeout": 30}) as (_parts, module), \
                trio.open_nursery() as nursery:
            silent = [await trio.open_tcp_stream("127.0.0.1", module.port) for _ in range(2)]
            await trio.sleep(0.1)  # both are reading their upgrade now
            peer = await connect(nursery, module)  # a real upgrade still gets in ...
            assert (await peer.receive())["type"] == "workerregistered"
            with trio.fail_after(3):  # ... and the oldest silent connection was cut for it, long before 30 s
                assert await silent[0].receive_some(1024) == b""
            for stream in silent:
                await stream.aclose()
            nursery.cancel_scope.cancel()


SPAWNED_SDK_WORKER = """
from iii import register_worker

iii = register_worker()   # III_URL (with this spawn's token) from the supervisor
iii.register_function("spawned::ping", lambda data: "pong")
"""


async def test_attached_sockets_and_idle_upgrades_cannot_lock_out_a_spawned_worker(tmp_path: Path) -> None:
    """``max_connections`` counts attached peers only: a local user holding that many sockets,
    plus connections that never upgrade, does not keep a restarted spawned worker out."""
    import os
    import signal

    workers = tmp_path / "workers"
    workers.mkdir()
    write_worker(workers, "spawned", SPAWNED_SDK_WORKER, preamble=False)
    config = tmp_path / "iii.toml"
    config.write_text("[iii]\nport = 0\nmax_connections = 2\nmax_handshakes = 2\n")
    with trio.fail_after(60):
        async with Supervisor(workers, "--config", str(config), env={"OTEL_ENABLED": "false"}) as sup:
            await sup.start(expect_workers=1, functions=("spawned::ping",), timeout=30)
            port = sup.iii_port
            async with trio.open_nursery() as nursery:
                for _ in range(2):  # the attached sockets allowed ...
                    ws = await connect_websocket_url(nursery, f"ws://127.0.0.1:{port}/")
                    assert orjson.loads(await ws.get_message())["type"] == "workerregistered"
                with pytest.raises(ConnectionRejected) as refused:  # ... one more is refused at its upgrade
                    async with open_websocket_url(f"ws://127.0.0.1:{port}/"):
                        pass
                assert refused.value.status_code == 503
                silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]
                pid = (await sup.workers())["spawned"]["pid"]
                os.kill(pid, signal.SIGKILL)
                while True:  # the restarted worker gets in and registers again
                    row = (await sup.workers())["spawned"]
                    if row["restarts"] >= 1 and row["state"] == "running" and "spawned::ping" in row["functions"]:
                        break
                    await trio.sleep(0.05)
                assert await sup.call("spawned::ping") == "pong"
                for stream in silent:
                    await stream.aclose()
                nursery.cancel_scope.cancel()
