#!/usr/bin/env python3
"""Routed-call benchmark: worker → supervisor → worker on our SDK (Unix socket) and on the official
iii-sdk (WebSocket door), vs ProcessPoolExecutor.

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_invoke.py            # full run (~1.5-2 min)
    .venv/bin/python benchmarks/bench_invoke.py --quick    # smoke run (~25 s)
    .venv/bin/python benchmarks/bench_invoke.py --no-sdk   # without the official-SDK configuration
    .venv/bin/python benchmarks/bench_invoke.py --profile pyspy   # + py-spy profile of every process

What it does
------------
1. Starts a real supervisor, ``iii-supervisor start benchmarks/workers_invoke --runtime-dir <tmp>``,
   whose directory holds two workers:

   - ``target`` (B): ``bench.echo_sync`` (sync handler, runs in a thread) and
     ``bench.echo_async`` (async handler, runs on B's trio loop);
   - ``driver`` (A): ``bench.run``, an async handler that runs the measurement loop *inside A*:
     routed calls A → supervisor → B → supervisor → A, either one at a time (``seq``: per-call
     latency → p50/p99, calls/s) or with 64 trio tasks each awaiting ``iii.trigger_async`` in a
     loop (``inflight``: calls/s, and latency under load). Bounded by a count and by time.

   This harness asks A to run each measurement over the control socket
   (:class:`iii_supervisor.control.ControlClient`, i.e. what ``iii-supervisor invoke`` does).

   The third configuration: a second supervisor, ``iii-supervisor start benchmarks/workers_invoke_sdk
   --iii-port 0``, with the same two workers written with the official Python SDK (``iii-sdk``
   0.25, import ``iii``, unmodified; spawned with ``III_URL``/``III_TOKEN``, so they connect over
   the WebSocket door): ``sdk_target`` (``sdkbench.echo_sync``: the SDK runs it on a thread of its
   own per call; ``sdkbench.echo_async``: on the SDK's asyncio loop) and ``sdk_driver``
   (``sdkbench.run``, the same loop with ``await iii.trigger_async`` and asyncio tasks). It runs
   with ``OTEL_ENABLED=false`` (no ``/otel`` telemetry socket; ``--sdk-otel`` leaves the SDK's
   default, a span per call exported over ``/otel``). Skipped, with the reason printed,
   where ``iii`` is not installed or the CLI has no ``--iii-port`` (or with ``--no-sdk``).

2. Measures the peer in this process: ``ProcessPoolExecutor(max_workers=2)`` calling a trivial
   module-level echo, one at a time (``submit().result()`` in a loop) and with 64 futures kept in
   flight (a semaphore-bounded window of ``submit`` + done-callbacks).

3. Warms everything up, then repeats every measurement ``--reps`` times (default 3, interleaved:
   rep 1 of every scenario of every configuration, then rep 2, …) and reports the median (and
   [min–max]) of each. Alongside it samples the CPU time of the supervisor, A and B of each
   configuration (psutil) and the hypervisor steal (/proc/stat), so the table can say where the
   CPU went per call.

4. Prints one table with the three configurations side by side (ratios of calls/s: ours/PPE,
   iii-sdk/ours, iii-sdk/PPE, of the medians and [per rep]) and whether the target
   "routed calls/s with 64 in flight >= 3x ProcessPoolExecutor (64 in flight)" was met, and writes
   every raw number to ``benchmarks/results/invoke.json`` (gitignored).

``--profile pyspy`` adds a profiling phase after the measurements (so it does not disturb them):
``py-spy record`` on the supervisor, A and B of each configuration while A runs the 64-in-flight scenarios, and
prints the top functions by own (self) samples and by inclusive samples, per process. py-spy runs
with ``--gil`` (only samples of the thread holding the GIL: Python work; override with the env var
``BENCH_PYSPY_ARGS``); the CPU table (psutil user+sys, /proc schedstat run-queue wait) says how much
of each process's time that is.
``--profile cprofile`` instead starts the supervisor under ``python -m cProfile`` (from this
harness only; the product code is untouched): its numbers are then distorted by the profiler and
the run is marked as such; the supervisor's top functions by tottime are printed at the end.

Noise: the machine is shared. Before each rep the harness waits (a few seconds at most) for other
processes to go quiet, and every measurement records the cores used by other processes and the
hypervisor steal; measurements above 0.3 cores are flagged NOISY and a warning is printed.

Notes: the supervisor gets ``--http-port 0`` (when the CLI has it) so it never clashes with another
supervisor on the default port. A worker restart during the measurements is detected and fails
the run.

The supervisor is always stopped (SIGTERM, wait, SIGKILL on timeout) and the temporary runtime
directory removed, even on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from _common import (
    HERE,
    NOISY_CORES,
    CpuSampler,
    Supervisor,
    collect_pyspy,
    find_pyspy,
    fmt_cell,
    fmt_k,
    latency_stats,
    median,
    print_process_profile,
    pyspy_recording,
    spread,
    table,
    wait_quiet,
    write_result,
)

WORKERS_DIR = HERE / "workers_invoke"
SDK_WORKERS_DIR = HERE / "workers_invoke_sdk"
DEFAULT_OUTPUT = HERE / "results" / "invoke.json"
PAYLOAD = {"x": 1}
TARGET_RATIO = 3.0
#: Extra py-spy flags. Default ``--gil``: count only samples of threads holding the GIL, i.e. Python work.
#: (Without it, py-spy attributes most supervisor samples to the ``send`` line although psutil shows only
#: a few µs of system time per call, so those samples are not CPU.) BENCH_PYSPY_ARGS="" samples all.
PYSPY_EXTRA = os.environ.get("BENCH_PYSPY_ARGS", "--gil").split()

OURS = [
    # key, mode, target function, label
    ("seq_sync", "seq", "bench.echo_sync", "sequential, sync handler"),
    ("seq_async", "seq", "bench.echo_async", "sequential, async handler"),
    ("inflight_sync", "inflight", "bench.echo_sync", "64 in flight, sync handler"),
    ("inflight_async", "inflight", "bench.echo_async", "64 in flight, async handler"),
]
#: the official Python SDK (iii-sdk) over the WebSocket door: the same scenarios, key "sdk_" + ours
SDK = [("sdk_" + key, mode, target.replace("bench.", "sdkbench."), label) for key, mode, target, label in OURS]
SDK_OF = {key: "sdk_" + key for key, *_ in OURS}
PEER_OF = {"seq_sync": "seq", "seq_async": "seq", "inflight_sync": "inflight", "inflight_async": "inflight"}
PEER_OF.update({SDK_OF[k]: v for k, v in list(PEER_OF.items())})
#: what the reference Rust engine's own benchmark reports for a WebSocket round trip caller → engine
#: → echo worker → caller on its CI machines (another machine, another engine: for scale only)
REFERENCE_WS_ROUND_TRIP_US = 139

# --- the peer: ProcessPoolExecutor ----------------------------------------------------------------


def echo(data: Any) -> Any:
    """The trivial module-level function the process pool calls."""
    return data


def peer_seq(ex: concurrent.futures.ProcessPoolExecutor, count: int, seconds: float) -> dict[str, Any]:
    perf = time.perf_counter
    latencies: list[float] = []
    mismatches = 0
    start = now = perf()
    deadline = start + seconds
    calls = 0
    while calls < count and now < deadline:
        t0 = perf()
        result = ex.submit(echo, PAYLOAD).result()
        now = perf()
        latencies.append(now - t0)
        calls += 1
        if result != PAYLOAD:
            mismatches += 1
    return latency_stats(latencies, calls, perf() - start, mismatches)


def peer_inflight(ex: concurrent.futures.ProcessPoolExecutor, count: int, seconds: float,
                  window: int) -> dict[str, Any]:
    """Keep ``window`` futures outstanding: submit whenever one completes."""
    perf = time.perf_counter
    slots = threading.Semaphore(window)
    latencies: list[float] = []
    state = {"done": 0, "mismatches": 0, "errors": 0}

    def on_done(fut: concurrent.futures.Future, t0: float) -> None:
        try:
            latencies.append(perf() - t0)
            if fut.result() != PAYLOAD:
                state["mismatches"] += 1
            state["done"] += 1
        except BaseException:  # noqa: BLE001 - counted; the slot must be released regardless
            state["errors"] += 1
        finally:
            slots.release()

    start = perf()
    deadline = start + seconds
    issued = 0
    while issued < count and perf() < deadline:
        slots.acquire()
        t0 = perf()
        fut = ex.submit(echo, PAYLOAD)
        fut.add_done_callback(lambda f, t0=t0: on_done(f, t0))
        issued += 1
    for _ in range(window):  # drain: wait for the last outstanding futures
        if not slots.acquire(timeout=30):
            raise RuntimeError("ProcessPoolExecutor did not finish its outstanding futures in 30 s")
    stats = latency_stats(latencies, state["done"], perf() - start, state["mismatches"])
    stats["errors"] = state["errors"]
    return stats


# --- the supervisor ----------------------------------------------------------------------------


class InvokeSupervisor(Supervisor):
    """The supervisor of ``workers_dir``, optionally run under ``python -m cProfile``."""

    def __init__(self, workers_dir: Path, functions: set[str], *, cprofile: bool = False, **kw: Any) -> None:
        super().__init__(workers_dir, functions, **kw)
        self.cprofile = cprofile
        self.prof_path = self.runtime_dir / "supervisor.prof"

    def launcher(self) -> list[str]:
        if self.cprofile:
            return [sys.executable, "-m", "cProfile", "-o", str(self.prof_path), "-m", "iii_supervisor.cli"]
        return super().launcher()


# --- the measurement -----------------------------------------------------------------------------


def _sampled(sampler: CpuSampler, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``measure()`` (→ stats with ``calls``) under ``sampler``; add CPU per call and the noise."""
    sampler.start()
    stats = measure()
    noise = sampler.stop()
    calls = max(1, stats["calls"])
    stats["cpu_us_per_call"] = {k: v / calls * 1e6 for k, v in noise["cpu_s"].items()}
    stats["cpu_util"] = {k: v / noise["wall_s"] for k, v in noise["cpu_s"].items()}
    stats["sys_us_per_call"] = {k: v / calls * 1e6 for k, v in noise["sys_s"].items()}
    stats["runq_wait_us_per_call"] = {k: v / calls * 1e6 for k, v in noise["runq_wait_s"].items()}
    stats["steal_cores"] = noise["steal_cores"]
    stats["other_cores"] = noise["others_cores"]
    return stats


def routed_run(sup: Supervisor, sampler: CpuSampler, driver: str, mode: str, target: str, count: int,
               seconds: float, concurrency: int) -> dict[str, Any]:
    """Ask the driver worker (its ``driver`` function: bench.run or sdkbench.run) for one measurement."""
    params = {"mode": mode, "target": target, "count": count, "seconds": seconds,
              "concurrency": concurrency, "payload": PAYLOAD}
    return _sampled(sampler, lambda: sup.call(driver, params, timeout=seconds + 30))


def _sdk_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("iii-sdk")
    except importlib.metadata.PackageNotFoundError:
        return None


def sdk_supervisor(otel: bool) -> tuple[Supervisor | None, str]:
    """The supervisor of the official-SDK workers (WebSocket door on a free port), or None and why not."""
    from _common import cli_start_supports

    try:
        import iii  # noqa: F401
    except ImportError:
        return None, "the official SDK is not installed (.venv/bin/pip install iii-sdk==0.25.0)"
    if not cli_start_supports("--iii-port"):
        return None, "this iii-supervisor has no WebSocket door (--iii-port)"
    # OTEL_ENABLED=false unless --sdk-otel: no /otel socket, no span export (see docs/performance.md)
    env = {k: v for k, v in os.environ.items() if k != "OTEL_ENABLED"}
    if not otel:
        env["OTEL_ENABLED"] = "false"
    return Supervisor(SDK_WORKERS_DIR, {"sdkbench.run", "sdkbench.echo_sync", "sdkbench.echo_async"},
                      tmp_prefix="iii-d", extra_args=["--iii-port", "0"], env=env), ""


def peer_run(ex: concurrent.futures.ProcessPoolExecutor, sampler: CpuSampler, mode: str, count: int,
             seconds: float, window: int) -> dict[str, Any]:
    return _sampled(sampler, lambda: peer_seq(ex, count, seconds) if mode == "seq"
                    else peer_inflight(ex, count, seconds, window))


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"reps": len(runs)}
    out.update(spread(runs, ("calls_per_s", "p50_ms", "p99_ms")))
    out["calls"] = sum(r["calls"] for r in runs)
    out["mismatches"] = sum(r.get("mismatches", 0) + r.get("errors", 0) for r in runs)
    names = runs[0]["cpu_us_per_call"].keys()
    out["cpu_us_per_call"] = {k: median([r["cpu_us_per_call"][k] for r in runs]) for k in names}
    out["cpu_util"] = {k: median([r["cpu_util"][k] for r in runs]) for k in names}
    out["sys_us_per_call"] = {k: median([r["sys_us_per_call"][k] for r in runs]) for k in names}
    out["runq_wait_us_per_call"] = {k: median([r["runq_wait_us_per_call"][k] for r in runs]) for k in names}
    out["steal_cores"] = median([r["steal_cores"] for r in runs])
    out["other_cores"] = median([r["other_cores"] for r in runs])
    out["noisy_reps"] = sum(1 for r in runs if r["other_cores"] + r["steal_cores"] > NOISY_CORES)
    return out


def _rate_cell(s: dict[str, Any], reps: int) -> str:
    return fmt_cell(s, "calls_per_s", fmt_k, reps)


# --- profiling phase -------------------------------------------------------------------------------


def profile_pyspy(sup: Supervisor, driver: str, seconds: float, concurrency: int, out_dir: Path,
                  targets: list[str]) -> dict[str, Any]:
    """py-spy on ``sup`` and its two workers while ``driver`` keeps 64 calls to each target in flight."""
    pyspy = find_pyspy()
    if pyspy is None:
        return {}
    assert sup.proc is not None
    pids = {"supervisor": sup.proc.pid, **{name.removeprefix("sdk_"): pid for name, pid in sup.worker_pids.items()}}
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    for target in targets:
        short = target.replace(".", "_")
        duration = max(2, int(seconds))
        # --gil (PYSPY_EXTRA): only GIL holders
        def profile_path(name: str, short: str = short) -> Path:
            return out_dir / f"pyspy_{short}_{name}.txt"

        with pyspy_recording(pyspy, pids, profile_path, duration, 500, PYSPY_EXTRA) as spies:
            stats = sup.call(driver, {"mode": "inflight", "target": target, "count": 10**9,
                                      "seconds": duration, "concurrency": concurrency, "payload": PAYLOAD},
                             timeout=duration + 30)
            per_proc = collect_pyspy(spies, duration + 30, 25, 40)
        report[target] = {"calls_per_s_while_profiled": stats["calls_per_s"], "processes": per_proc}
    return report


def print_pyspy(report: dict[str, Any], n_self: int = 15, n_incl: int = 20) -> None:
    for target, rep in report.items():
        print(f"\n### py-spy, 64 in flight → {target} ({fmt_k(rep['calls_per_s_while_profiled'])} calls/s while "
              f"sampled; % of the samples of each process, py-spy {' '.join(PYSPY_EXTRA) or '(all non-idle)'})")
        for name, prof in rep["processes"].items():
            print_process_profile(name, prof, n_self, n_incl)


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Routed calls worker A → iii-supervisor → worker B → A (sequential and 64 in flight, "
                    "sync and async handlers), on our SDK (Unix socket) and on the official iii-sdk "
                    "(WebSocket door), vs concurrent.futures.ProcessPoolExecutor(max_workers=2).",
        epilog="Results: a table on stdout and raw JSON in benchmarks/results/invoke.json. "
               "--profile pyspy needs py-spy in the venv (.venv/bin/pip install py-spy).")
    p.add_argument("--quick", action="store_true", help="short smoke run (1 rep, 0.6 s per measurement; ~15 s)")
    p.add_argument("--reps", type=int, help="repetitions per scenario, interleaved (default 3; --quick: 1)")
    p.add_argument("--seconds", type=float, help="time bound per measurement (default 2.0; --quick: 0.6)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per scenario (default 0.5; --quick: 0.25)")
    p.add_argument("--seq-count", type=int, default=50_000, help="call-count bound, sequential (default 50000)")
    p.add_argument("--inflight-count", type=int, default=500_000,
                   help="call-count bound, 64 in flight (default 500000)")
    p.add_argument("--concurrency", type=int, default=64, help="calls in flight (default 64)")
    p.add_argument("--no-sdk", action="store_true",
                   help="skip the third configuration (the official iii-sdk workers over the WebSocket door)")
    p.add_argument("--sdk-otel", action="store_true",
                   help="leave the official SDK's telemetry on (its default: a span per call, exported over /otel); "
                        "default: OTEL_ENABLED=false")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON output (default {DEFAULT_OUTPUT})")
    p.add_argument("--profile", choices=["none", "pyspy", "cprofile"], default="none",
                   help="pyspy: profile supervisor+workers after the measurements; cprofile: run the "
                        "supervisor under cProfile (distorts the numbers)")
    args = p.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.seconds = args.seconds or (0.6 if args.quick else 2.0)
    args.warmup = args.warmup if args.warmup is not None else (0.25 if args.quick else 0.5)
    return args


def _check_restarts(sup: Supervisor, what: str) -> None:
    workers_after = sup.call("engine::workers::list", timeout=10)["workers"]
    restarts = {w["name"]: w["restarts"] for w in workers_after}
    if any(restarts.values()) or {w["name"]: w["pid"] for w in workers_after if w["pid"]} != sup.worker_pids:
        raise RuntimeError(f"a worker of {what} restarted during the measurements ({restarts}): results are invalid")


def _paired(raw: dict[str, list[dict[str, Any]]], a: str, b: str) -> dict[str, Any]:
    """calls/s of ``a`` over ``b``: the ratio of the medians, and per rep (measured side by side)."""
    paired = [x["calls_per_s"] / y["calls_per_s"] for x, y in zip(raw[a], raw[b], strict=False)]
    ratio = median([x["calls_per_s"] for x in raw[a]]) / median([y["calls_per_s"] for y in raw[b]])
    return {"ratio_of_medians": ratio, "paired": paired, "paired_median": median(paired)}


def _ratio_cell(r: dict[str, Any]) -> str:
    p = r["paired"]
    return f"{r['ratio_of_medians']:.2f}x" + (f" [{min(p):.2f}–{max(p):.2f}]" if len(p) > 1 else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    print(f"bench_invoke: reps={args.reps} seconds={args.seconds:g} warmup={args.warmup:g} "
          f"concurrency={args.concurrency} profile={args.profile}; loadavg {os.getloadavg()[0]:.2f}",
          flush=True)
    _, load = wait_quiet(NOISY_CORES, 2.0 if args.quick else 5.0, interval=0.5)
    print(f"machine load before start (other processes + steal): {load:.2f} cores", flush=True)
    sup = InvokeSupervisor(WORKERS_DIR, {"bench.run", "bench.echo_sync", "bench.echo_async"},
                           cprofile=args.profile == "cprofile")
    sdk_sup, sdk_skipped = (None, "--no-sdk") if args.no_sdk else sdk_supervisor(args.sdk_otel)
    if sdk_sup is None:
        print(f"official SDK configuration skipped: {sdk_skipped}", flush=True)
    configs = OURS + (SDK if sdk_sup is not None else [])
    ex: concurrent.futures.ProcessPoolExecutor | None = None
    raw: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in configs}
    raw.update({"peer_seq": [], "peer_inflight": []})
    pyspy_report: dict[str, Any] = {}
    failed = False
    try:
        sup.start()
        assert sup.proc is not None
        print(f"supervisor pid {sup.proc.pid}, workers {sup.worker_pids}, runtime dir {sup.runtime_dir}", flush=True)
        if sup.call("bench.echo_async", PAYLOAD) != PAYLOAD or sup.call("bench.echo_sync", PAYLOAD) != PAYLOAD:
            raise RuntimeError("echo functions do not echo")
        samplers = {"ours": CpuSampler({"supervisor": psutil.Process(sup.proc.pid),
                                        **{n: psutil.Process(pid) for n, pid in sup.worker_pids.items()}},
                                       detail=True)}
        sups = {"ours": sup}
        if sdk_sup is not None:
            sdk_sup.start()
            assert sdk_sup.proc is not None
            print(f"official-SDK supervisor pid {sdk_sup.proc.pid} (WebSocket door), workers {sdk_sup.worker_pids}",
                  flush=True)
            if sdk_sup.call("sdkbench.echo_async", PAYLOAD) != PAYLOAD or \
                    sdk_sup.call("sdkbench.echo_sync", PAYLOAD) != PAYLOAD:
                raise RuntimeError("the official-SDK echo functions do not echo")
            samplers["sdk"] = CpuSampler({"supervisor": psutil.Process(sdk_sup.proc.pid),
                                          **{n.removeprefix("sdk_"): psutil.Process(pid)
                                             for n, pid in sdk_sup.worker_pids.items()}}, detail=True)
            sups["sdk"] = sdk_sup

        ex = concurrent.futures.ProcessPoolExecutor(max_workers=2)
        list(ex.map(echo, range(100)))  # start both worker processes
        me = psutil.Process()
        ours_pids = {s.proc.pid for s in sups.values() if s.proc is not None}
        pool_procs = [c for c in me.children() if c.pid not in ours_pids]
        peer_sampler = CpuSampler({"harness": me, **{f"pool{i}": c for i, c in enumerate(pool_procs)}}, detail=True)

        def run(key: str, mode: str, target: str | None, seconds: float) -> dict[str, Any]:
            count = args.seq_count if mode == "seq" else args.inflight_count
            if target is None:
                return peer_run(ex, peer_sampler, mode, count, seconds, args.concurrency)
            who = "sdk" if key.startswith("sdk_") else "ours"
            driver = "sdkbench.run" if who == "sdk" else "bench.run"
            return routed_run(sups[who], samplers[who], driver, mode, target, count, seconds, args.concurrency)

        # interleaved: per rep, the sequential scenarios of each configuration, then the 64-in-flight ones
        order: list[tuple[str, str, str | None]] = []
        for mode in ("seq", "inflight"):
            order += [(key, m, target) for key, m, target, _ in configs if m == mode]
            order.append(("peer_" + mode, mode, None))

        for key, mode, target in order:  # warm-up: every scenario once, results discarded
            run(key, mode, target, args.warmup)

        for rep in range(args.reps):
            _, load = wait_quiet(NOISY_CORES, 1.0 if args.quick else 3.0, interval=0.5)
            if load > NOISY_CORES:
                print(f"  (machine not quiet before rep {rep + 1}: {load:.2f} cores busy elsewhere; measuring anyway)",
                      flush=True)
            for key, mode, target in order:
                r = run(key, mode, target, args.seconds)
                r["rep"] = rep + 1
                raw[key].append(r)
                print(f"  rep {rep + 1} {key:<19} {fmt_k(r['calls_per_s']):>7} calls/s  p50 {r['p50_ms']:.3f} ms  "
                      f"p99 {r['p99_ms']:.3f} ms  ({r['calls']} calls; other processes {r['other_cores']:.2f} cores, "
                      f"steal {r['steal_cores']:.2f})" + ("  NOISY" if r["other_cores"] + r["steal_cores"] > NOISY_CORES
                                                           else ""),
                      flush=True)

        _check_restarts(sup, "our SDK")
        if sdk_sup is not None:
            _check_restarts(sdk_sup, "the official SDK")

        if args.profile == "pyspy":
            print("profiling with py-spy (after the measurements) …", flush=True)
            profiles = args.output.parent / "profiles"
            pyspy_report = profile_pyspy(sup, "bench.run", max(4.0, args.seconds), args.concurrency, profiles,
                                         ["bench.echo_async", "bench.echo_sync"])
            if sdk_sup is not None:
                pyspy_report.update(profile_pyspy(sdk_sup, "sdkbench.run", max(4.0, args.seconds), args.concurrency,
                                                  profiles, ["sdkbench.echo_async", "sdkbench.echo_sync"]))
    except BaseException:
        failed = True
        raise
    finally:
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
        for s in (sup, sdk_sup):
            if s is None:
                continue
            s.stop()
            if failed and s.proc is not None:
                print(f"bench: failed; supervisor log tail ({s.workers_dir.name}):\n{s.log_tail()}", file=sys.stderr)
        cprofile_top = None
        if args.profile == "cprofile" and sup.prof_path.exists():
            import io
            import pstats

            buf = io.StringIO()
            pstats.Stats(str(sup.prof_path), stream=buf).sort_stats("tottime").print_stats(30)
            cprofile_top = buf.getvalue()
            dest = args.output.parent / "profiles" / "supervisor.prof"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(sup.prof_path, dest)
        sup.cleanup()
        if sdk_sup is not None:
            sdk_sup.cleanup()

    # --- report ---
    summary = {key: summarize(runs) for key, runs in raw.items()}
    have_sdk = sdk_sup is not None
    ratios: dict[str, Any] = {}
    rows = []
    for key, _mode, _target, label in OURS:
        peer = "peer_" + PEER_OF[key]
        s, p = summary[key], summary[peer]
        ratios[key] = _paired(raw, key, peer)
        row = [label, _rate_cell(s, args.reps), f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}"]
        if have_sdk:
            sdk = SDK_OF[key]
            d = summary[sdk]
            ratios[sdk] = _paired(raw, sdk, peer)
            ratios[sdk + "_vs_ours"] = _paired(raw, sdk, key)
            row += [_rate_cell(d, args.reps), f"{d['p50_ms']:.3f}", f"{d['p99_ms']:.3f}"]
        row += [_rate_cell(p, args.reps), _ratio_cell(ratios[key])]
        if have_sdk:
            row += [_ratio_cell(ratios[SDK_OF[key] + "_vs_ours"]), _ratio_cell(ratios[SDK_OF[key]])]
        rows.append(row)
    headers = ["scenario", "ours/Unix socket calls/s", "p50 ms", "p99 ms"]
    if have_sdk:
        headers += ["iii-sdk/WebSocket door calls/s", "p50 ms", "p99 ms"]
    headers += ["ProcessPoolExecutor calls/s", "ours/PPE"]
    if have_sdk:
        headers += ["iii-sdk/ours", "iii-sdk/PPE"]
    print()
    print("## Routed calls A → supervisor → B → A: our SDK over the Unix socket"
          + (", the official iii-sdk 0.25 over the WebSocket door" if have_sdk else "")
          + f", vs ProcessPoolExecutor(max_workers=2)  (median of {args.reps} interleaved rep(s), "
            f"{args.seconds:g} s each; [min–max]; ratios of calls/s: of the medians [per rep])")
    print()
    print(table(headers, rows))
    print()
    peer_rows = [[label, _rate_cell(summary[k], args.reps), f"{summary[k]['p50_ms']:.3f}",
                  f"{summary[k]['p99_ms']:.3f}"]
                 for k, label in (("peer_seq", "ProcessPoolExecutor, one at a time"),
                                  ("peer_inflight", f"ProcessPoolExecutor, {args.concurrency} in flight"))]
    print(table(["peer scenario", "calls/s", "p50 ms", "p99 ms"], peer_rows))
    print()
    cpu_rows = []
    for key in [k for k, *_ in configs] + ["peer_seq", "peer_inflight"]:
        s = summary[key]
        cpu = "  ".join(f"{n} {v:.0f}" for n, v in s["cpu_us_per_call"].items())
        util = "  ".join(f"{n} {v:.2f}" for n, v in s["cpu_util"].items())
        wait = "  ".join(f"{v:.0f}" for v in s["runq_wait_us_per_call"].values())
        cpu_rows.append([key, cpu, f"{sum(s['cpu_util'].values()):.2f} ({util})", wait,
                         f"{s['other_cores']:.2f} / {s['steal_cores']:.2f}"])
    print(table(["scenario", "CPU µs per call (user+sys)", "cores busy: total (per process)",
                 "run-queue wait µs/call", "other procs / steal cores"], cpu_rows))
    noisy = sum(s["noisy_reps"] for s in summary.values())
    if noisy:
        print(f"\nWARNING: {noisy} measurement(s) ran while other processes + steal took > {NOISY_CORES} cores "
              "(see 'other procs / steal'); compare ratios, and re-run on a quiet machine for absolute numbers.")
    if have_sdk:
        rt = summary["sdk_seq_async"]["p50_ms"] * 1000
        print(f"\nofficial SDK over the WebSocket door, one call at a time to an async echo: p50 {rt:.0f} µs per "
              f"round trip A → supervisor → B → A (ours on the Unix socket: "
              f"{summary['seq_async']['p50_ms'] * 1000:.0f} µs). For scale only: the reference Rust engine's own "
              f"benchmark reports {REFERENCE_WS_ROUND_TRIP_US} µs for caller → engine → echo worker → caller over "
              f"WebSocket on its CI machines (another machine).")

    inflight_best = max(summary["inflight_sync"]["calls_per_s"], summary["inflight_async"]["calls_per_s"])
    need = TARGET_RATIO * summary["peer_inflight"]["calls_per_s"]
    met_async = summary["inflight_async"]["calls_per_s"] >= need
    met_sync = summary["inflight_sync"]["calls_per_s"] >= need
    mismatches = sum(s["mismatches"] for s in summary.values())
    if pyspy_report:
        print_pyspy(pyspy_report)
    if args.profile == "cprofile":
        print("\n### cProfile of the supervisor (numbers above are DISTORTED by the profiler)\n")
        print(cprofile_top or "(no profile written)")
    if mismatches:
        print(f"\nWARNING: {mismatches} echo result(s) differed from the payload or failed")
    print()
    verdict = ("MET" if met_async and met_sync else
               "MET for the async handler only" if met_async else
               "MET for the sync handler only" if met_sync else "NOT MET")
    print(f"Target 'routed calls/s with 64 in flight >= 3x ProcessPoolExecutor (64 in flight)': {verdict} "
          f"(async {fmt_k(summary['inflight_async']['calls_per_s'])}/s = "
          f"{ratios['inflight_async']['ratio_of_medians']:.2f}x, "
          f"sync {fmt_k(summary['inflight_sync']['calls_per_s'])}/s = "
          f"{ratios['inflight_sync']['ratio_of_medians']:.2f}x; needed >= {fmt_k(need)}/s = 3x "
          f"{fmt_k(summary['peer_inflight']['calls_per_s'])}/s)")

    write_result(
        args.output, "bench_invoke", args, t_start, machine={"processor": platform.processor()},
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        profiled_with_cprofile=args.profile == "cprofile",
        payload=PAYLOAD,
        official_sdk={"measured": have_sdk, "skipped_because": sdk_skipped or None,
                      "version": _sdk_version(), "otel_enabled": args.sdk_otel,
                      "reference_ws_round_trip_us": REFERENCE_WS_ROUND_TRIP_US},
        target={"description": "routed calls/s with 64 in flight >= 3x ProcessPoolExecutor (64 in flight)",
                "required_calls_per_s": need, "met_async": met_async, "met_sync": met_sync,
                "best_inflight_calls_per_s": inflight_best},
        summary=summary, ratios=ratios, raw=raw, pyspy=pyspy_report)
    return 0

if __name__ == "__main__":
    sys.exit(main())
