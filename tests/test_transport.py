"""FramedStream over a Unix socketpair (no network): what it reports as queued for a peer."""

from __future__ import annotations

import trio
import trio.testing

from iii_supervisor.protocol import Chunk
from iii_supervisor.transport import FramedStream


async def test_a_batch_the_socket_has_not_taken_still_counts_as_queued() -> None:
    with trio.fail_after(5):
        ours, theirs = trio.socket.socketpair()
        framed = FramedStream(trio.SocketStream(ours))
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(framed.run_writer)
                big = b"x" * (4 << 20)  # far more than the socket buffers hold: the peer reads nothing
                framed.send_nowait(Chunk(1, big))
                await trio.testing.wait_all_tasks_blocked()  # the writer took it and waits for the socket
                assert framed.pending_bytes >= len(big)
                framed.send_nowait(Chunk(1, b"more"))
                assert framed.pending_bytes >= len(big) + 4
                nursery.cancel_scope.cancel()
        finally:
            await framed.aclose()
            theirs.close()
