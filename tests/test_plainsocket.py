"""PlainSocket: non-blocking socket calls, trio only to wait (a Unix socketpair, no network)."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from iii_supervisor.plainsocket import PlainSocket


def pair() -> tuple[PlainSocket, PlainSocket]:
    a, b = socket.socketpair()
    return PlainSocket(a), PlainSocket(b)


async def test_receive_returns_at_once_when_data_is_there_and_waits_otherwise() -> None:
    with trio.fail_after(5):
        a, b = pair()
        try:
            await a.send_all(b"ready")
            assert await b.receive_some(100) == b"ready" and not b.waited

            async def later() -> None:
                await trio.testing.wait_all_tasks_blocked()
                await a.send_all(b"later")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(later)
                assert await b.receive_some(100) == b"later"
            assert b.waited
            a.close()
            assert await b.receive_some(100) == b""  # end of stream
        finally:
            a.close()
            b.close()


async def test_send_all_waits_for_a_slow_reader() -> None:
    with trio.fail_after(10):
        a, b = pair()
        data = bytes(range(256)) * 16 * 1024  # 4 MiB: far more than the socket buffers
        received = bytearray()
        try:
            async def reader() -> None:
                while len(received) < len(data):
                    received.extend(await b.receive_some(65536))
                    await trio.sleep(0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await a.send_all(data)
            assert received == data
        finally:
            a.close()
            b.close()


async def test_closing_wakes_a_waiting_reader() -> None:
    with trio.fail_after(5):
        a, b = pair()
        try:
            async with trio.open_nursery() as nursery:
                async def reader() -> None:
                    with pytest.raises(trio.ClosedResourceError):
                        await b.receive_some(100)

                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                b.close()
            b.close()  # idempotent
        finally:
            a.close()


async def test_send_to_a_closed_peer_raises_oserror() -> None:
    with trio.fail_after(5):
        a, b = pair()
        b.close()
        with pytest.raises(OSError):
            for _ in range(100):
                await a.send_all(b"x" * 65536)
        a.close()


async def test_take_detaches_the_trio_stream() -> None:
    with trio.fail_after(5):
        a, b = trio.socket.socketpair()
        stream = trio.SocketStream(a)
        plain = PlainSocket.take(stream)
        try:
            assert stream.socket.fileno() == -1  # the stream no longer owns the descriptor
            await plain.send_all(b"hi")
            assert await b.recv(10) == b"hi"
            await stream.aclose()  # closing the detached stream leaves our socket open
            await plain.send_all(b"still")
            assert await b.recv(10) == b"still"
        finally:
            plain.close()
            b.close()
