"""The SDK side of logs, without a supervisor: the output tags, the invocation context, the fallback."""

from __future__ import annotations

import io
import logging
import threading

import pytest

from iii_supervisor import Logger, logger
from iii_supervisor.protocol import InvokeFunction
from iii_supervisor.tracing import mark_log_trigger, parse_traceparent
from iii_supervisor.worker.logger import _INVOCATION, _TaggedOutput, enter_invocation, outgoing_context
from iii_supervisor.worker_lines import LineContext, untag

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def lines(raw: str) -> list[tuple[bytes, LineContext | None]]:
    return [untag(line.encode()) for line in raw.split("\n")[:-1]]  # (str.splitlines splits at \x1e too)


def test_lines_begun_in_a_handler_are_tagged_once_and_others_pass_through() -> None:
    raw = io.StringIO()
    out = _TaggedOutput(raw)
    print("before", file=out)  # type: ignore[arg-type]
    token = _INVOCATION.set(None)
    enter_invocation(InvokeFunction(function_id="w.f", traceparent=TP, baggage=mark_log_trigger(None)))
    try:
        print("in", "the handler", file=out)  # type: ignore[arg-type]  # several writes, one line
        out.write("two\nlines\n")
        out.write("partial ")
    finally:
        _INVOCATION.reset(token)
    out.write("continued outside\n")  # the line begun inside keeps its one tag
    print("after", file=out)  # type: ignore[arg-type]
    context = LineContext("w.f", TP, True)
    assert lines(raw.getvalue()) == [(b"before", None), (b"in the handler", context), (b"two", context),
                                     (b"lines", context), (b"partial continued outside", context), (b"after", None)]
    assert out.encoding == raw.encoding  # everything else is the wrapped stream's


def test_a_line_begun_outside_a_handler_is_not_tagged_in_the_middle() -> None:
    raw = io.StringIO()
    out = _TaggedOutput(raw)
    out.write("begun outside ")
    token = _INVOCATION.set(None)
    enter_invocation(InvokeFunction(function_id="w.f"))
    try:
        out.write("ended inside\n")
    finally:
        _INVOCATION.reset(token)
    assert raw.getvalue() == "begun outside ended inside\n"


def test_threads_keep_their_own_lines() -> None:
    raw = io.StringIO()
    out = _TaggedOutput(raw)
    out.write("main ")  # the main thread's line is open …

    def other() -> None:  # … while a handler's thread prints a whole line
        token = _INVOCATION.set(None)
        enter_invocation(InvokeFunction(function_id="t.f"))
        out.write("from the thread\n")
        _INVOCATION.reset(token)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    out.write("line\n")
    tagged_line = raw.getvalue().split("\n")[0]
    assert tagged_line.startswith("main \x1eiii:")  # the thread's tag starts its own piece of output …
    assert untag(tagged_line[len("main "):].encode()) == (b"from the thread", LineContext("t.f"))
    assert raw.getvalue().split("\n")[1] == "line"  # … and the main thread's line stays untagged


def test_calls_from_a_handler_continue_its_trace() -> None:
    assert outgoing_context() == (None, None)
    token = _INVOCATION.set(None)
    enter_invocation(InvokeFunction(function_id="w.f", traceparent=TP, baggage="a=1"))
    try:
        traceparent, baggage = outgoing_context()
        assert parse_traceparent(traceparent)[0] == TP.split("-")[1] and traceparent != TP  # type: ignore[index]
        assert baggage == "a=1"
        assert outgoing_context("00-explicit", "b=2") == ("00-explicit", "b=2")
    finally:
        _INVOCATION.reset(token)


def test_without_a_supervisor_the_logger_writes_to_python_logging(caplog: pytest.LogCaptureFixture) -> None:
    import iii_supervisor.worker.logger as sdk

    assert sdk._client is None
    with caplog.at_level(logging.DEBUG, logger="iii.logger"):
        logger.info("hello", {"a": 1})
        Logger(service_name="x").warn("careful")
        logger.error("bad")
        logger.debug("detail")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "hello {'a': 1}"), ("WARNING", "careful"), ("ERROR", "bad"), ("DEBUG", "detail")]
