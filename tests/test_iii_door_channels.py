"""The WebSocket door's channel sockets and telemetry socket, in process, with a trio-websocket client.

A fake door session routes what the engine sends it through ``ChannelEndpoints.outgoing``, as the
door does; a small trio-websocket server hands ``/ws/channels/{id}`` and ``/otel`` to the endpoints.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, open_websocket_url, serve_websocket

from iii_supervisor.channels import ChannelTable
from iii_supervisor.errors import InvocationError
from iii_supervisor.invocation import Invoker
from iii_supervisor.modules.log import LogConfig, LogModule
from iii_supervisor.protocol import CHANNEL_WINDOW, ChannelClose, ChannelControl, ChannelWindow, Chunk, ErrorBody
from iii_supervisor.protocol.channels import ChannelRef
from iii_supervisor.registry import Registry, TriggerEntry
from iii_supervisor.server.iii_door import channels as channels_mod
from iii_supervisor.server.iii_door import otel
from iii_supervisor.server.iii_door.channels import MAX_CHANNEL_MESSAGE, ChannelEndpoints
from iii_supervisor.server.iii_door.otel import level_of, log_entries, serve_otel


class DoorPeer:
    """What the door's session does with channel messages: hands them to the endpoints first."""

    def __init__(self, endpoints: ChannelEndpoints, name: str = "door-worker") -> None:
        self.endpoints = endpoints
        self.name = name
        self.worker_id = name + "-id"
        self.sent: list[Any] = []

    def send_nowait(self, msg: Any) -> None:
        if not self.endpoints.outgoing(self, msg):
            self.sent.append(msg)

    def backlog(self) -> int:
        return 0


@attrs.define
class Door:
    table: ChannelTable
    registry: Registry
    invoker: Invoker
    endpoints: ChannelEndpoints
    log: LogModule
    port: int

    def url(self, wire: dict[str, Any], direction: str | None = None, key: str | None = None) -> str:
        return (f"ws://127.0.0.1:{self.port}/ws/channels/{wire['channel_id']}"
                f"?key={key or wire['access_key']}&dir={direction or wire['direction']}")


@asynccontextmanager
async def door() -> AsyncIterator[Door]:
    registry, table = Registry(), ChannelTable()
    invoker = Invoker(registry)
    endpoints = ChannelEndpoints(table, registry)
    log_module = LogModule(LogConfig(), registry, invoker)

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        parts = urlsplit(ws.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path == "/otel":
            await serve_otel(ws, invoker, peer_name="otel-worker")
        else:
            await endpoints.serve(ws, parts.path.rsplit("/", 1)[-1], query.get("key", ""), query.get("dir", ""))

    async with trio.open_nursery() as nursery:
        await nursery.start(invoker.run)
        await nursery.start(log_module.run)
        endpoints.install()
        server = await nursery.start(lambda task_status: serve_websocket(
            handler, "127.0.0.1", 0, None, max_message_size=4 * MAX_CHANNEL_MESSAGE, task_status=task_status))
        yield Door(table, registry, invoker, endpoints, log_module, server.port)
        nursery.cancel_scope.cancel()


async def closed_with(ws: WebSocketConnection) -> int | None:
    """Read until the server closes; the close code."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await ws.get_message()
    return info.value.reason.code if info.value.reason else None


async def until(predicate: Any) -> None:
    while not predicate():
        await trio.sleep(0.01)


# --- the HTTP front's channels -------------------------------------------------------------------


async def test_a_response_written_on_a_socket_reaches_the_table_as_the_session_with_flow_control() -> None:
    with trio.fail_after(10):
        async with door() as d:
            peer = DoorPeer(d.endpoints)
            channel = d.table.open_inbound(peer)
            payload = d.endpoints.wire_data(peer, {"nested": [{"response": channel.ref().to_wire()}], "x": 1})
            wire = payload["nested"][0]["response"]
            assert payload["x"] == 1 and wire["direction"] == "write"
            assert isinstance(wire["channel_id"], str) and len(wire["access_key"]) >= 24
            async with open_websocket_url(d.url(wire)) as ws:
                await ws.send_message(orjson.dumps({"type": "set_status", "status_code": 206}).decode())
                piece = b"x" * (100 * 1024)
                for _ in range(5):  # 500 KiB against a 256 KiB window
                    await ws.send_message(piece)
                await until(lambda: len(channel.inbox) == 4)
                await trio.sleep(0.2)  # no grant: the socket is not read further
                assert len(channel.inbox) == 4
                events = [await channel.inbox.get() for _ in range(4)]
                status = {"type": "set_status", "status_code": 206}
                assert events[0] == ChannelControl(channel_id=channel.id, data=status)
                assert all(e == Chunk(channel.id, piece) for e in events[1:])
                channel.grant(CHANNEL_WINDOW)  # the front passed the bytes on
                await until(lambda: len(channel.inbox) == 2)
            with trio.fail_after(2):
                events = [await channel.inbox.get() for _ in range(3)]
            assert events[:2] == [Chunk(channel.id, piece)] * 2 and events[2] == ChannelClose(channel_id=channel.id)
            assert peer.sent == []  # nothing went to the main socket
            await until(lambda: len(d.endpoints) == 0)


async def test_frames_from_a_forged_or_stale_socket_do_not_reach_the_channel() -> None:
    with trio.fail_after(10):
        async with door() as d:
            peer = DoorPeer(d.endpoints)
            channel = d.table.open_inbound(peer)
            wire = d.endpoints.to_wire(peer, channel.ref())
            for url in (d.url(wire, key="wrong-key"), d.url(wire, direction="read"),
                        d.url({**wire, "channel_id": "nope"})):
                parts = urlsplit(url)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                assert not d.endpoints.admits(parts.path.rsplit("/", 1)[-1], query["key"], query["dir"])
                async with open_websocket_url(url) as ws:
                    assert await closed_with(ws) == 1008
            assert d.endpoints.admits(wire["channel_id"], wire["access_key"], "write")
            async with open_websocket_url(d.url(wire)) as ws, open_websocket_url(d.url(wire)) as second:
                assert await closed_with(second) == 1008  # each end is taken once
                await ws.send_message(b"ok")
                await until(lambda: len(channel.inbox) == 1)
            assert d.endpoints.from_wire(peer, wire) is None  # (taken and done: forgotten)
            assert d.endpoints.from_wire(DoorPeer(d.endpoints), wire) is None


async def test_garbage_on_a_write_socket_closes_it_and_ends_the_channel_with_an_error() -> None:
    with trio.fail_after(10):
        async with door() as d:
            peer = DoorPeer(d.endpoints)
            for garbage, code in (("not json", 1003), ("[1, 2]", 1003), (b"x" * (MAX_CHANNEL_MESSAGE + 1), 1009)):
                channel = d.table.open_inbound(peer)
                async with open_websocket_url(d.url(d.endpoints.to_wire(peer, channel.ref()))) as ws:
                    await ws.send_message(garbage)
                    assert await closed_with(ws) == code
                event = await channel.inbox.get()
                assert type(event) is ChannelClose and event.error is not None and event.error.code == "channel_aborted"


async def test_the_engine_reader_giving_up_closes_the_writer_socket() -> None:
    with trio.fail_after(10):
        async with door() as d:
            peer = DoorPeer(d.endpoints)
            channel = d.table.open_inbound(peer)
            wire = d.endpoints.to_wire(peer, channel.ref())
            async with open_websocket_url(d.url(wire)) as ws:
                await ws.send_message(b"a")
                await until(lambda: len(channel.inbox) == 1)
                channel.abandon("client_disconnected", "the HTTP client went away")  # → outgoing
                assert await closed_with(ws) == 1011
                with pytest.raises(ConnectionClosed):
                    await ws.send_message(b"b")  # the handler's next write raises
            # abandoned before the socket connected: it is refused
            early = d.table.open_inbound(peer)
            wire = d.endpoints.to_wire(peer, early.ref())
            early.abandon("client_disconnected", "gone")
            async with open_websocket_url(d.url(wire)) as ws:
                assert await closed_with(ws) == 1008


async def test_a_request_body_is_buffered_for_a_late_reader_split_into_1_mib_frames() -> None:
    with trio.fail_after(10):
        async with door() as d:
            peer = DoorPeer(d.endpoints)
            ref = d.table.open_outbound(peer)
            wire = d.endpoints.wire_data(peer, {"request_body": ref.to_wire()})["request_body"]
            body = bytes(range(256)) * (10 * 1024)  # 2.5 MiB
            peer.send_nowait(Chunk(ref.channel_id, body))
            peer.send_nowait(ChannelClose(channel_id=ref.channel_id))
            assert peer.sent == []
            got = []
            async with open_websocket_url(d.url(wire), max_message_size=MAX_CHANNEL_MESSAGE) as ws:
                with pytest.raises(ConnectionClosed) as info:
                    while True:
                        got.append(await ws.get_message())
            assert info.value.reason.code == 1000
            mib = MAX_CHANNEL_MESSAGE
            assert [len(g) for g in got] == [mib, mib, len(body) - 2 * mib]
            assert b"".join(got) == body
            # an empty body (eof reference): the reader gets the close at once; an aborted one: 1011
            empty = d.endpoints.to_wire(peer, d.table.open_outbound(peer, empty=True))
            async with open_websocket_url(d.url(empty)) as ws:
                assert await closed_with(ws) == 1000
            cut = d.table.open_outbound(peer)
            wire = d.endpoints.to_wire(peer, cut)
            async with open_websocket_url(d.url(wire)) as ws:
                peer.send_nowait(Chunk(cut.channel_id, b"part"))
                assert await ws.get_message() == b"part"
                peer.send_nowait(ChannelClose(channel_id=cut.channel_id,
                                              error=ErrorBody(code="client_disconnected", message="gone")))
                assert await closed_with(ws) == 1011


async def test_buffers_of_readers_that_never_connect_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channels_mod, "READ_BUFFER_LIMIT", 1000)
    monkeypatch.setattr(channels_mod, "UNTAKEN_BUFFER_LIMIT", 1500)
    with trio.fail_after(10):
        async with door() as d:
            peer = DoorPeer(d.endpoints)
            refs = [d.table.open_outbound(peer) for _ in range(3)]
            wires = [d.endpoints.to_wire(peer, r) for r in refs]
            peer.send_nowait(Chunk(refs[0].channel_id, b"x" * 1200))  # over one end's limit: it fails
            peer.send_nowait(Chunk(refs[1].channel_id, b"y" * 900))
            peer.send_nowait(Chunk(refs[2].channel_id, b"z" * 900))  # over the total: the oldest buffer goes
            assert d.endpoints._untaken_bytes == 900
            for wire, code in zip(wires, (1011, 1011, None), strict=True):
                async with open_websocket_url(d.url(wire)) as ws:
                    if code is None:
                        assert await ws.get_message() == b"z" * 900
                        peer.send_nowait(ChannelClose(channel_id=refs[2].channel_id))
                        code = 1000
                    assert await closed_with(ws) == code


async def test_ends_are_swept_when_untaken_or_when_their_call_is_over(autojump_clock: Any) -> None:
    with trio.fail_after(channels_mod.UNTAKEN_TTL + 60):  # (virtual seconds: autojump_clock)
        registry, table = Registry(), ChannelTable()
        endpoints = ChannelEndpoints(table, registry)
        peer = DoorPeer(endpoints)
        old = endpoints.to_wire(peer, table.open_outbound(peer))
        response = table.open_inbound(peer)
        call = endpoints.wire_data(peer, {"request_body": table.open_outbound(peer).to_wire(),
                                          "response": response.ref().to_wire()})
        # the same, one reference at a time (as the door converts them): the HTTP front's pair of ids is one call
        response2 = table.open_inbound(peer)
        body2 = table.open_outbound(peer)
        per_ref = [endpoints.to_wire(peer, body2), endpoints.to_wire(peer, response2.ref())]
        peer.send_nowait(Chunk(body2.channel_id, b"an unread JSON body"))
        assert len(endpoints) == 5
        await trio.sleep(2)
        endpoints.to_wire(peer, table.open_outbound(peer, empty=True))  # (a sweep runs on minting)
        assert len(endpoints) == 6
        response.close()  # the HTTP front is done with the call: its ends go at the next sweep
        response2.close()
        await trio.sleep(2)
        endpoints.to_wire(peer, table.open_outbound(peer, empty=True))
        for gone in (call["request_body"], call["response"], *per_ref):
            assert gone["channel_id"] not in endpoints._ends
        assert len(endpoints) == 3 and endpoints._untaken_bytes == 0
        await trio.sleep(channels_mod.UNTAKEN_TTL)
        endpoints.to_wire(peer, table.open_outbound(peer, empty=True))
        assert old["channel_id"] not in endpoints._ends and len(endpoints) == 1
        endpoints.session_closed(peer)
        assert len(endpoints) == 0
        # messages for channels nobody minted (or that are over) are consumed, not sent on the main socket
        peer.send_nowait(Chunk(12345, b"late"))
        peer.send_nowait(ChannelWindow(channel_id=12345, size=1))
        assert peer.sent == []


# --- engine::channels::create ----------------------------------------------------------------------


async def test_a_pipe_carries_frames_from_its_writer_socket_to_its_reader_socket_in_order() -> None:
    with trio.fail_after(10):
        async with door() as d:
            refs = await d.invoker.call("engine::channels::create", {"buffer_size": 2})
            assert refs["writer"]["direction"] == "write" and refs["reader"]["direction"] == "read"
            async with open_websocket_url(d.url(refs["writer"])) as writer:
                await writer.send_message("a text frame")
                for i in range(10):
                    await writer.send_message(bytes([i]) * 1000)
                await trio.sleep(0.1)  # the writer socket is not read while the pipe is full
                assert {len(e.pipe.items) for e in d.endpoints._ends.values() if e.pipe} == {2}
                async with open_websocket_url(d.url(refs["reader"])) as reader:
                    assert await reader.get_message() == "a text frame"
                    got = [await reader.get_message() for _ in range(10)]
                    assert got == [bytes([i]) * 1000 for i in range(10)]
                    await writer.aclose()
                    assert await closed_with(reader) == 1000
            assert len(d.endpoints) == 0
            for bad in (0, 1025, "8", True):
                with pytest.raises(InvocationError) as info:
                    await d.invoker.call("engine::channels::create", {"buffer_size": bad})
                assert info.value.code == "invalid_argument" and "buffer_size" in info.value.message
            assert (await d.invoker.call("engine::channels::create", {"buffer_size": None}))["reader"]


async def test_a_pipe_reader_leaving_closes_its_writer_and_a_creator_leaving_drops_untaken_ends() -> None:
    with trio.fail_after(10):
        async with door() as d:
            refs = await d.invoker.call("engine::channels::create", {})
            async with open_websocket_url(d.url(refs["writer"])) as writer:
                async with open_websocket_url(d.url(refs["reader"])) as reader:
                    await writer.send_message(b"1")
                    assert await reader.get_message() == b"1"
                assert await closed_with(writer) == 1001
            creator = DoorPeer(d.endpoints, name="")  # (the invoker's caller name for in-engine calls is "")
            refs = await d.invoker.call("engine::channels::create", {})
            d.endpoints.session_closed(creator)
            async with open_websocket_url(d.url(refs["reader"])) as reader:
                assert await closed_with(reader) == 1008


# --- /otel ----------------------------------------------------------------------------------------


def _sdk_logs_frame(level: str, message: str, data: Any = None, trace_id: int = 0) -> bytes:
    """A LOGS frame exactly as iii-sdk 0.25 serialises a Logger record."""
    from iii_helpers.observability.telemetry_exporters import _serialize_logs
    from opentelemetry._logs import LogRecord, SeverityNumber
    from opentelemetry.sdk.resources import Resource

    numbers = {"debug": 5, "info": 9, "warn": 13, "error": 17}
    attrs: dict[str, Any] = {"service.name": ""}
    if data is not None:
        attrs["log.data"] = data
    record = LogRecord(timestamp=1, observed_timestamp=1, severity_text=level.upper(),
                       severity_number=SeverityNumber(numbers[level]), body=message, attributes=attrs,
                       trace_id=trace_id, span_id=7 if trace_id else 0)
    # (what the SDK's batch processor hands the exporter: the record with its resource and scope)
    readable = SimpleNamespace(log_record=record, resource=Resource.create({}), instrumentation_scope=None)
    return b"LOGS" + _serialize_logs([readable])


def test_otlp_log_records_decode_to_entries() -> None:
    frame = _sdk_logs_frame("warn", "order failed", {"order": "o1", "n": 2, "tags": ["a"]}, trace_id=0xABC)
    entries, dropped = log_entries(frame[4:])
    assert dropped == 0
    assert entries == [{"level": "warn", "message": "order failed", "data": {"order": "o1", "n": 2, "tags": ["a"]},
                        "trace_id": f"{0xABC:032x}", "span_id": f"{7:016x}"}]
    assert [level_of(n, None) for n in (1, 5, 9, 13, 17, 21, 0, 99)] == [
        "debug", "debug", "info", "warn", "error", "error", "info", "info"]
    assert [level_of(None, t) for t in ("WARNING", "Error", "fatal", "trace", "")] == [
        "warn", "error", "error", "debug", "info"]
    for garbage in (b"{", b"[]", b'{"resourceLogs": 5}'):
        with pytest.raises(otel.BadTelemetry):
            log_entries(garbage)
    # a body or an attribute that JSON-decodes but nests deeper than orjson encodes (not dicts:
    # any_value passes lists through) is bad telemetry, not a TypeError out of the socket
    deep = b"[" * 300 + b"]" * 300
    for record in (b'{"body":%s}' % deep, b'{"attributes":[{"key":"log.data","value":%s}]}' % deep):
        with pytest.raises(otel.BadTelemetry, match="cannot be re-encoded as JSON"):
            log_entries(b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[%s]}]}]}' % record)
    odd = orjson.dumps({"resourceLogs": [5, {"scopeLogs": [None, {"logRecords": [
        7, {"body": {"kvlistValue": {"values": [{"key": "k", "value": {"intValue": "12"}}]}}, "traceId": "zz"}]}]}]})
    assert log_entries(odd)[0] == [{"level": "info", "message": '{"k":12}', "data": None, "trace_id": None,
                                    "span_id": None}]


async def test_the_otel_socket_records_log_entries_and_closes_on_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(10):
        async with door() as d:
            url = f"ws://127.0.0.1:{d.port}/otel"
            async with open_websocket_url(url) as ws:
                await ws.send_message(b"OTLP" + b'{"resourceSpans": []}')  # accepted, dropped
                await ws.send_message(b"MTRC" + b"anything")
                await ws.send_message(_sdk_logs_frame("error", "boom", {"k": 1}))
                await ws.send_message(_sdk_logs_frame("info", "fine"))
                await until(lambda: len([e for e in d.log.entries if e["source"] == "otel"]) == 2)
            boom, fine = [e for e in d.log.entries if e["source"] == "otel"]
            assert (boom["level"], boom["message"], boom["data"], boom["worker_name"]) == (
                "error", "boom", {"k": 1}, "otel-worker")
            assert (fine["level"], fine["message"]) == ("info", "fine")
            deep = b'LOGS{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":%s}]}]}]}' % (b"[" * 300 + b"]" * 300)
            async with open_websocket_url(url) as ws:  # (orjson decodes it, and cannot encode it again)
                await ws.send_message(deep)
                assert await closed_with(ws) == 1002
            monkeypatch.setattr(otel, "MAX_TELEMETRY_FRAME", 100)
            for garbage, code in (("text", 1003), (b"XXXX{}", 1003), (b"LOGS{", 1002), (b"LOGS" + b" " * 200, 1009)):
                async with open_websocket_url(url) as ws:
                    await ws.send_message(garbage)
                    assert await closed_with(ws) == code
            # the built-in skips what is not an entry; worker_name is honoured from inside the engine
            entries = [{"level": "warn", "message": "m"}, "junk", {"message": 5}]
            assert await d.invoker.call("engine::log::entries", {"entries": entries, "worker_name": "x"}) == {
                "recorded": 1}
            assert d.log.entries[-1]["worker_name"] == "x"


async def test_otlp_entries_feed_log_triggers_except_under_the_trace_of_a_delivery() -> None:
    """A door worker's log records carry no baggage: an entry logged inside a log trigger's handler
    (it continues the delivery's trace) must not be fed to the triggers again."""
    with trio.fail_after(10):
        async with door() as d:
            got: list[dict[str, Any]] = []

            async def handler(entry: dict[str, Any]) -> None:
                got.append(entry)

            d.registry.add_builtin("t.on_log", handler, "test")
            d.registry.add_trigger(TriggerEntry("t1", "log", "t.on_log", {"level": "warn"}, None))
            first = {"level": "warn", "message": "first", "trace_id": "a" * 32}
            await d.invoker.call("engine::log::entries", {"worker_name": "w", "entries": [first]})
            await until(lambda: len(got) == 1)
            inside = {"level": "error", "message": "logged by the handler", "trace_id": "a" * 32}
            other = {"level": "error", "message": "another trace", "trace_id": "b" * 32}
            await d.invoker.call("engine::log::entries", {"worker_name": "w", "entries": [inside, other]})
            await until(lambda: len(got) == 2)
            assert [e["message"] for e in got] == ["first", "another trace"]
            assert [e["message"] for e in d.log.entries][-3:] == ["first", "logged by the handler", "another trace"]


async def test_the_session_leaving_closes_its_channel_sockets() -> None:
    with trio.fail_after(10):
        async with door() as d:
            peer = DoorPeer(d.endpoints)
            channel = d.table.open_inbound(peer)
            ref = d.table.open_outbound(peer)
            write, read = d.endpoints.to_wire(peer, channel.ref()), d.endpoints.to_wire(peer, ref)
            async with open_websocket_url(d.url(write)) as w, open_websocket_url(d.url(read)) as r:
                await w.send_message(b"x")
                await until(lambda: len(channel.inbox) == 1)
                d.table.peer_closed(peer)  # what Session.close does, then the door:
                d.endpoints.session_closed(peer)
                assert await closed_with(w) == 1001 and await closed_with(r) == 1001
            assert len(d.endpoints) == 0



async def test_the_http_front_waits_for_a_response_socket_that_comes_after_a_null_result() -> None:
    """The Node SDK's @http handler returns before its channel socket has connected."""
    import httpx

    from iii_supervisor.protocol.channels import ChannelRef
    from iii_supervisor.server import http as http_module
    from inprocess import engine_parts

    with trio.fail_after(15):
        async with engine_parts(modules=[http_module.SPEC], config={"http": {"port": 0}}) as parts:
            endpoints = ChannelEndpoints(parts.channels, parts.registry)

            async def handler(request: WebSocketRequest) -> None:
                ws = await request.accept()
                parts_ = urlsplit(ws.path)
                query = {k: v[0] for k, v in parse_qs(parts_.query).items()}
                await endpoints.serve(ws, parts_.path.rsplit("/", 1)[-1], query["key"], query["dir"])

            server = await parts.nursery.start(lambda task_status: serve_websocket(
                handler, "127.0.0.1", 0, None, task_status=task_status))
            worker = await parts.worker("door-like")

            async def write_late(wire: dict[str, Any]) -> None:
                await trio.sleep(0.05)  # the result is long gone
                url = f"ws://127.0.0.1:{server.port}/ws/channels/{wire['channel_id']}?key={wire['access_key']}&dir=write"
                async with open_websocket_url(url) as ws:
                    await ws.send_message('{"type": "set_status", "status_code": 206}')
                    await ws.send_message(b"late ")
                    await ws.send_message(b"body")

            async def streaming(data: Any) -> None:
                ref = ChannelRef.parse(data["response"])
                assert ref is not None
                parts.nursery.start_soon(write_late, endpoints.to_wire(worker.session, ref))  # (as the door does)

            async def silent(data: Any) -> None:
                ref = ChannelRef.parse(data["response"])
                assert ref is not None
                endpoints.to_wire(worker.session, ref)

            for name, fn in (("streaming", streaming), ("silent", silent)):
                await worker.register_function(f"d.{name}", fn)
                await worker.register_trigger("http", f"d.{name}", {"api_path": f"/{name}", "http_method": "GET"})
            port = parts.modules["http"].port  # type: ignore[attr-defined]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                response = await client.get("/streaming")
                assert (response.status_code, response.content) == (206, b"late body")
                started = trio.current_time()
                response = await client.get("/silent")  # null, and no socket: 204 after the grace
                assert response.status_code == 204 and trio.current_time() - started < 2


async def test_at_max_ends_the_oldest_untaken_go_without_a_scan_of_all(monkeypatch: pytest.MonkeyPatch,
                                                                       autojump_clock: Any) -> None:
    monkeypatch.setattr(channels_mod, "MAX_ENDS", 100)
    with trio.fail_after(10):
        endpoints = ChannelEndpoints(ChannelTable(), Registry())
        pipes = [await endpoints._create({}) for _ in range(50)]
        assert len(endpoints) == 100
        looked = 0
        real_call_over = endpoints._call_over

        def counting(end: Any) -> bool:
            nonlocal looked
            looked += 1
            return real_call_over(end)

        monkeypatch.setattr(endpoints, "_call_over", counting)
        pipes += [await endpoints._create({}) for _ in range(50)]
        assert len(endpoints) <= 100
        assert pipes[0]["writer"]["channel_id"] not in endpoints._ends  # the oldest went
        assert pipes[-1]["reader"]["channel_id"] in endpoints._ends
        assert looked == 0  # (it scanned every end on each mint at the cap: ~28 ms a call with 50,000)
        await trio.sleep(channels_mod.SWEEP_INTERVAL)
        await endpoints._create({})  # the periodic sweep still runs
        assert looked > 0


async def test_a_reference_to_another_workers_channel_cannot_cut_that_worker_off() -> None:
    """Channel ids are sequential: a peer naming another worker's channel in a payload (its own
    function's, say) got an end minted that replaced, and dropped, the real worker's."""
    with trio.fail_after(5):
        table = ChannelTable()
        endpoints = ChannelEndpoints(table, Registry())
        owner, intruder = DoorPeer(endpoints, "owner"), DoorPeer(endpoints, "intruder")
        for future in (1, 2):  # ids not issued yet: the owner's, in a moment
            pre = endpoints._ends[endpoints.to_wire(intruder, ChannelRef(future, "read"))["channel_id"]]
            assert pre.ended and pre.error is not None and pre.error.code == "channel_not_yours"
        response = table.open_inbound(owner)
        body = table.open_outbound(owner)
        call = endpoints.wire_data(owner, {"response": response.ref().to_wire(), "request_body": body.to_wire()})
        forged_write = endpoints.to_wire(intruder, response.ref())
        assert not endpoints.admits(forged_write["channel_id"], forged_write["access_key"], "write")
        forged_read = endpoints._ends[endpoints.to_wire(intruder, body)["channel_id"]]
        assert forged_read.ended and forged_read.error is not None and forged_read.error.code == "channel_not_yours"
        for ref in (call["response"], call["request_body"]):
            assert endpoints.admits(ref["channel_id"], ref["access_key"], ref["direction"]), ref
        owner.send_nowait(Chunk(body.channel_id, b"the body"))  # still reaches the owner's read end
        end = endpoints._ends[call["request_body"]["channel_id"]]
        assert list(end.frames) == [b"the body"]
        # the owner naming its own channel again still moves it to the newer reference
        again = endpoints.to_wire(owner, response.ref())
        assert endpoints.admits(again["channel_id"], again["access_key"], "write")
        assert not endpoints.admits(call["response"]["channel_id"], call["response"]["access_key"], "write")
