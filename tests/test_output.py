"""Output: the supervisor's stdout/stderr, written by a thread so that a stalled reader cannot
freeze the event loop (an OS pipe stands in for a terminal or journald)."""

from __future__ import annotations

import io
import os
import threading

import trio
import trio.testing

from iii_supervisor.output import Output


class Recorder(io.BytesIO):
    def lines(self) -> list[bytes]:
        return self.getvalue().splitlines()


async def wait_for(condition: object) -> None:
    while not condition():  # type: ignore[operator]
        await trio.sleep(0.005)


async def test_lines_are_written_in_order_to_their_stream() -> None:
    with trio.fail_after(5):
        out, err = Recorder(), Recorder()
        output = Output(out, err)
        async with trio.open_nursery() as nursery:
            await nursery.start(output.run)
            for i in range(100):
                output.write_line(b"line %d" % i)
            output.write_line(b"an error", err=True)
            await wait_for(lambda: len(out.lines()) == 100 and err.lines())
            nursery.cancel_scope.cancel()
        assert out.lines() == [b"line %d" % i for i in range(100)]
        assert err.lines() == [b"an error"]


async def test_lines_written_before_and_after_running_go_straight_out() -> None:
    with trio.fail_after(5):
        out, err = Recorder(), Recorder()
        output = Output(out, err)
        output.write_line(b"before")
        assert out.lines() == [b"before"]
        async with trio.open_nursery() as nursery:
            await nursery.start(output.run)
            output.write_line(b"during")
            output.write_line(b"during, on stderr", err=True)
            nursery.cancel_scope.cancel()  # what is queued, on both streams, is written on the way out
        output.write_line(b"after")
        assert out.lines() == [b"before", b"during", b"after"]
        assert err.lines() == [b"during, on stderr"]


async def test_lines_from_other_threads_are_delivered() -> None:
    with trio.fail_after(5):
        out = Recorder()
        output = Output(out, Recorder())
        async with trio.open_nursery() as nursery:
            await nursery.start(output.run)
            def lines_from_a_thread() -> None:
                for i in range(50):
                    output.write_line(b"t%d" % i)

            thread = threading.Thread(target=lines_from_a_thread)
            thread.start()
            await trio.to_thread.run_sync(thread.join)
            await wait_for(lambda: len(out.lines()) == 50)
            nursery.cancel_scope.cancel()
        assert out.lines() == [b"t%d" % i for i in range(50)]


async def test_a_stalled_reader_costs_dropped_lines_not_a_frozen_loop() -> None:
    with trio.fail_after(10):
        read_fd, write_fd = os.pipe()
        writer = open(write_fd, "wb", buffering=0)  # noqa: SIM115 - a blocking pipe, like a terminal
        output = Output(writer, Recorder(), limit=16 * 1024)
        line = b"x" * 99
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(output.run)
                # far more than the pipe (64 KiB) and the queue hold, while nobody reads:
                # every call returns at once
                start = trio.current_time()
                for _ in range(3000):
                    output.write_line(line)
                    await trio.lowlevel.checkpoint()
                assert trio.current_time() - start < 5
                # the loop still runs other tasks
                with trio.fail_after(1):
                    await trio.sleep(0.01)
                # now read: what was kept, and notices that count what was dropped, until every
                # line is accounted for
                received = b""
                os.set_blocking(read_fd, False)
                while _accounted(received, line) < 3000:
                    try:
                        received += os.read(read_fd, 1 << 16)
                    except BlockingIOError:
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        finally:
            writer.close()
            os.close(read_fd)
        notices = [x for x in received.splitlines() if x != line]
        assert notices and all(b"line(s) of output dropped while this stream was blocked" in x for x in notices)
        assert _accounted(received, line) == 3000


def _accounted(received: bytes, line: bytes) -> int:
    """Lines received whole plus the lines the notices say were dropped."""
    total = 0
    for x in received.splitlines(keepends=True):
        if x == line + b"\n":
            total += 1
        elif x.startswith(b"iii-supervisor: ") and x.endswith(b"\n"):
            total += int(x.split()[1])
    return total
