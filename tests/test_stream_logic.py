"""Pure stream logic: the send buffer's accounting, client messages, the index, events, checks."""

from __future__ import annotations

import pytest

from iii_supervisor.errors import TriggerRegistrationError
from iii_supervisor.modules.stream.logic import (
    ClientError,
    Join,
    Leave,
    SubscriptionIndex,
    auth_request,
    change_event,
    custom_event,
    denied,
    origin_allowed,
    parse_client_message,
    parse_join_trigger,
    parse_stream_trigger,
    sync_event,
    unauthorized_event,
)
from iii_supervisor.server.ws import SendBuffer, encode_text_frame


def test_send_buffer_is_bounded_and_tracks_partial_writes() -> None:
    buf = SendBuffer(10)
    assert buf.push(b"abcd") and buf.push(b"efgh")
    assert not buf.push(b"xyz")  # 8 + 3 > 10: refused, nothing queued
    assert buf.size == 8 and len(buf) == 2
    buf.advance(5)  # the first frame and one byte of the second
    assert buf.started and buf.size == 3 and bytes(buf.frames[0]) == b"fgh"
    assert buf.push(b"ij")
    assert buf.drop_unstarted() == 2  # the begun frame stays: the stream must stay whole frames
    assert [bytes(f) for f in buf.frames] == [b"fgh"] and buf.size == 3
    assert buf.push(b"CLOSE-FRAME-BYTES", force=True)  # the close frame goes in whatever the limit
    buf.advance(3)
    assert not buf.started and [bytes(f) for f in buf.frames] == [b"CLOSE-FRAME-BYTES"]
    buf.advance(17)
    assert buf.size == 0 and not buf.frames


def test_send_buffer_chunks_at_most_max_iov_frames() -> None:
    buf = SendBuffer(10_000)
    for _ in range(100):
        buf.push(b"x")
    assert len(buf.chunk()) == 64 and len(buf.chunk(5)) == 5
    assert buf.drop_unstarted() == 100 and buf.size == 0


def test_frames_are_unmasked_text_frames_encoded_once() -> None:
    assert encode_text_frame("hi") == b"\x81\x02hi"
    long = encode_text_frame("x" * 300)
    assert long[:4] == b"\x81\x7e\x01\x2c" and len(long) == 304


@pytest.mark.parametrize(("raw", "code"), [
    (b"{", "invalid_json"),
    ("null", "invalid_message"),
    ('{"type": "hello"}', "unknown_message_type"),
    ('{"type": "join"}', "invalid_message"),
    ('{"type": "join", "data": {"subscriptionId": "", "streamName": "a", "groupId": "b"}}', "invalid_message"),
    ('{"type": "join", "data": {"subscriptionId": "s", "streamName": "a"}}', "invalid_message"),
    ('{"type": "join", "data": {"subscriptionId": "s", "streamName": "a", "groupId": "b", "id": 5}}',
     "invalid_message"),
    ('{"type": "leave", "data": {}}', "invalid_message"),
])
def test_bad_client_messages_are_named(raw: str | bytes, code: str) -> None:
    with pytest.raises(ClientError) as err:
        parse_client_message(raw)
    assert err.value.code == code and err.value.message


def test_good_client_messages() -> None:
    assert parse_client_message('{"type": "join", "data": {"subscriptionId": "s1", "streamName": "chat", '
                                '"groupId": "room1", "id": "m1"}}') == Join("s1", "chat", "room1", "m1")
    assert parse_client_message(b'{"type": "leave", "data": {"subscriptionId": "s1", "streamName": "x"}}') == \
        Leave("s1")
    err = pytest.raises(ClientError, parse_client_message,
                        '{"type": "join", "data": {"subscriptionId": "s9", "streamName": 1, "groupId": "g"}}')
    assert err.value.subscription_id == "s9" and "streamName" in err.value.message


def test_the_index_delivers_each_change_once_per_connection() -> None:
    index = SubscriptionIndex()
    a, b, c = "conn-a", "conn-b", "conn-c"
    index.add(a, Join("1", "chat", "room1", None))
    index.add(a, Join("2", "chat", "room1", "m1"))  # both match m1: a gets it once
    index.add(b, Join("3", "chat", "room1", "m1"))
    index.add(c, Join("4", "chat", "room2", None))
    assert sorted(index.targets("chat", "room1", "m1")) == [a, b]
    assert sorted(index.targets("chat", "room1", "m2")) == [a]
    assert sorted(index.targets("chat", "room1", None)) == [a]
    assert list(index.targets("other", "room1", "m1")) == []
    index.remove(a, Join("1", "chat", "room1", None))
    assert sorted(index.targets("chat", "room1", "m2")) == []
    index.remove(a, Join("2", "chat", "room1", "m1"))
    index.remove(b, Join("3", "chat", "room1", "m1"))
    index.remove(c, Join("4", "chat", "room2", None))
    index.remove(c, Join("4", "chat", "room2", None))  # twice: nothing happens
    assert index.groups == {} and index.items == {}


def test_two_subscriptions_of_one_connection_to_a_group_count() -> None:
    index = SubscriptionIndex()
    index.add("a", Join("1", "s", "g", None))
    index.add("a", Join("2", "s", "g", None))
    index.remove("a", Join("1", "s", "g", None))
    assert list(index.targets("s", "g", "x")) == ["a"]


def test_event_shapes_are_the_references() -> None:
    assert change_event("chat", "room1", "m1", "create", {"t": 1}, timestamp=5) == {
        "type": "stream", "timestamp": 5, "streamName": "chat", "groupId": "room1", "id": "m1",
        "event": {"type": "create", "data": {"t": 1}}}
    custom = custom_event("chat", "room1", None, "typing", {"who": "ann"})
    assert "id" not in custom and custom["event"] == {"type": "event", "event": {"type": "typing",
                                                                                 "data": {"who": "ann"}}}
    join = Join("s1", "chat", "room1", None)
    assert sync_event(join, [])["event"] == {"type": "sync", "data": []}
    assert unauthorized_event(join)["event"] == {"type": "unauthorized"}
    assert denied({"unauthorized": True}) and not denied(None) and not denied({"unauthorized": False})


def test_origin_check() -> None:
    assert origin_allowed(None, ())  # not a browser
    assert origin_allowed("http://127.0.0.1:3111", (), "127.0.0.1:3112")  # a page of this host
    assert origin_allowed("http://[::1]:3111", (), "[::1]:3112")
    assert not origin_allowed("http://evil.example", (), "127.0.0.1:3112")
    assert not origin_allowed("http://x", (), None)
    assert origin_allowed("http://x", ("*",))
    assert origin_allowed("http://Good.example", ("http://good.example/",))
    assert not origin_allowed("http://evil.example", ("http://good.example",))
    assert not origin_allowed(None, ("http://good.example",))


def test_auth_request_shape() -> None:
    req = auth_request([(b"Origin", b"http://a"), (b"X-Token", b"t")], "/live?a=1&a=2&b=", "127.0.0.1:5")
    assert req == {"headers": {"origin": "http://a", "x-token": "t"}, "path": "/live",
                   "query_params": {"a": ["1", "2"], "b": ""}, "addr": "127.0.0.1:5"}


def test_trigger_configs_are_checked() -> None:
    flt = parse_stream_trigger("t", {"stream_name": "chat", "item_id": "m1"})
    event = change_event("chat", "g", "m1", "update", 1)
    assert flt.matches(event) and not flt.matches(change_event("chat", "g", "m2", "update", 1))
    assert parse_stream_trigger("t", None).matches(event)
    with pytest.raises(TriggerRegistrationError, match="'topic'"):
        parse_stream_trigger("t", {"topic": "x"})
    with pytest.raises(TriggerRegistrationError, match="group_id must be a string"):
        parse_stream_trigger("t", {"group_id": 3})
    assert parse_join_trigger("stream:join", "t", {"stream_name": "ignored"}) is None
    assert parse_join_trigger("stream:join", "t", {"condition_function_id": "c"}) == "c"
    with pytest.raises(TriggerRegistrationError, match="stream:leave trigger 't'"):
        parse_join_trigger("stream:leave", "t", {"nope": 1})
