"""Pure unit tests of the sans-IO worker-socket protocol (no sockets, no trio).

Covers iii_supervisor.protocol.frames (FrameDecoder, encode_frame), .codec (decode_payload,
encode_message, encode_chunk, Connection), .messages (the registry) and errors.error_from_wire.
"""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from pathlib import Path

import attrs
import orjson
import pytest

from iii_supervisor import errors
from iii_supervisor.errors import (
    EngineError,
    FrameTooLarge,
    MalformedMessage,
    ProtocolError,
    UnknownMessageType,
    error_from_wire,
)
from iii_supervisor.protocol import (
    CHUNK_KIND,
    DEFAULT_MAX_FRAME_SIZE,
    MESSAGE_TYPES,
    TYPE_TAGS,
    Action,
    ChannelClose,
    ChannelControl,
    ChannelWindow,
    Chunk,
    Connection,
    Error,
    ErrorBody,
    FrameDecoder,
    FunctionRegistered,
    Hello,
    InvocationResult,
    InvokeFunction,
    Ping,
    Pong,
    RegisterFunction,
    RegisterTrigger,
    RegisterTriggerType,
    TriggerRegistrationResult,
    UnregisterFunction,
    UnregisterTrigger,
    UnregisterTriggerType,
    WorkerReady,
    WorkerRegistered,
    decode_payload,
    encode,
    encode_chunk,
    encode_frame,
    encode_message,
)
from iii_supervisor.protocol.codec import structure
from iii_supervisor.protocol.frames import ABSOLUTE_MAX_FRAME_SIZE

PROJECT_ROOT = Path(__file__).resolve().parents[1]


# --- helpers ----------------------------------------------------------------------------------


def drain(dec: FrameDecoder) -> list[bytes]:
    out = []
    while (payload := dec.next_frame()) is not None:
        out.append(payload)
    return out


def payload_of(frame: bytes) -> bytes:
    """Strip and check the 4-byte length prefix of one complete frame."""
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4, "length prefix does not match the payload"
    return frame[4:]


def random_chunks(data: bytes, rng: random.Random, max_size: int) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        n = rng.randint(1, max_size)
        chunks.append(data[i : i + n])
        i += n
    return chunks


# --- sample messages --------------------------------------------------------------------------

ERR = ErrorBody(code="invocation_failed", message="boom", stacktrace="Traceback ...\n  line 1")

#: One instance per message class with *every* field set to a non-default value.
FULL_SAMPLES = [
    Hello(token="s3cr3t", name="worker-a", pid=4242),
    WorkerRegistered(worker_id="w-1", name="worker-a", max_frame_size=1024),
    WorkerReady(),
    Error(error=ERR),
    Ping(),
    Pong(),
    RegisterFunction(
        id="math.add",
        description="adds",
        request_format={"type": "object", "properties": {"a": {"type": "number"}}},
        response_format=["number", None, 1.5, True],
        metadata={"owner": "team", "tags": ["x", "y"], "n": 3},
        invocation={"url": "https://example.com/add", "method": "PUT", "timeout_ms": 500,
                    "headers": {"x-a": "b"}, "auth": {"type": "hmac", "secret_key": "ADD_SECRET"}},
    ),
    FunctionRegistered(id="math.add", error=ErrorBody(code="function_conflict", message="taken")),
    UnregisterFunction(id="math.add"),
    RegisterTrigger(
        id="t-1",
        trigger_type="cron",
        function_id="math.add",
        config={"expression": "*/5 * * * *", "nested": {"a": [1, 2, {"b": None}]}},
        metadata={"k": "v"},
    ),
    UnregisterTrigger(id="t-1", trigger_type="cron"),
    TriggerRegistrationResult(id="t-1", trigger_type="cron", function_id="math.add", error=ERR),
    RegisterTriggerType(
        id="cron",
        description="time based",
        trigger_request_format={"expression": "string"},
        call_request_format="anything",
    ),
    UnregisterTriggerType(id="cron"),
    InvokeFunction(
        function_id="math.add",
        data={"a": 1, "b": 2.5, "s": "é ✓ \u0000", "l": [True, False, None], "big": 2**62},
        invocation_id="inv-1",
        action=Action(type="enqueue", queue="default"),
        timeout_ms=30_000,
        metadata={"m": 1},
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        baggage="k=v",
    ),
    InvocationResult(
        invocation_id="inv-1",
        function_id="math.add",
        result={"sum": 3.5},
        error=ERR,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ),
    ChannelControl(channel_id=7, data={"op": "set_status", "status": 201}),
    ChannelClose(channel_id=7, error=ErrorBody(code="c", message="m")),
    ChannelWindow(channel_id=7, size=65536),
]


#: One instance per message class with only the required fields set.
MINIMAL_SAMPLES = [
    Hello(token="t"),
    WorkerRegistered(worker_id="w"),
    WorkerReady(),
    Error(error=ErrorBody(code="c", message="m")),
    Ping(),
    Pong(),
    RegisterFunction(id="f"),
    FunctionRegistered(id="f"),
    UnregisterFunction(id="f"),
    RegisterTrigger(id="t", trigger_type="cron", function_id="f"),
    UnregisterTrigger(id="t"),
    TriggerRegistrationResult(id="t", trigger_type="cron", function_id="f"),
    RegisterTriggerType(id="cron"),
    UnregisterTriggerType(id="cron"),
    InvokeFunction(function_id="f"),
    InvocationResult(invocation_id="i"),
    ChannelControl(channel_id=0, data={}),
    ChannelClose(channel_id=0),
    ChannelWindow(channel_id=0, size=0),
]
_MINIMAL_BY_CLASS = {type(m): m for m in MINIMAL_SAMPLES}

#: The wire vocabulary, spelled out so that a renamed class cannot silently change the protocol.
EXPECTED_TAGS = {
    "hello": Hello,
    "workerregistered": WorkerRegistered,
    "workerready": WorkerReady,
    "error": Error,
    "ping": Ping,
    "pong": Pong,
    "registerfunction": RegisterFunction,
    "functionregistered": FunctionRegistered,
    "unregisterfunction": UnregisterFunction,
    "registertrigger": RegisterTrigger,
    "unregistertrigger": UnregisterTrigger,
    "triggerregistrationresult": TriggerRegistrationResult,
    "registertriggertype": RegisterTriggerType,
    "unregistertriggertype": UnregisterTriggerType,
    "invokefunction": InvokeFunction,
    "invocationresult": InvocationResult,
    "channelcontrol": ChannelControl,
    "channelclose": ChannelClose,
    "channelwindow": ChannelWindow,
}


def _id(obj: object) -> str:
    return type(obj).__name__


# --- FrameDecoder -----------------------------------------------------------------------------


def test_encode_frame_layout():
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"x" * 0x01020304)[:4] == b"\x01\x02\x03\x04"  # big-endian


def test_frame_fed_byte_by_byte():
    payload = b'{"type":"ping","filler":"' + bytes(range(32, 127)) + b'"}'
    frame = encode_frame(payload)
    dec = FrameDecoder()
    for i, byte in enumerate(frame):
        assert dec.next_frame() is None, f"a frame came out early, before byte {i}"
        dec.feed(bytes([byte]))
    assert dec.next_frame() == payload
    assert dec.next_frame() is None
    assert dec.buffered == 0


def test_several_frames_in_one_chunk():
    payloads = [b"a", b"", b"bc" * 100, b"\x00\x00\x00\x05", b"{}"]
    dec = FrameDecoder()
    dec.feed(b"".join(encode_frame(p) for p in payloads))
    assert drain(dec) == payloads
    assert dec.buffered == 0


def test_payload_is_an_independent_bytes_copy():
    dec = FrameDecoder()
    dec.feed(encode_frame(b"first") + encode_frame(b"second")[:6])
    first = dec.next_frame()
    assert type(first) is bytes
    # more data (and a compaction of the internal buffer) must not change what was returned
    dec.feed(encode_frame(b"second")[6:] + encode_frame(b"third"))
    assert drain(dec) == [b"second", b"third"]
    assert first == b"first"


MULTI_PAYLOADS = [b"", b"x", b"hello world", b"\x00" * 9, b"{}", b"\xff" * 4]
MULTI_BUFFER = b"".join(encode_frame(p) for p in MULTI_PAYLOADS)


@pytest.mark.parametrize("cut", range(len(MULTI_BUFFER) + 1))
def test_multi_frame_buffer_split_at_every_offset(cut):
    dec = FrameDecoder()
    dec.feed(MULTI_BUFFER[:cut])
    got = drain(dec)
    # whatever came out before the cut is a prefix of the frames, in order
    assert got == MULTI_PAYLOADS[: len(got)]
    dec.feed(MULTI_BUFFER[cut:])
    got += drain(dec)
    assert got == MULTI_PAYLOADS
    assert dec.buffered == 0


def test_multi_frame_buffer_split_at_every_pair_of_offsets():
    n = len(MULTI_BUFFER)
    for i in range(n + 1):
        for j in range(i, n + 1):
            dec = FrameDecoder()
            got = []
            for part in (MULTI_BUFFER[:i], MULTI_BUFFER[i:j], MULTI_BUFFER[j:]):
                if part:
                    dec.feed(part)
                got += drain(dec)
            assert got == MULTI_PAYLOADS, (i, j)


def test_frame_of_exactly_max_frame_size_is_accepted():
    dec = FrameDecoder(max_frame_size=100)
    dec.feed(encode_frame(b"m" * 100))
    assert dec.next_frame() == b"m" * 100


def test_max_frame_size_of_one_byte():
    dec = FrameDecoder(max_frame_size=1)
    dec.feed(encode_frame(b"") + encode_frame(b"z"))
    assert drain(dec) == [b"", b"z"]
    dec.feed(encode_frame(b"zz"))
    with pytest.raises(FrameTooLarge):
        dec.next_frame()


def test_oversized_frame_rejected_as_soon_as_the_header_is_in():
    dec = FrameDecoder(max_frame_size=100)
    header = struct.pack(">I", 101)
    for byte in header[:3]:
        dec.feed(bytes([byte]))
        assert dec.next_frame() is None  # header incomplete: cannot know yet
    dec.feed(header[3:])  # header complete, not a single payload byte
    assert dec.buffered == 4
    with pytest.raises(FrameTooLarge) as info:
        dec.next_frame()
    exc = info.value
    assert isinstance(exc, ProtocolError)
    assert exc.code == "frame_too_large"
    assert "101" in exc.message and "100" in exc.message, exc.message
    # the decoder stays in error: asking again does not skip the bad frame
    with pytest.raises(FrameTooLarge):
        dec.next_frame()


def test_huge_announced_length_rejected_without_buffering():
    dec = FrameDecoder()  # default max
    dec.feed(b"\xff\xff\xff\xff")
    with pytest.raises(FrameTooLarge) as info:
        dec.next_frame()
    assert str(2**32 - 1) in info.value.message
    assert str(DEFAULT_MAX_FRAME_SIZE) in info.value.message


def test_oversized_frame_after_good_frames():
    dec = FrameDecoder(max_frame_size=10)
    dec.feed(encode_frame(b"ok") + struct.pack(">I", 11))
    assert dec.next_frame() == b"ok"
    with pytest.raises(FrameTooLarge):
        dec.next_frame()


@pytest.mark.parametrize("bad", [0, -1, ABSOLUTE_MAX_FRAME_SIZE + 1])
def test_invalid_max_frame_size(bad):
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=bad)


def test_absolute_max_frame_size_allowed():
    dec = FrameDecoder(max_frame_size=ABSOLUTE_MAX_FRAME_SIZE)
    dec.feed(b"\xff\xff\xff\xff")
    assert dec.next_frame() is None  # allowed, just waiting for 4 GiB that will never come


def test_zero_length_frame():
    dec = FrameDecoder()
    dec.feed(encode_frame(b"") + encode_frame(b"after"))
    first = dec.next_frame()
    assert first == b"" and first is not None  # an empty payload, not "need more data"
    assert dec.next_frame() == b"after"
    with pytest.raises(MalformedMessage):
        decode_payload(b"")


def test_feed_eof_at_frame_boundary_is_clean():
    dec = FrameDecoder()
    dec.feed(encode_frame(b"abc"))
    assert drain(dec) == [b"abc"]
    dec.feed_eof()  # no error
    with pytest.raises(ProtocolError):
        dec.feed(b"x")  # nothing may follow the end of stream


def test_feed_eof_on_empty_stream_is_clean():
    FrameDecoder().feed_eof()


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 9])  # inside the header, right after it, mid payload
def test_feed_eof_mid_frame_raises(cut):
    frame = encode_frame(b"0123456")  # 11 bytes
    dec = FrameDecoder()
    dec.feed(frame[:cut])
    assert dec.next_frame() is None
    with pytest.raises(ProtocolError) as info:
        dec.feed_eof()
    assert not isinstance(info.value, FrameTooLarge)
    assert str(cut) in info.value.message  # names the pending byte count


def test_feed_eof_mid_second_frame_raises():
    dec = FrameDecoder()
    dec.feed(encode_frame(b"one") + encode_frame(b"two")[:5])
    assert drain(dec) == [b"one"]
    with pytest.raises(ProtocolError):
        dec.feed_eof()


def test_compaction_over_10k_frames_in_random_chunks():
    rng = random.Random(20240613)
    payloads = [rng.randbytes(rng.randint(0, 40)) for _ in range(10_000)]
    stream = b"".join(encode_frame(p) for p in payloads)
    max_chunk = 256
    dec = FrameDecoder(max_frame_size=40)
    got: list[bytes] = []
    peak = 0
    for chunk in random_chunks(stream, rng, max_chunk):
        dec.feed(chunk)
        peak = max(peak, len(dec._buf))
        got += drain(dec)
        # compaction bound: at most two partial frames' worth of stale bytes plus one read
        assert len(dec._buf) <= 2 * (40 + 4) + max_chunk
    assert got == payloads
    assert dec.buffered == 0
    assert peak <= 2 * (40 + 4) + max_chunk
    dec.feed_eof()


def test_compaction_never_at_frame_boundaries():
    # Chunks of 7 bytes over 5-byte frames: the buffer is almost never exactly drained, so
    # only the offset-based compaction keeps it small.
    payloads = [bytes([i % 256]) for i in range(5000)]
    stream = b"".join(encode_frame(p) for p in payloads)
    dec = FrameDecoder()
    got: list[bytes] = []
    for i in range(0, len(stream), 7):
        dec.feed(stream[i : i + 7])
        got += drain(dec)
        assert len(dec._buf) <= 2 * 5 + 7
    assert got == payloads


def test_many_frames_in_one_big_read():
    payloads = [b"%d" % i for i in range(20_000)]
    dec = FrameDecoder()
    dec.feed(b"".join(encode_frame(p) for p in payloads))
    assert drain(dec) == payloads
    assert dec.buffered == 0


# --- codec: messages --------------------------------------------------------------------------


def test_full_samples_cover_every_message_type_and_every_field():
    assert {type(s) for s in FULL_SAMPLES} == set(MESSAGE_TYPES.values())
    assert len(FULL_SAMPLES) == len(MESSAGE_TYPES)
    assert set(_MINIMAL_BY_CLASS) == set(MESSAGE_TYPES.values())
    for sample in FULL_SAMPLES:
        for f in attrs.fields(type(sample)):
            value = getattr(sample, f.name)
            assert value is not None and value != f.default, f"{_id(sample)}.{f.name} is not exercised"


def test_type_tags_are_the_lowercased_class_names():
    assert MESSAGE_TYPES == EXPECTED_TAGS
    for tag, cls in MESSAGE_TYPES.items():
        assert tag == cls.__name__.lower()
        assert TYPE_TAGS[cls] == tag


@pytest.mark.parametrize("msg", FULL_SAMPLES + MINIMAL_SAMPLES, ids=_id)
def test_message_round_trip(msg):
    frame = encode_message(msg)
    payload = payload_of(frame)
    assert payload[:1] == b"{"
    decoded = decode_payload(payload)
    assert type(decoded) is type(msg)
    assert decoded == msg
    assert encode(msg) == frame


@pytest.mark.parametrize("msg", FULL_SAMPLES + MINIMAL_SAMPLES, ids=_id)
def test_type_tag_on_the_wire(msg):
    obj = orjson.loads(payload_of(encode_message(msg)))
    assert obj["type"] == type(msg).__name__.lower()
    assert next(iter(obj)) == "type"  # the tag leads, so a reader can dispatch early


@pytest.mark.parametrize("cls", list(MESSAGE_TYPES.values()), ids=lambda c: c.__name__)
def test_unset_optional_fields_are_omitted_from_the_json(cls):
    msg = _MINIMAL_BY_CLASS[cls]
    obj = orjson.loads(payload_of(encode_message(msg)))
    required = {f.name for f in attrs.fields(cls) if f.default is attrs.NOTHING}
    assert set(obj) == {"type"} | required


def test_omitted_fields_exact_bytes():
    assert payload_of(encode_message(Ping())) == b'{"type":"ping"}'
    assert payload_of(encode_message(InvokeFunction(function_id="f"))) == b'{"type":"invokefunction","function_id":"f"}'
    # nested optional (ErrorBody.stacktrace) is omitted too
    raw = payload_of(encode_message(Error(error=ErrorBody(code="c", message="m"))))
    assert orjson.loads(raw) == {"type": "error", "error": {"code": "c", "message": "m"}}
    assert b"null" not in raw and b"stacktrace" not in raw
    raw = payload_of(encode_message(InvokeFunction(function_id="f", action=Action(type="void"))))
    assert orjson.loads(raw) == {"type": "invokefunction", "function_id": "f", "action": {"type": "void"}}


def test_required_nullable_field_is_sent_as_null():
    # InvocationResult.invocation_id has no default: None must still be on the wire.
    msg = InvocationResult(invocation_id=None)
    obj = orjson.loads(payload_of(encode_message(msg)))
    assert obj == {"type": "invocationresult", "invocation_id": None}
    assert decode_payload(payload_of(encode_message(msg))) == msg


def test_absent_optional_fields_decode_to_defaults():
    msg = decode_payload(b'{"type":"invokefunction","function_id":"f"}')
    assert msg == InvokeFunction(function_id="f")
    assert msg.data is None and msg.action is None and msg.timeout_ms is None
    msg = decode_payload(b'{"type":"registertriggertype","id":"cron"}')
    assert msg == RegisterTriggerType(id="cron", description="")


def test_explicit_nulls_for_optional_fields_are_accepted():
    msg = decode_payload(b'{"type":"invokefunction","function_id":"f","invocation_id":null,"timeout_ms":null}')
    assert msg == InvokeFunction(function_id="f")


def test_json_payload_values_are_passed_through_untouched():
    data = {"nested": {"list": [1, 2.5, "s", None, True, {"deep": []}]}, "unicode": "日本語"}
    msg = decode_payload(payload_of(encode_message(InvokeFunction(function_id="f", data=data))))
    assert msg.data == data
    assert type(msg.data["nested"]["list"][1]) is float
    assert type(msg.data["nested"]["list"][0]) is int


def test_unknown_extra_fields_are_ignored():
    raw = orjson.dumps(
        {
            "type": "invokefunction",
            "function_id": "f",
            "namespace": "ns",
            "whatever": {"a": [1, 2]},
            "action": {"type": "void", "priority": 9},
        }
    )
    assert decode_payload(raw) == InvokeFunction(function_id="f", action=Action(type="void"))
    raw = b'{"type":"error","error":{"code":"c","message":"m","extra":1},"extra":true}'
    assert decode_payload(raw) == Error(error=ErrorBody(code="c", message="m"))
    assert decode_payload(b'{"extra":1,"type":"pong"}') == Pong()  # "type" need not come first


@pytest.mark.parametrize("action_type", ["void", "enqueue"])
def test_valid_action_types(action_type):
    raw = orjson.dumps({"type": "invokefunction", "function_id": "f", "action": {"type": action_type}})
    assert decode_payload(raw).action == Action(type=action_type)


@pytest.mark.parametrize("action_type", ["bogus", "VOID", "", 1, None])
def test_action_type_outside_the_literal_is_rejected(action_type):
    raw = orjson.dumps({"type": "invokefunction", "function_id": "f", "action": {"type": action_type}})
    with pytest.raises(MalformedMessage) as info:
        decode_payload(raw)
    assert "invokefunction.action.type" in info.value.message


def test_invalid_utf8_is_malformed():
    with pytest.raises(MalformedMessage) as info:
        decode_payload(b'{"type":"hello","token":"\xff\xfe"}')
    assert info.value.code == "malformed_message"
    with pytest.raises(MalformedMessage):
        decode_payload(b'{"type":"ping","\xc3":1}')  # truncated multibyte sequence in a key


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"type":"ping"',
        b'{"type":"ping",}',
        b"{'type':'ping'}",
        b'{"type":"ping"} trailing',
        b'{"type":"ping"}{"type":"ping"}',
        b"{type:ping}",
        b"{}}",
    ],
)
def test_invalid_json_is_malformed(raw):
    with pytest.raises(MalformedMessage) as info:
        decode_payload(raw)
    assert type(info.value) is MalformedMessage


@pytest.mark.parametrize(
    "raw",
    [b"[1,2,3]", b'["type","ping"]', b'"ping"', b"42", b"null", b"true", b' {"type":"ping"}', b"\x02abcd"],
)
def test_payload_that_is_not_a_json_object_is_malformed(raw):
    with pytest.raises(MalformedMessage):
        decode_payload(raw)


@pytest.mark.parametrize("value", [[1], "ping", 42, None, 1.5])
def test_structure_rejects_non_objects(value):
    with pytest.raises(MalformedMessage) as info:
        structure(value)
    assert "JSON object" in info.value.message


@pytest.mark.parametrize("raw", [b"{}", b'{"function_id":"f"}', b'{"type":null}'])
def test_missing_type_is_malformed(raw):
    with pytest.raises(MalformedMessage) as info:
        decode_payload(raw)
    assert type(info.value) is MalformedMessage
    assert '"type"' in info.value.message


@pytest.mark.parametrize("tag", ["bogus", "Ping", "PING", "invoke_function", ""])
def test_unknown_type_is_reported_by_name(tag):
    with pytest.raises(UnknownMessageType) as info:
        decode_payload(orjson.dumps({"type": tag}))
    assert isinstance(info.value, ProtocolError)
    assert info.value.code == "unknown_message_type"
    assert repr(tag) in info.value.message


@pytest.mark.parametrize(
    ("obj", "path"),
    [
        ({"type": "invokefunction", "function_id": 5}, "invokefunction.function_id"),
        ({"type": "invokefunction", "function_id": "f", "timeout_ms": True}, "invokefunction.timeout_ms"),
        ({"type": "invokefunction", "function_id": "f", "timeout_ms": "10"}, "invokefunction.timeout_ms"),
        ({"type": "invokefunction", "function_id": "f", "timeout_ms": 1.0}, "invokefunction.timeout_ms"),
        (
            {"type": "registertrigger", "id": "t", "trigger_type": "c", "function_id": "f", "config": [1, 2]},
            "registertrigger.config",
        ),
        ({"type": "error", "error": {"code": "c"}}, "error.error.message"),
        ({"type": "error", "error": "boom"}, "error.error"),
        ({"type": "error"}, "error.error"),
        ({"type": "hello"}, "hello.token"),
        ({"type": "hello", "token": "t", "pid": False}, "hello.pid"),
        ({"type": "channelwindow", "channel_id": "7", "size": 1}, "channelwindow.channel_id"),
        ({"type": "channelwindow", "channel_id": 7, "size": 1.5}, "channelwindow.size"),
        ({"type": "channelcontrol", "channel_id": 7, "data": [1]}, "channelcontrol.data"),
        ({"type": "functionregistered", "id": "f", "error": {"code": 1, "message": "m"}},
         "functionregistered.error.code"),
        ({"type": "invocationresult"}, "invocationresult.invocation_id"),
        ({"type": "invokefunction", "function_id": "f", "metadata": "x"}, "invokefunction.metadata"),
        ({"type": "registerfunction", "id": "f", "invocation": "https://x"}, "registerfunction.invocation"),
    ],
)
def test_wrong_field_types_name_the_field_path(obj, path):
    with pytest.raises(MalformedMessage) as info:
        decode_payload(orjson.dumps(obj))
    assert type(info.value) is MalformedMessage
    assert path in info.value.message, info.value.message


def test_no_coercion_of_strings_to_numbers_or_back():
    # cattrs would happily turn "7" into 7 and 7 into "7"; the wire must not.
    with pytest.raises(MalformedMessage):
        decode_payload(b'{"type":"unregisterfunction","id":7}')
    with pytest.raises(MalformedMessage):
        decode_payload(b'{"type":"channelwindow","channel_id":7,"size":"1"}')


# --- codec: chunks ----------------------------------------------------------------------------


def test_chunk_frame_layout():
    assert CHUNK_KIND == 0x01
    assert encode_chunk(1, b"ab") == b"\x00\x00\x00\x07" + b"\x01" + b"\x00\x00\x00\x01" + b"ab"
    assert encode(Chunk(1, b"ab")) == encode_chunk(1, b"ab")


@pytest.mark.parametrize(
    ("channel_id", "data"),
    [
        (0, b""),
        (7, b""),
        (1, b"{"),
        (2, b'{"type":"ping"}'),
        (3, bytes(range(256)) * 4),
        (2**32 - 1, b"\x00\x01\xff"),
        (5, b"\x01\x00\x00\x00\x05nested-looking chunk header"),
    ],
)
def test_chunk_round_trip(channel_id, data):
    frame = encode_chunk(channel_id, data)
    payload = payload_of(frame)
    assert payload[0] == CHUNK_KIND
    event = decode_payload(payload)
    assert event == Chunk(channel_id, data)
    assert type(event.data) is bytes


def test_chunk_shorter_than_its_header_is_malformed():
    for n in range(1, 5):
        with pytest.raises(MalformedMessage):
            decode_payload(b"\x01" + b"\x00" * (n - 1))
    assert decode_payload(b"\x01\x00\x00\x00\x09") == Chunk(9, b"")  # exactly the header


# --- Connection -------------------------------------------------------------------------------


def _event_stream() -> list:
    return [*FULL_SAMPLES, Chunk(1, b""), Chunk(2, b"{not json"), *MINIMAL_SAMPLES, Chunk(3, bytes(range(256)))]


def test_connection_events_in_order_across_fragmented_input():
    events = _event_stream()
    sender = Connection()
    stream = b"".join(sender.send(e) for e in events)
    rng = random.Random(7)
    for max_chunk in (1, 3, 17, 200, len(stream)):
        conn = Connection()
        got = []
        for chunk in random_chunks(stream, rng, max_chunk):
            conn.receive_data(chunk)
            got += list(conn.events())
        assert got == events, f"max_chunk={max_chunk}"
        conn.receive_data(b"")  # clean EOF at the frame boundary


def test_connection_events_is_lazy_and_resumable():
    conn = Connection()
    conn.receive_data(encode_message(Ping()) + encode_message(Pong()) + encode_message(Ping())[:3])
    it = conn.events()
    assert next(it) == Ping()
    assert next(it) == Pong()
    assert list(it) == []
    conn.receive_data(encode_message(Ping())[3:])
    assert list(conn.events()) == [Ping()]


def test_connection_eof_at_frame_boundary_is_fine():
    conn = Connection()
    conn.receive_data(b"")  # EOF before anything
    conn = Connection()
    conn.receive_data(encode_message(Ping()))
    assert list(conn.events()) == [Ping()]
    conn.receive_data(b"")
    assert list(conn.events()) == []
    with pytest.raises(ProtocolError):
        conn.receive_data(b"more")  # data after EOF


@pytest.mark.parametrize("cut", [1, 4, 10])
def test_connection_eof_mid_frame_raises(cut):
    conn = Connection()
    conn.receive_data(encode_message(Ping())[:cut])
    assert list(conn.events()) == []
    with pytest.raises(ProtocolError):
        conn.receive_data(b"")


def test_connection_oversized_frame_raises_before_payload():
    conn = Connection(max_frame_size=64)
    conn.receive_data(struct.pack(">I", 65))
    with pytest.raises(FrameTooLarge):
        list(conn.events())


def test_connection_zero_length_frame_is_malformed_not_skipped():
    conn = Connection()
    conn.receive_data(encode_frame(b"") + encode_message(Ping()))
    with pytest.raises(MalformedMessage):
        list(conn.events())


def test_connection_bad_payload_raises_from_events():
    conn = Connection()
    conn.receive_data(encode_message(Ping()) + encode_frame(b'{"type":"nope"}'))
    it = conn.events()
    assert next(it) == Ping()
    with pytest.raises(UnknownMessageType):
        next(it)


def test_connection_send_refuses_oversized_payload():
    conn = Connection(max_frame_size=100)
    # chunk payload = 5-byte chunk header + data
    assert payload_of(conn.send(Chunk(1, b"x" * 95))) == encode_chunk(1, b"x" * 95)[4:]  # exactly 100: ok
    with pytest.raises(ProtocolError) as info:
        conn.send(Chunk(1, b"x" * 96))
    assert "101" in info.value.message and "100" in info.value.message
    big = InvokeFunction(function_id="f", data="y" * 200)
    with pytest.raises(ProtocolError):
        conn.send(big)
    assert Connection(max_frame_size=1000).send(big) == encode_message(big)


def test_connection_send_at_exact_limit_for_messages():
    size = len(payload_of(encode_message(Ping())))
    assert Connection(max_frame_size=size).send(Ping()) == encode_message(Ping())
    with pytest.raises(ProtocolError):
        Connection(max_frame_size=size - 1).send(Ping())


def test_connection_default_max_frame_size():
    assert Connection().max_frame_size == DEFAULT_MAX_FRAME_SIZE


# --- sans-IO guard ----------------------------------------------------------------------------


def test_protocol_package_does_not_import_trio():
    code = (
        "import sys\n"
        "import iii_supervisor.protocol\n"
        "import iii_supervisor.errors\n"
        "bad = sorted(m for m in sys.modules if m == 'trio' or m.startswith('trio.') or m.startswith('trio_'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


# --- errors.error_from_wire -------------------------------------------------------------------

WIRE_CODES = [
    ("protocol_error", errors.ProtocolError),
    ("frame_too_large", errors.FrameTooLarge),
    ("malformed_message", errors.MalformedMessage),
    ("unknown_message_type", errors.UnknownMessageType),
    ("auth_failed", errors.AuthError),
    ("config_error", errors.ConfigError),
    ("registration_failed", errors.RegistrationError),
    ("function_conflict", errors.FunctionConflict),
    ("trigger_registration_failed", errors.TriggerRegistrationError),
    ("invocation_error", errors.InvocationError),
    ("function_not_found", errors.FunctionNotFound),
    ("invocation_failed", errors.InvocationFailed),
    ("invocation_stopped", errors.InvocationStopped),
    ("invocation_timeout", errors.InvocationTimeout),
    ("enqueue_error", errors.EnqueueError),
    ("connection_lost", errors.ConnectionLost),
]


@pytest.mark.parametrize(("code", "cls"), WIRE_CODES, ids=[c for c, _ in WIRE_CODES])
def test_error_from_wire_maps_codes_to_classes(code, cls):
    assert cls.code == code
    exc = error_from_wire(code, "it broke: 'x'", "Traceback (most recent call last):\n  ...")
    assert type(exc) is cls
    assert isinstance(exc, EngineError)
    assert exc.code == code
    assert exc.message == "it broke: 'x'"
    assert exc.stacktrace == "Traceback (most recent call last):\n  ..."
    assert str(exc) == f"{code}: it broke: 'x'"
    assert error_from_wire(**exc.to_wire()).to_wire() == exc.to_wire()


def test_error_from_wire_without_stacktrace():
    exc = error_from_wire("function_not_found", "no such function 'f'")
    assert type(exc) is errors.FunctionNotFound
    assert exc.stacktrace is None
    assert exc.to_wire() == {"code": "function_not_found", "message": "no such function 'f'"}


def test_error_from_wire_unknown_code_keeps_the_code():
    exc = error_from_wire("handler_exploded", "boom", "tb")
    assert type(exc) is errors.InvocationError
    assert exc.code == "handler_exploded"  # per-instance override, class default untouched
    assert errors.InvocationError.code == "invocation_error"
    assert (exc.message, exc.stacktrace) == ("boom", "tb")
    assert exc.to_wire() == {"code": "handler_exploded", "message": "boom", "stacktrace": "tb"}


def test_error_body_round_trips_through_an_error_message():
    exc = errors.InvocationFailed("bad input", stacktrace="tb")
    msg = Error(error=ErrorBody(**exc.to_wire()))
    decoded = decode_payload(payload_of(encode_message(msg)))
    back = error_from_wire(decoded.error.code, decoded.error.message, decoded.error.stacktrace)
    assert type(back) is errors.InvocationFailed
    assert (back.message, back.stacktrace) == ("bad input", "tb")


def test_error_messages_quote_a_peers_value_briefly() -> None:
    from iii_supervisor.errors import UnknownMessageType
    from iii_supervisor.protocol.codec import structure

    with pytest.raises(UnknownMessageType) as info:
        structure({"type": "x" * 1_000_000})
    assert len(info.value.message) < 200
