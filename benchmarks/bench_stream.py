"""Stream fan-out: one worker calls ``stream::set`` in a loop; N WebSocket subscribers of the group
receive every change. The peer: the ``websockets`` library's ``broadcast()`` on asyncio serving the
same events (same size, no store, no worker hop) to the same client.

    .venv/bin/pip install -r benchmarks/requirements.txt   # websockets
    .venv/bin/python benchmarks/bench_stream.py            # N = 1, 100, 1000; saturated and paced
    .venv/bin/python benchmarks/bench_stream.py --quick

- **client**: one process holding the N connections (raw sockets, epoll, a minimal frame parser
  that counts frames and reads the send timestamp of every 8th), pinned to CPU 1;
- **ours**: ``iii-supervisor start benchmarks/workers_stream`` (the supervisor and the driver
  worker) pinned to CPU 0; the driver keeps ``--inflight`` ``stream::set`` calls in flight
  (saturated) or paces them so that N × rate = 10,000 deliveries/s; each set is committed to the
  store (synchronous=full) before its change event goes out;
- **peer**: a ``websockets`` asyncio server pinned to CPU 0 that ``broadcast()``s the same event
  (encoded with orjson) in a loop (saturated: yielding to the loop after each broadcast) or paced.

Delivered events/s = frames the client received / the time from the first to the last (at least
the producer's ``--seconds``: a backlog delivered in a late burst does not count as speed); latency
= client receipt − the timestamp put in the event when the producer made it (CLOCK_MONOTONIC is
shared by the processes). Repetitions interleave ours and the peer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _common import median, percentile, table  # noqa: E402

PAD = 100  # payload padding: the event frame is ~213 bytes, as in the measurement
_T = re.compile(rb'"t":(\d+)')


# --- the client (its own process) -----------------------------------------------------------------


def _handshake(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port))
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (host.encode(), port, key))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {head[:100]!r}")
    payload = json.dumps({"type": "join", "data": {"subscriptionId": "s", "streamName": "bench",
                                                   "groupId": "g"}}).encode()
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)  # masked with a zero key
    rest = head.split(b"\r\n\r\n", 1)[1]
    if rest:
        raise RuntimeError("unexpected bytes after the handshake")
    return sock


def client_main(host: str, port: int, n: int, skip_first: bool, max_seconds: float) -> None:
    try:
        os.sched_setaffinity(0, {1 % os.cpu_count()})  # type: ignore[operator]
    except (AttributeError, OSError):
        pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * n + 64)), hard))
    socks = [_handshake(host, port) for _ in range(n)]
    ep = select.epoll()
    state: dict[int, list[Any]] = {}
    for s in socks:
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        ep.register(s.fileno(), select.EPOLLIN)
        state[s.fileno()] = [s, bytearray(), 1 if skip_first else 0]  # sock, buffer, frames still to skip
    print("READY", flush=True)
    frames = 0
    samples: list[int] = []
    first = last = 0.0
    closed = 0
    deadline = time.monotonic() + max_seconds
    mono_ns = time.monotonic_ns
    while time.monotonic() < deadline:
        events = ep.poll(0.5 if frames else 5.0)
        if not events:
            if frames and time.monotonic() - last > 3.0:  # the producer is done (a stall is not an end)
                break
            continue
        now_ns = mono_ns()
        before = frames
        for fd, _ in events:
            entry = state[fd]
            sock, buf = entry[0], entry[1]
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                closed += 1
                continue
            buf += data
            pos, size = 0, len(buf)
            while size - pos >= 2:
                length = buf[pos + 1] & 0x7F
                head = 2
                if length == 126:
                    if size - pos < 4:
                        break
                    length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                    head = 4
                elif length == 127:
                    if size - pos < 10:
                        break
                    length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                    head = 10
                end = pos + head + length
                if end > size:
                    break
                if buf[pos] == 0x81:
                    if entry[2]:
                        entry[2] -= 1  # our sync event
                    else:
                        frames += 1
                        if frames & 7 == 0:
                            m = _T.search(buf, pos + head, end)
                            if m:
                                samples.append(now_ns - int(m.group(1)))
                pos = end
            del buf[:pos]
        if frames > before:  # (a close frame or a ping at the end does not stretch the window)
            last = time.monotonic()
            if not first:
                first = last
    samples.sort()
    print(json.dumps({"frames": frames, "secs": max(last - first, 1e-9), "closed": closed,
                      "p50_ms": percentile(samples, 50) / 1e6, "p99_ms": percentile(samples, 99) / 1e6}), flush=True)
    for s in socks:
        s.close()


# --- the peer: websockets broadcast() on asyncio ---------------------------------------------------


def peer_main(n: int, seconds: float, rate: float) -> None:
    import orjson
    import websockets
    from websockets.asyncio.server import broadcast, serve

    try:
        os.sched_setaffinity(0, {0})
    except (AttributeError, OSError):
        pass

    async def main() -> None:
        conns: set[Any] = set()
        ready = asyncio.Event()

        async def handler(ws: Any) -> None:
            conns.add(ws)
            if len(conns) >= n:
                ready.set()
            try:
                async for _ in ws:
                    pass
            except websockets.ConnectionClosed:
                pass  # the client went away at the end of the run
            finally:
                conns.discard(ws)

        async with serve(handler, "127.0.0.1", 0, compression=None, max_size=1 << 16) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            print(f"PORT {port}", flush=True)
            await ready.wait()
            await asyncio.sleep(0.3)
            pad = "p" * PAD
            sent = 0
            start = time.monotonic()
            deadline = start + seconds
            while time.monotonic() < deadline:
                if rate > 0:
                    due = start + sent / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                event = {"type": "stream", "timestamp": int(time.time() * 1000), "streamName": "bench",
                         "groupId": "g", "id": f"i{sent % 16}",
                         "event": {"type": "update", "data": {"t": time.monotonic_ns(), "pad": pad}}}
                broadcast(conns, orjson.dumps(event).decode())
                sent += 1
                if rate <= 0:
                    await asyncio.sleep(0)
            print(f"DONE {sent}", flush=True)
            await asyncio.sleep(3)

    asyncio.run(main())


# --- the orchestrator ------------------------------------------------------------------------------


def _spawn(args: list[str], *, cpu: int | None, **kw: Any) -> subprocess.Popen[str]:
    def pin() -> None:
        if cpu is not None:
            try:
                os.sched_setaffinity(0, {cpu})
            except OSError:
                pass
    return subprocess.Popen(args, preexec_fn=pin, text=True, **kw)  # noqa: PLW1509


def _read_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"process exited before {prefix!r} (rc {proc.poll()})")
        if line.startswith(prefix):
            return line
    raise RuntimeError(f"no {prefix!r} within {timeout}s")


def _client(port: int, n: int, skip_first: bool, seconds: float) -> subprocess.Popen[str]:
    return _spawn([sys.executable, __file__, "--client", str(port), str(n), "1" if skip_first else "0",
                   str(seconds + 20)], cpu=1, stdout=subprocess.PIPE)


def _stop(proc: subprocess.Popen[str] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_ours(n: int, seconds: float, rate: float, inflight: int, synchronous: str = "full") -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="iii-bs"))
    config = tmp / "iii.toml"
    # large buffers: the saturated run must measure throughput, not the slow-client close
    config.write_text(f'[supervisor]\nstore_synchronous = "{synchronous}"\n\n[stream]\nsend_buffer_bytes = 67108864\n')
    log = open(tmp / "log", "w+")  # noqa: SIM115
    cli = [sys.executable, "-m", "iii_supervisor"]
    common = ["--runtime-dir", str(tmp / "rt")]
    sup = _spawn([*cli, "start", str(HERE / "workers_stream"), "--http-port", "0", "--stream-port", "0",
                  "--data-dir", str(tmp / "data"), "--config", str(config), *common],
                 cpu=0, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = None
    try:
        port = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = (tmp / "log").read_text()
            found = re.search(r"stream endpoint listening on ws://[^:]+:(\d+)", text)
            if found and "worker driver connected" in text:
                port = int(found.group(1))
                break
            time.sleep(0.05)
        if port is None:
            raise RuntimeError("the supervisor did not start:\n" + (tmp / "log").read_text()[-2000:])
        while "bench.stream_run" not in subprocess.run([*cli, "functions", "--json", *common], capture_output=True,
                                                       text=True).stdout:
            time.sleep(0.05)
        client = _client(port, n, True, seconds)
        _read_line(client, "READY", 60)
        time.sleep(0.3)
        payload = json.dumps({"seconds": seconds, "rate": rate, "inflight": inflight, "pad": PAD})
        run = subprocess.run([*cli, "invoke", "bench.stream_run", payload, "--timeout-ms",
                              str(int(seconds * 1000 + 30000)), *common], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"bench.stream_run failed: {run.stderr}")
        result = json.loads(_read_line(client, "{", seconds + 30))
        result["produced"] = json.loads(run.stdout)["sets"]
        return result
    finally:
        _stop(client)
        _stop(sup)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def run_peer(n: int, seconds: float, rate: float) -> dict[str, Any]:
    peer = _spawn([sys.executable, __file__, "--peer", str(n), str(seconds), str(rate)], cpu=0,
                  stdout=subprocess.PIPE)
    client = None
    try:
        port = int(_read_line(peer, "PORT", 20).split()[1])
        client = _client(port, n, False, seconds)
        _read_line(client, "READY", 60)
        result = json.loads(_read_line(client, "{", seconds + 30))
        result["produced"] = int(_read_line(peer, "DONE", 30).split()[1])
        return result
    finally:
        _stop(client)
        _stop(peer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repetition of 1.5 s per case")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--paced", type=float, default=10_000, help="deliveries/s of the paced runs")
    parser.add_argument("--inflight", type=int, default=32, help="stream::set calls in flight (saturated)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.seconds = 1, 1.5
    try:
        import websockets  # noqa: F401
    except ImportError:
        sys.exit("the peer needs websockets: .venv/bin/pip install -r benchmarks/requirements.txt")
    cases = [(n, mode) for n in args.subscribers for mode in ("saturated", "paced")]
    results: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for rep in range(args.reps):
        for n, mode in cases:
            rate = 0.0 if mode == "saturated" else args.paced / n
            sides = ("ours", "ours-normal", "peer")
            for side in sides if rep % 2 == 0 else sides[::-1]:
                if side == "peer":
                    r = run_peer(n, args.seconds, rate)
                else:
                    r = run_ours(n, args.seconds, rate, args.inflight, "normal" if side == "ours-normal" else "full")
                # over the production window at least: a burst that arrives late is not a faster rate
                r["rate"] = r["frames"] / max(r["secs"], args.seconds)
                results.setdefault((n, mode, side), []).append(r)
                print(f"rep {rep + 1} N={n} {mode} {side}: {r['rate']:,.0f} events/s delivered, p50 "
                      f"{r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms ({r['frames']} frames, "
                      f"{r['produced']} produced, {r['closed']} closed)", flush=True)
    rows = []
    for n, mode in cases:
        peer = results[(n, mode, "peer")]
        p_rate = median([r["rate"] for r in peer])
        for side, label in (("ours", "ours (store full)"), ("ours-normal", "ours (store normal)"),
                            ("peer", "websockets broadcast()")):
            runs = results[(n, mode, side)]
            rate = median([r["rate"] for r in runs])
            span = [r["rate"] / p_rate for r in runs] if p_rate else [0.0]
            ratio = "1" if side == "peer" else f"{rate / p_rate:.2f}x [{min(span):.2f}-{max(span):.2f}]" if p_rate \
                else "-"
            rows.append([str(n), mode, label, f"{rate:,.0f}", f"{median([r['p50_ms'] for r in runs]):.2f}",
                         f"{median([r['p99_ms'] for r in runs]):.2f}", ratio])
    print()
    print(table(["N", "mode", "server", "delivered events/s", "p50 ms", "p99 ms", "ratio to websockets"], rows))
    print("\nours: worker → stream::set → store commit → fan-out; websockets: broadcast() in the server "
          "process (no store, no worker hop). Target at N=100: ≥ 2x saturated, paced p99 no worse.")
    if args.json:
        args.json.write_text(json.dumps({f"{k[0]}/{k[1]}/{k[2]}": v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main("127.0.0.1", int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", float(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--peer":
        peer_main(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
    else:
        main()
