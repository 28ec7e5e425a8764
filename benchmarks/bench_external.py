#!/usr/bin/env python3
"""External HTTP functions: what the supervisor adds to an HTTP call, against httpx alone.

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_external.py            # ~20 s
    .venv/bin/python benchmarks/bench_external.py --quick    # ~5 s

An endpoint (stdlib ``http.server``, HTTP/1.1 keep-alive, answering ``{"ok": true}``) runs in a
subprocess on 127.0.0.1. In this process, on one trio loop:

- *ours*: the registry, the invoker and the external-functions module as the engine builds them;
  an external function ``bench.ext`` (with HMAC auth) is called with ``Invoker.call`` — the path
  of an in-process caller (HTTP front, cron, queue; a worker's call adds its socket round trip);
- *peer*: the same request with ``httpx.AsyncClient.post`` and ``response.json()``, nothing else.

Each is measured one call at a time (latency) and with 16 calls in flight (calls/s); reps are
interleaved (rep 1 of every scenario, then rep 2 …) and the median is reported with [min–max].
The endpoint is the same for both, so the difference is our overhead per call.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iii_supervisor.channels import ChannelTable  # noqa: E402
from iii_supervisor.config import parse_config  # noqa: E402
from iii_supervisor.invocation import Invoker  # noqa: E402
from iii_supervisor.modules import external  # noqa: E402
from iii_supervisor.modules.base import ModuleContext  # noqa: E402
from iii_supervisor.registry import FunctionEntry, Registry  # noqa: E402

ENDPOINT = textwrap.dedent("""
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True   # (else headers and body, written apart, meet delayed ACKs: 40 ms)
        wbufsize = 65536
        def log_message(self, *a): pass
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            body = b'{"ok":true}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()
""")
PAYLOAD = {"user": "ann", "amount": 12, "items": list(range(10))}
INFLIGHT = 16


class _Owner:
    name = "bench"

    def send_nowait(self, msg: Any) -> None:
        raise AssertionError("external functions never send to their owner")

    def backlog(self) -> int:
        return 0


async def _seq(call: Any, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        result = await call()
        latencies.append(time.perf_counter() - start)
        assert result == {"ok": True}, result
    latencies.sort()
    return {"calls_s": len(latencies) / sum(latencies), "p50_us": latencies[len(latencies) // 2] * 1e6,
            "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6}


async def _inflight(call: Any, seconds: float) -> dict[str, float]:
    done = 0
    end = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < end:
            assert await call() == {"ok": True}
            done += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(INFLIGHT):
            nursery.start_soon(loop)
    return {"calls_s": done / (time.perf_counter() - start)}


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


async def main(args: argparse.Namespace) -> None:
    proc = subprocess.Popen([sys.executable, "-c", ENDPOINT], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = f"http://127.0.0.1:{int(proc.stdout.readline())}/fn"
        os.environ["BENCH_EXTERNAL_SECRET"] = "bench-secret"
        config = parse_config({}, modules=[external.SPEC])
        registry = Registry()
        invoker = Invoker(registry)
        with tempfile.TemporaryDirectory() as tmp:
            context = ModuleContext(registry=registry, invoker=invoker, channels=ChannelTable(), config=config,
                                    runtime_dir=Path(tmp))
            module = external.ExternalFunctions(context, config.section("external_functions"))
            async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
                await nursery.start(invoker.run)
                await nursery.start(module.run)
                handler = registry.external_handler("bench.ext", {
                    "url": url, "auth": {"type": "hmac", "secret_key": "BENCH_EXTERNAL_SECRET"}})
                registry.add_function(FunctionEntry("bench.ext", _Owner(), builtin=handler))

                async def ours() -> Any:
                    return await invoker.call("bench.ext", PAYLOAD)

                async def peer() -> Any:
                    return (await client.post(url, json=PAYLOAD)).json()

                scenarios = {("ours", "seq"): (ours, _seq), ("httpx", "seq"): (peer, _seq),
                             ("ours", "inflight"): (ours, _inflight), ("httpx", "inflight"): (peer, _inflight)}
                for call, run in scenarios.values():  # warm-up
                    await run(call, 0.3)
                runs: dict[tuple[str, str], list[dict[str, float]]] = {k: [] for k in scenarios}
                for _ in range(args.reps):
                    for key, (call, run) in scenarios.items():
                        runs[key].append(await run(call, args.seconds))
                nursery.cancel_scope.cancel()
    finally:
        proc.kill()
        proc.wait()

    def cell(key: tuple[str, str], field: str) -> str:
        values = [r[field] for r in runs[key]]
        return f"{_median(values):,.0f} [{min(values):,.0f}–{max(values):,.0f}]"

    print(f"\nexternal function vs httpx alone; endpoint: stdlib http.server (subprocess); "
          f"{args.reps} reps x {args.seconds:g} s, median [min–max]\n")
    print(f"{'':10} {'seq calls/s':>26} {'seq p50 µs':>24} {'seq p99 µs':>24} {f'{INFLIGHT} in flight calls/s':>26}")
    for who in ("ours", "httpx"):
        print(f"{who:10} {cell((who, 'seq'), 'calls_s'):>26} {cell((who, 'seq'), 'p50_us'):>24} "
              f"{cell((who, 'seq'), 'p99_us'):>24} {cell((who, 'inflight'), 'calls_s'):>26}")
    ours_p50 = _median([r["p50_us"] for r in runs[("ours", "seq")]])
    peer_p50 = _median([r["p50_us"] for r in runs[("httpx", "seq")]])
    ours_rate = _median([r["calls_s"] for r in runs[("ours", "inflight")]])
    peer_rate = _median([r["calls_s"] for r in runs[("httpx", "inflight")]])
    print(f"\noverhead per call (seq p50): {ours_p50 - peer_p50:+,.0f} µs; "
          f"{INFLIGHT} in flight: {ours_rate / peer_rate:.2f}x httpx's calls/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 rep of 1 s per scenario")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5)
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.reps, arguments.seconds = 1, 1.0
    trio.run(main, arguments)
