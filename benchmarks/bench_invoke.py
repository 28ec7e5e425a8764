#!/usr/bin/env python3
"""Routed-call benchmark: iii-supervisor worker → supervisor → worker, vs ProcessPoolExecutor.

Three configurations in the same run: our SDK on the Unix socket (sync and async handlers), and the
official iii SDK (``iii-sdk``, when installed) over the iii door's WebSocket: ``sdk_driver`` →
supervisor → ``sdk_target`` → supervisor → ``sdk_driver`` (``benchmarks/workers_invoke_sdk/``,
spawned through ``[workers.NAME] command``, the door on a free port). ``--no-sdk`` leaves it out.

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_invoke.py            # full run (~45-55 s)
    .venv/bin/python benchmarks/bench_invoke.py --quick    # smoke run (~10-15 s)
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

2. Measures the peer in this process: ``ProcessPoolExecutor(max_workers=2)`` calling a trivial
   module-level echo, one at a time (``submit().result()`` in a loop) and with 64 futures kept in
   flight (a semaphore-bounded window of ``submit`` + done-callbacks).

3. Warms everything up, then repeats every measurement ``--reps`` times (default 3, interleaved:
   rep 1 of every scenario, then rep 2, …) and reports the median (and [min–max]) of each.
   Alongside it samples the CPU time of the supervisor, A and B (psutil) and the hypervisor steal
   (/proc/stat), so the table can say where the CPU went per call.

4. Prints the table and whether the target
   "routed calls/s with 64 in flight >= 3x ProcessPoolExecutor (64 in flight)" was met, and writes
   every raw number to ``benchmarks/results/invoke.json`` (gitignored).

``--profile pyspy`` adds a profiling phase after the measurements (so it does not disturb them):
``py-spy record`` on the supervisor, A and B while A runs the 64-in-flight async scenario, and
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
    VENV_BIN,
    CpuSampler,
    LoggedProcess,
    args_json,
    collect_pyspy,
    find_pyspy,
    fmt_cell,
    fmt_k,
    git_state,
    latency_stats,
    machine_info,
    median,
    print_process_profile,
    pyspy_recording,
    reap,
    spread,
    stop_process,
    table,
    utc_timestamp,
    wait_quiet,
    write_json,
)

from iii_supervisor.control import ControlClient

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
    # key, mode, target function, label, driver function
    ("seq_sync", "seq", "bench.echo_sync", "sequential, sync handler", "bench.run"),
    ("seq_async", "seq", "bench.echo_async", "sequential, async handler", "bench.run"),
    ("inflight_sync", "inflight", "bench.echo_sync", "64 in flight, sync handler", "bench.run"),
    ("inflight_async", "inflight", "bench.echo_async", "64 in flight, async handler", "bench.run"),
]
#: the official SDK over the iii door (WebSocket), when iii-sdk is installed
SDK_SCENARIOS = [
    ("sdk_seq", "seq", "sdkbench.echo", "iii-sdk over WebSocket, sequential", "sdkbench.run"),
    ("sdk_inflight", "inflight", "sdkbench.echo", "iii-sdk over WebSocket, 64 in flight", "sdkbench.run"),
]
PEER_OF = {"seq_sync": "seq", "seq_async": "seq", "inflight_sync": "inflight", "inflight_async": "inflight",
           "sdk_seq": "seq", "sdk_inflight": "inflight"}


def sdk_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("iii") is not None and _start_supports("--iii-port")


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


def _start_supports(flag: str) -> bool:
    """Whether ``iii-supervisor start`` knows ``flag`` (the CLI grows options over time)."""
    from iii_supervisor.cli import build_parser

    parser = build_parser()
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]  # noqa: SLF001
        start = action.choices.get("start")  # type: ignore[union-attr]
        if start is not None:
            return any(flag in a.option_strings for a in start._actions)  # noqa: SLF001
    return False


class Supervisor(LoggedProcess):
    """A real ``iii-supervisor start`` subprocess on a temporary runtime directory."""

    log_lines = 40
    no_log = "(no supervisor log)"

    def __init__(self, workers_dir: Path, *, cprofile: bool = False, sdk: bool = False) -> None:
        super().__init__("iii-b", "supervisor.log")  # short prefix: the control socket path has a length limit
        self.workers_dir = workers_dir
        self.cprofile = cprofile
        #: also run the official-SDK pair behind the iii door
        self.sdk = sdk
        self.runtime_dir = self.tmp
        self.prof_path = self.runtime_dir / "supervisor.prof"
        self.worker_pids: dict[str, int] = {}

    @property
    def control_socket(self) -> Path:
        return self.runtime_dir / "control.sock"

    def start(self, timeout: float = 30.0) -> None:
        if self.cprofile:
            cmd = [sys.executable, "-m", "cProfile", "-o", str(self.prof_path), "-m", "iii_supervisor.cli"]
        else:
            exe = VENV_BIN / "iii-supervisor"
            cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "iii_supervisor.cli"]
        cmd += ["start", str(self.workers_dir), "--runtime-dir", str(self.runtime_dir), "--log-level", "warning"]
        if _start_supports("--http-port"):
            cmd += ["--http-port", "0"]  # any free port: never clash with another supervisor on the default one
        if _start_supports("--stream-port"):
            cmd += ["--stream-port", "0"]
        want = {"bench.run", "bench.echo_sync", "bench.echo_async"}
        env = None
        if self.sdk:
            config = self.runtime_dir / "bench.toml"
            config.write_text("".join(f'[workers.{name}]\ncommand = ["{sys.executable}", '
                                      f'"{SDK_WORKERS_DIR / (name + ".py")}"]\n'
                                      for name in ("sdk_driver", "sdk_target")))
            cmd += ["--iii-port", "0", "--config", str(config)]
            env = {**os.environ, "OTEL_ENABLED": "false"}
            want |= {"sdkbench.run", "sdkbench.echo"}
        self.spawn(cmd, env=env)

        def ready() -> bool | None:
            if not self.control_socket.exists():
                return None
            have = {f["function_id"] for f in self.call("engine::functions::list", timeout=5)["functions"]}
            if not want <= have:
                return None
            workers = self.call("engine::workers::list", timeout=5)["workers"]
            self.worker_pids = {w["name"]: w["pid"] for w in workers if w["pid"]}
            return True

        self.wait_started(ready, timeout, label="the supervisor", retry_on=(Exception,),  # not ready yet
                          not_ready=lambda last: f"the supervisor was not ready within {timeout:g}s "
                                                 f"(last error: {last!r})")

    def call(self, function_id: str, data: Any = None, *, timeout: float = 60.0) -> Any:
        with ControlClient(self.control_socket, timeout=timeout) as client:
            return client.call(function_id, data, timeout_ms=int(timeout * 1000))

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait, SIGKILL on timeout; then make sure the workers are gone too."""
        stop_process(self.proc, "supervisor", timeout)
        reap({f"worker {name} (pid {pid})": pid for name, pid in self.worker_pids.items()}, "the supervisor")
        self.close_log()


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


def ours_run(sup: Supervisor, sampler: CpuSampler, mode: str, target: str, count: int, seconds: float,
             concurrency: int, driver: str = "bench.run") -> dict[str, Any]:
    params = {"mode": mode, "target": target, "count": count, "seconds": seconds,
              "concurrency": concurrency, "payload": PAYLOAD}
    return _sampled(sampler, lambda: sup.call(driver, params, timeout=seconds + 30))


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


def profile_pyspy(sup: Supervisor, seconds: float, concurrency: int, out_dir: Path,
                  targets: list[str]) -> dict[str, Any]:
    pyspy = find_pyspy()
    if pyspy is None:
        return {}
    assert sup.proc is not None
    pids = {"supervisor": sup.proc.pid, "driver": sup.worker_pids.get("driver"),
            "target": sup.worker_pids.get("target")}
    pids = {name: pid for name, pid in pids.items() if pid is not None}
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    for target in targets:
        short = target.rsplit("_", 1)[-1]
        duration = max(2, int(seconds))
        # --gil (PYSPY_EXTRA): only GIL holders
        def profile_path(name: str, short: str = short) -> Path:
            return out_dir / f"pyspy_{short}_{name}.txt"

        with pyspy_recording(pyspy, pids, profile_path, duration, 500, PYSPY_EXTRA) as spies:
            stats = sup.call("bench.run", {"mode": "inflight", "target": target, "count": 10**9,
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
                    "sync and async handlers) vs concurrent.futures.ProcessPoolExecutor(max_workers=2).",
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
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"JSON output (default {DEFAULT_OUTPUT})")
    p.add_argument("--no-sdk", action="store_true",
                   help="leave out the official iii SDK over the iii door (included when iii-sdk is installed)")
    p.add_argument("--profile", choices=["none", "pyspy", "cprofile"], default="none",
                   help="pyspy: profile supervisor+workers after the measurements; cprofile: run the "
                        "supervisor under cProfile (distorts the numbers)")
    args = p.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.seconds = args.seconds or (0.6 if args.quick else 2.0)
    args.warmup = args.warmup if args.warmup is not None else (0.25 if args.quick else 0.5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    print(f"bench_invoke: reps={args.reps} seconds={args.seconds:g} warmup={args.warmup:g} "
          f"concurrency={args.concurrency} profile={args.profile}; loadavg {os.getloadavg()[0]:.2f}",
          flush=True)
    _, load = wait_quiet(NOISY_CORES, 2.0 if args.quick else 5.0, interval=0.5)
    print(f"machine load before start (other processes + steal): {load:.2f} cores", flush=True)
    sdk = not args.no_sdk and sdk_available()
    if not args.no_sdk and not sdk:
        print("iii-sdk is not installed (pip install iii-sdk): the official-SDK configuration is left out", flush=True)
    scenarios = OURS + (SDK_SCENARIOS if sdk else [])
    sup = Supervisor(WORKERS_DIR, cprofile=args.profile == "cprofile", sdk=sdk)
    ex: concurrent.futures.ProcessPoolExecutor | None = None
    raw: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in scenarios}
    raw.update({"peer_seq": [], "peer_inflight": []})
    pyspy_report: dict[str, Any] = {}
    failed = False
    try:
        sup.start()
        assert sup.proc is not None
        print(f"supervisor pid {sup.proc.pid}, workers {sup.worker_pids}, runtime dir {sup.runtime_dir}", flush=True)
        if sup.call("bench.echo_async", PAYLOAD) != PAYLOAD or sup.call("bench.echo_sync", PAYLOAD) != PAYLOAD:
            raise RuntimeError("echo functions do not echo")
        ours_sampler = CpuSampler({"supervisor": psutil.Process(sup.proc.pid),
                                   **{n: psutil.Process(pid) for n, pid in sup.worker_pids.items()}},
                                  detail=True)

        ex = concurrent.futures.ProcessPoolExecutor(max_workers=2)
        list(ex.map(echo, range(100)))  # start both worker processes
        me = psutil.Process()
        pool_procs = [c for c in me.children() if c.pid != sup.proc.pid]
        peer_sampler = CpuSampler({"harness": me, **{f"pool{i}": c for i, c in enumerate(pool_procs)}}, detail=True)

        drivers = {key: driver for key, _mode, _target, _label, driver in scenarios}

        def run_ours(key: str, mode: str, target: str, seconds: float) -> dict[str, Any]:
            count = args.seq_count if mode == "seq" else args.inflight_count
            return ours_run(sup, ours_sampler, mode, target, count, seconds, args.concurrency, drivers[key])

        def run_peer(mode: str, seconds: float) -> dict[str, Any]:
            count = args.seq_count if mode == "seq" else args.inflight_count
            return peer_run(ex, peer_sampler, mode, count, seconds, args.concurrency)

        # warm-up: every scenario once, results discarded
        for key, mode, target, *_ in scenarios:
            run_ours(key, mode, target, args.warmup)
        run_peer("seq", args.warmup)
        run_peer("inflight", args.warmup)

        # measurement: interleaved reps
        order = [("ours", *o[:3]) for o in scenarios if o[1] == "seq"] + [("peer", "peer_seq", "seq", None)] + \
                [("ours", *o[:3]) for o in scenarios if o[1] == "inflight"] + \
                [("peer", "peer_inflight", "inflight", None)]
        for rep in range(args.reps):
            _, load = wait_quiet(NOISY_CORES, 1.0 if args.quick else 3.0, interval=0.5)
            if load > NOISY_CORES:
                print(f"  (machine not quiet before rep {rep + 1}: {load:.2f} cores busy elsewhere; measuring anyway)",
                      flush=True)
            for who, key, mode, target in order:
                if who == "ours":
                    r = run_ours(key, mode, target, args.seconds)
                else:
                    r = run_peer(mode, args.seconds)
                r["rep"] = rep + 1
                raw[key].append(r)
                print(f"  rep {rep + 1} {key:<15} {fmt_k(r['calls_per_s']):>7} calls/s  p50 {r['p50_ms']:.3f} ms  "
                      f"p99 {r['p99_ms']:.3f} ms  ({r['calls']} calls; other processes {r['other_cores']:.2f} cores, "
                      f"steal {r['steal_cores']:.2f})" + ("  NOISY" if r["other_cores"] + r["steal_cores"] > NOISY_CORES
                                                           else ""),
                      flush=True)

        workers_after = sup.call("engine::workers::list", timeout=10)["workers"]
        restarts = {w["name"]: w["restarts"] for w in workers_after}
        if any(restarts.values()) or {w["name"]: w["pid"] for w in workers_after} != sup.worker_pids:
            raise RuntimeError(f"a worker restarted during the measurements ({restarts}): results are invalid")

        if args.profile == "pyspy":
            print("profiling with py-spy (after the measurements) …", flush=True)
            pyspy_report = profile_pyspy(sup, max(4.0, args.seconds), args.concurrency,
                                         args.output.parent / "profiles", ["bench.echo_async", "bench.echo_sync"])
    except BaseException:
        failed = True
        raise
    finally:
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
        sup.stop()
        if failed and sup.proc is not None:
            print(f"bench: failed; supervisor log tail:\n{sup.log_tail()}", file=sys.stderr)
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

    # --- report ---
    summary = {key: summarize(runs) for key, runs in raw.items()}
    rows = []
    ratios: dict[str, Any] = {}
    for key, _mode, _target, label, _driver in scenarios:
        s, peer = summary[key], summary["peer_" + PEER_OF[key]]
        pairs = zip(raw[key], raw["peer_" + PEER_OF[key]], strict=False)
        paired = [o["calls_per_s"] / p["calls_per_s"] for o, p in pairs]
        ratio = s["calls_per_s"] / peer["calls_per_s"]
        ratios[key] = {"ratio_of_medians": ratio, "paired": paired, "paired_median": median(paired)}
        ratio_cell = f"{ratio:.2f}x" + (f" [{min(paired):.2f}–{max(paired):.2f}]" if len(paired) > 1 else "")
        rows.append([label, _rate_cell(s, args.reps), f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}",
                     _rate_cell(peer, args.reps), ratio_cell])
    print()
    print(f"## Routed calls A → supervisor → B → A vs ProcessPoolExecutor(max_workers=2)  "
          f"(median of {args.reps} interleaved rep(s), {args.seconds:g} s each; [min–max])")
    print()
    print(table(["scenario", "ours calls/s", "p50 ms", "p99 ms", "ProcessPoolExecutor calls/s", "ratio (ours/peer)"],
                rows))
    print()
    peer_rows = [[label, _rate_cell(summary[k], args.reps), f"{summary[k]['p50_ms']:.3f}",
                  f"{summary[k]['p99_ms']:.3f}"]
                 for k, label in (("peer_seq", "ProcessPoolExecutor, one at a time"),
                                  ("peer_inflight", f"ProcessPoolExecutor, {args.concurrency} in flight"))]
    print(table(["peer scenario", "calls/s", "p50 ms", "p99 ms"], peer_rows))
    print()
    cpu_rows = []
    for key in [k for k, *_ in scenarios] + ["peer_seq", "peer_inflight"]:
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

    result = {
        "benchmark": "bench_invoke",
        "timestamp": utc_timestamp(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": args_json(args),
        "machine": machine_info(processor=platform.processor()),
        "git": git_state(),
        "profiled_with_cprofile": args.profile == "cprofile",
        "payload": PAYLOAD,
        "target": {"description": "routed calls/s with 64 in flight >= 3x ProcessPoolExecutor (64 in flight)",
                   "required_calls_per_s": need, "met_async": met_async, "met_sync": met_sync,
                   "best_inflight_calls_per_s": inflight_best},
        "summary": summary,
        "ratios": ratios,
        "raw": raw,
        "pyspy": pyspy_report,
        "duration_s": time.perf_counter() - t_start,
    }
    write_json(args.output, result)
    print(f"results: {args.output}  (run took {result['duration_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
