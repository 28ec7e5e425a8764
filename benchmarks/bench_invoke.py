#!/usr/bin/env python3
"""Routed-call benchmark: iii-supervisor worker → supervisor → worker, vs ProcessPoolExecutor.

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
import collections
import concurrent.futures
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from iii_supervisor.control import ControlClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKERS_DIR = HERE / "workers_invoke"
DEFAULT_OUTPUT = HERE / "results" / "invoke.json"
VENV_BIN = Path(sys.executable).parent
PAYLOAD = {"x": 1}
TARGET_RATIO = 3.0
#: Extra py-spy flags. Default ``--gil``: count only samples of threads holding the GIL, i.e. Python work.
#: (Without it, py-spy attributes most supervisor samples to the ``send`` line although psutil shows only
#: a few µs of system time per call, so those samples are not CPU.) BENCH_PYSPY_ARGS="" samples all.
#: A measurement during which other processes + steal took more than this many cores is flagged "noisy".
NOISY_CORES = 0.3
PYSPY_EXTRA = os.environ.get("BENCH_PYSPY_ARGS", "--gil").split()

OURS = [
    # key, mode, target function, label
    ("seq_sync", "seq", "bench.echo_sync", "sequential, sync handler"),
    ("seq_async", "seq", "bench.echo_async", "sequential, async handler"),
    ("inflight_sync", "inflight", "bench.echo_sync", "64 in flight, sync handler"),
    ("inflight_async", "inflight", "bench.echo_async", "64 in flight, async handler"),
]
PEER_OF = {"seq_sync": "seq", "seq_async": "seq", "inflight_sync": "inflight", "inflight_async": "inflight"}


# --- the peer: ProcessPoolExecutor ----------------------------------------------------------------


def echo(data: Any) -> Any:
    """The trivial module-level function the process pool calls."""
    return data


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


def _lat_stats(latencies: list[float], calls: int, elapsed: float, mismatches: int) -> dict[str, Any]:
    lat = sorted(latencies)
    return {
        "calls": calls,
        "elapsed_s": elapsed,
        "calls_per_s": calls / elapsed if elapsed > 0 else 0.0,
        "p50_ms": _pct(lat, 50) * 1000,
        "p99_ms": _pct(lat, 99) * 1000,
        "max_ms": (lat[-1] if lat else 0.0) * 1000,
        "mean_ms": (sum(lat) / len(lat) if lat else 0.0) * 1000,
        "mismatches": mismatches,
    }


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
    return _lat_stats(latencies, calls, perf() - start, mismatches)


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
    stats = _lat_stats(latencies, state["done"], perf() - start, state["mismatches"])
    stats["errors"] = state["errors"]
    return stats


# --- machine noise and CPU accounting --------------------------------------------------------------


def _proc_stat() -> tuple[int, int]:
    """(busy jiffies, steal jiffies) of the whole machine, from the first line of /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, IndexError, ValueError):
        return 0, 0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq, steal


def _steal_jiffies() -> int:
    return _proc_stat()[1]


def foreign_load(window: float = 0.5) -> float:
    """Cores busy on the machine (plus steal) during ``window`` seconds, when we are idle."""
    b0, s0 = _proc_stat()
    time.sleep(window)
    b1, s1 = _proc_stat()
    return ((b1 - b0) + (s1 - s0)) / _HZ / window


def wait_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (at most ``max_wait`` s) until other processes use less than ``threshold`` cores."""
    deadline = time.monotonic() + max_wait
    load = foreign_load()
    while load > threshold and time.monotonic() < deadline:
        load = foreign_load()
    return load


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class CpuSampler:
    """CPU seconds of a set of processes (and machine steal) between start() and stop()."""

    def __init__(self, procs: dict[str, psutil.Process]) -> None:
        self.procs = procs

    def _read(self) -> dict[str, tuple[float, float, dict[str, float]]]:
        """name → (user s, system s, {tid: run-queue wait s}: runnable but not running)."""
        out = {}
        for name, p in self.procs.items():
            try:
                t = p.cpu_times()
                out[name] = (t.user, t.system, _runq_wait_s(p.pid))
            except psutil.Error:
                out[name] = (float("nan"), float("nan"), {})
        return out

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._c0 = self._read()
        self._busy0, self._s0 = _proc_stat()

    def stop(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self._t0
        c1 = self._read()
        busy1, s1 = _proc_stat()
        steal = (s1 - self._s0) / _HZ
        d = {k: [c1[k][0] - self._c0[k][0], c1[k][1] - self._c0[k][1], _runq_delta(self._c0[k][2], c1[k][2])]
             for k in c1}
        ours = sum(v[0] + v[1] for v in d.values())
        return {
            # cores used by processes other than the measured ones (other sessions, py-spy, …)
            "other_cores": max(0.0, ((busy1 - self._busy0) / _HZ - ours) / elapsed) if elapsed > 0 else 0.0,
            "cpu_s": {k: v[0] + v[1] for k, v in d.items()},
            "sys_s": {k: v[1] for k, v in d.items()},
            "runq_wait_s": {k: v[2] for k, v in d.items()},
            "steal_cores": steal / elapsed if elapsed > 0 else 0.0,
            "wall_s": elapsed,
        }


def _runq_wait_s(pid: int) -> dict[str, float]:
    """tid → seconds the thread spent runnable but waiting for a CPU (/proc/PID/task/TID/schedstat)."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            pass
    return out


def _runq_delta(before: dict[str, float], after: dict[str, float]) -> float:
    # threads that exited in between are lost (trio's thread cache retires idle threads): an undercount
    return sum(v - before.get(tid, 0.0) for tid, v in after.items())


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


class Supervisor:
    """A real ``iii-supervisor start`` subprocess on a temporary runtime directory."""

    def __init__(self, workers_dir: Path, *, cprofile: bool = False) -> None:
        self.workers_dir = workers_dir
        self.cprofile = cprofile
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="iii-b"))
        self.log_path = self.runtime_dir / "supervisor.log"
        self.prof_path = self.runtime_dir / "supervisor.prof"
        self.proc: subprocess.Popen | None = None
        self.worker_pids: dict[str, int] = {}
        self._log = None

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
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=ROOT)
        want = {"bench.run", "bench.echo_sync", "bench.echo_async"}
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the supervisor exited with {self.proc.returncode} during startup\n{self.log_tail()}")
            if self.control_socket.exists():
                try:
                    have = {f["function_id"] for f in self.call("engine::functions::list", timeout=5)["functions"]}
                    if want <= have:
                        workers = self.call("engine::workers::list", timeout=5)["workers"]
                        self.worker_pids = {w["name"]: w["pid"] for w in workers if w["pid"]}
                        return
                except Exception as exc:  # noqa: BLE001 - not ready yet
                    last_error = exc
            time.sleep(0.05)
        raise RuntimeError(f"the supervisor was not ready within {timeout:g}s (last error: {last_error!r})\n"
                           f"{self.log_tail()}")

    def call(self, function_id: str, data: Any = None, *, timeout: float = 60.0) -> Any:
        with ControlClient(self.control_socket, timeout=timeout) as client:
            return client.call(function_id, data, timeout_ms=int(timeout * 1000))

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no supervisor log)"
        return "\n".join("  | " + line for line in lines[-n:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait, SIGKILL on timeout; then make sure the workers are gone too."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(f"bench: supervisor did not stop within {timeout:g}s; killing it", file=sys.stderr)
                proc.kill()
                proc.wait(timeout=5)
        for name, pid in self.worker_pids.items():  # normally already stopped by the supervisor
            try:
                p = psutil.Process(pid)
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    p.wait(timeout=3)
            except psutil.TimeoutExpired:
                print(f"bench: worker {name} (pid {pid}) outlived the supervisor; killing it", file=sys.stderr)
                try:
                    p.kill()
                except psutil.Error:
                    pass
            except psutil.Error:
                pass
        if self._log is not None:
            self._log.close()

    def cleanup(self) -> None:
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


# --- the measurement -----------------------------------------------------------------------------


def ours_run(sup: Supervisor, sampler: CpuSampler, mode: str, target: str, count: int, seconds: float,
             concurrency: int) -> dict[str, Any]:
    params = {"mode": mode, "target": target, "count": count, "seconds": seconds,
              "concurrency": concurrency, "payload": PAYLOAD}
    sampler.start()
    stats = sup.call("bench.run", params, timeout=seconds + 30)
    noise = sampler.stop()
    calls = max(1, stats["calls"])
    stats["cpu_us_per_call"] = {k: v / calls * 1e6 for k, v in noise["cpu_s"].items()}
    stats["cpu_util"] = {k: v / noise["wall_s"] for k, v in noise["cpu_s"].items()}
    stats["sys_us_per_call"] = {k: v / calls * 1e6 for k, v in noise["sys_s"].items()}
    stats["runq_wait_us_per_call"] = {k: v / calls * 1e6 for k, v in noise["runq_wait_s"].items()}
    stats["steal_cores"] = noise["steal_cores"]
    stats["other_cores"] = noise["other_cores"]
    return stats


def peer_run(ex: concurrent.futures.ProcessPoolExecutor, sampler: CpuSampler, mode: str, count: int,
             seconds: float, window: int) -> dict[str, Any]:
    sampler.start()
    stats = peer_seq(ex, count, seconds) if mode == "seq" else peer_inflight(ex, count, seconds, window)
    noise = sampler.stop()
    calls = max(1, stats["calls"])
    stats["cpu_us_per_call"] = {k: v / calls * 1e6 for k, v in noise["cpu_s"].items()}
    stats["cpu_util"] = {k: v / noise["wall_s"] for k, v in noise["cpu_s"].items()}
    stats["sys_us_per_call"] = {k: v / calls * 1e6 for k, v in noise["sys_s"].items()}
    stats["runq_wait_us_per_call"] = {k: v / calls * 1e6 for k, v in noise["runq_wait_s"].items()}
    stats["steal_cores"] = noise["steal_cores"]
    stats["other_cores"] = noise["other_cores"]
    return stats


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"reps": len(runs)}
    for key in ("calls_per_s", "p50_ms", "p99_ms"):
        vals = [r[key] for r in runs]
        out[key] = _median(vals)
        out[key + "_min"] = min(vals)
        out[key + "_max"] = max(vals)
    out["calls"] = sum(r["calls"] for r in runs)
    out["mismatches"] = sum(r.get("mismatches", 0) + r.get("errors", 0) for r in runs)
    names = runs[0]["cpu_us_per_call"].keys()
    out["cpu_us_per_call"] = {k: _median([r["cpu_us_per_call"][k] for r in runs]) for k in names}
    out["cpu_util"] = {k: _median([r["cpu_util"][k] for r in runs]) for k in names}
    out["sys_us_per_call"] = {k: _median([r["sys_us_per_call"][k] for r in runs]) for k in names}
    out["runq_wait_us_per_call"] = {k: _median([r["runq_wait_us_per_call"][k] for r in runs]) for k in names}
    out["steal_cores"] = _median([r["steal_cores"] for r in runs])
    out["other_cores"] = _median([r["other_cores"] for r in runs])
    out["noisy_reps"] = sum(1 for r in runs if r["other_cores"] + r["steal_cores"] > NOISY_CORES)
    return out


def _k(v: float) -> str:
    if v != v:  # nan
        return "-"
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def _rate_cell(s: dict[str, Any], reps: int) -> str:
    if reps > 1:
        return f"{_k(s['calls_per_s'])} [{_k(s['calls_per_s_min'])}–{_k(s['calls_per_s_max'])}]"
    return _k(s["calls_per_s"])


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(headers), sep, *(fmt(r) for r in rows)])


# --- profiling phase -------------------------------------------------------------------------------


def _parse_collapsed(path: Path) -> tuple[int, collections.Counter, collections.Counter]:
    """py-spy ``--format raw`` (collapsed stacks) → (total samples, self counts, inclusive counts)."""
    total = 0
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0, own, incl
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    return total, own, incl


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" → "func (file.py:123)" with site-packages paths shortened
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in loc:
            loc = loc.split(marker, 1)[1]
            break
    return f"{name} ({loc})" if loc else name


def profile_pyspy(sup: Supervisor, seconds: float, concurrency: int, out_dir: Path,
                  targets: list[str]) -> dict[str, Any]:
    pyspy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if pyspy is None:
        print("bench: py-spy not found (install it with: .venv/bin/pip install py-spy); skipping the profile",
              file=sys.stderr)
        return {}
    assert sup.proc is not None
    pids = {"supervisor": sup.proc.pid, "driver": sup.worker_pids.get("driver"),
            "target": sup.worker_pids.get("target")}
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    for target in targets:
        short = target.rsplit("_", 1)[-1]
        spies = {}
        duration = max(2, int(seconds))
        for name, pid in pids.items():
            if pid is None:
                continue
            raw = out_dir / f"pyspy_{short}_{name}.txt"
            # no --idle: sleeping threads are not sampled; --gil (PYSPY_EXTRA): only GIL holders
            spies[name] = (raw, subprocess.Popen(
                [pyspy, "record", "--pid", str(pid), "--duration", str(duration), "--rate", "500",
                 "--format", "raw", "--output", str(raw), "--nonblocking", *PYSPY_EXTRA],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        time.sleep(0.5)  # let py-spy attach
        stats = sup.call("bench.run", {"mode": "inflight", "target": target, "count": 10**9,
                                       "seconds": duration, "concurrency": concurrency, "payload": PAYLOAD},
                         timeout=duration + 30)
        per_proc: dict[str, Any] = {}
        for name, (raw, spy) in spies.items():
            try:
                _, err = spy.communicate(timeout=duration + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, err = spy.communicate()
            total, own, incl = _parse_collapsed(raw)
            if total == 0:
                per_proc[name] = {"error": (err or b"").decode(errors="replace")[-500:]}
                continue
            per_proc[name] = {
                "samples": total,
                "self_top": [[_short(f), round(100 * c / total, 1)] for f, c in own.most_common(25)],
                "inclusive_top": [[_short(f), round(100 * c / total, 1)] for f, c in incl.most_common(40)],
                "raw": str(raw),
            }
        report[target] = {"calls_per_s_while_profiled": stats["calls_per_s"], "processes": per_proc}
    return report


def print_pyspy(report: dict[str, Any], n_self: int = 15, n_incl: int = 20) -> None:
    for target, rep in report.items():
        print(f"\n### py-spy, 64 in flight → {target} ({_k(rep['calls_per_s_while_profiled'])} calls/s while "
              f"sampled; % of the samples of each process, py-spy {' '.join(PYSPY_EXTRA) or '(all non-idle)'})")
        for name, prof in rep["processes"].items():
            if "error" in prof:
                print(f"\n{name}: py-spy failed: {prof['error']}")
                continue
            print(f"\n{name} ({prof['samples']} samples) — self:")
            for frame, pct in prof["self_top"][:n_self]:
                print(f"  {pct:5.1f}%  {frame}")
            print(f"{name} — inclusive:")
            for frame, pct in prof["inclusive_top"][:n_incl]:
                print(f"  {pct:5.1f}%  {frame}")


def _git_revision() -> dict[str, Any]:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD"), "dirty_files": git("status", "--porcelain").splitlines()}


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
    load = wait_quiet(2.0 if args.quick else 5.0)
    print(f"machine load before start (other processes + steal): {load:.2f} cores", flush=True)
    sup = Supervisor(WORKERS_DIR, cprofile=args.profile == "cprofile")
    ex: concurrent.futures.ProcessPoolExecutor | None = None
    raw: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in OURS}
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
                                   **{n: psutil.Process(pid) for n, pid in sup.worker_pids.items()}})

        ex = concurrent.futures.ProcessPoolExecutor(max_workers=2)
        list(ex.map(echo, range(100)))  # start both worker processes
        me = psutil.Process()
        pool_procs = [c for c in me.children() if c.pid != sup.proc.pid]
        peer_sampler = CpuSampler({"harness": me, **{f"pool{i}": c for i, c in enumerate(pool_procs)}})

        def run_ours(key: str, mode: str, target: str, seconds: float) -> dict[str, Any]:
            count = args.seq_count if mode == "seq" else args.inflight_count
            return ours_run(sup, ours_sampler, mode, target, count, seconds, args.concurrency)

        def run_peer(mode: str, seconds: float) -> dict[str, Any]:
            count = args.seq_count if mode == "seq" else args.inflight_count
            return peer_run(ex, peer_sampler, mode, count, seconds, args.concurrency)

        # warm-up: every scenario once, results discarded
        for key, mode, target, _ in OURS:
            run_ours(key, mode, target, args.warmup)
        run_peer("seq", args.warmup)
        run_peer("inflight", args.warmup)

        # measurement: interleaved reps
        order = [("ours", *o[:3]) for o in OURS[:2]] + [("peer", "peer_seq", "seq", None)] + \
                [("ours", *o[:3]) for o in OURS[2:]] + [("peer", "peer_inflight", "inflight", None)]
        for rep in range(args.reps):
            load = wait_quiet(1.0 if args.quick else 3.0)
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
                print(f"  rep {rep + 1} {key:<15} {_k(r['calls_per_s']):>7} calls/s  p50 {r['p50_ms']:.3f} ms  "
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
    for key, _mode, _target, label in OURS:
        s, peer = summary[key], summary["peer_" + PEER_OF[key]]
        paired = [o["calls_per_s"] / p["calls_per_s"] for o, p in zip(raw[key], raw["peer_" + PEER_OF[key]])]
        ratio = s["calls_per_s"] / peer["calls_per_s"]
        ratios[key] = {"ratio_of_medians": ratio, "paired": paired, "paired_median": _median(paired)}
        ratio_cell = f"{ratio:.2f}x" + (f" [{min(paired):.2f}–{max(paired):.2f}]" if len(paired) > 1 else "")
        rows.append([label, _rate_cell(s, args.reps), f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}",
                     _rate_cell(peer, args.reps), ratio_cell])
    print()
    print(f"## Routed calls A → supervisor → B → A vs ProcessPoolExecutor(max_workers=2)  "
          f"(median of {args.reps} interleaved rep(s), {args.seconds:g} s each; [min–max])")
    print()
    print(_table(["scenario", "ours calls/s", "p50 ms", "p99 ms", "ProcessPoolExecutor calls/s", "ratio (ours/peer)"],
                 rows))
    print()
    peer_rows = [[label, _rate_cell(summary[k], args.reps), f"{summary[k]['p50_ms']:.3f}",
                  f"{summary[k]['p99_ms']:.3f}"]
                 for k, label in (("peer_seq", "ProcessPoolExecutor, one at a time"),
                                  ("peer_inflight", f"ProcessPoolExecutor, {args.concurrency} in flight"))]
    print(_table(["peer scenario", "calls/s", "p50 ms", "p99 ms"], peer_rows))
    print()
    cpu_rows = []
    for key in [k for k, *_ in OURS] + ["peer_seq", "peer_inflight"]:
        s = summary[key]
        cpu = "  ".join(f"{n} {v:.0f}" for n, v in s["cpu_us_per_call"].items())
        util = "  ".join(f"{n} {v:.2f}" for n, v in s["cpu_util"].items())
        wait = "  ".join(f"{v:.0f}" for v in s["runq_wait_us_per_call"].values())
        cpu_rows.append([key, cpu, f"{sum(s['cpu_util'].values()):.2f} ({util})", wait,
                         f"{s['other_cores']:.2f} / {s['steal_cores']:.2f}"])
    print(_table(["scenario", "CPU µs per call (user+sys)", "cores busy: total (per process)",
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
          f"(async {_k(summary['inflight_async']['calls_per_s'])}/s = "
          f"{ratios['inflight_async']['ratio_of_medians']:.2f}x, sync {_k(summary['inflight_sync']['calls_per_s'])}/s = "
          f"{ratios['inflight_sync']['ratio_of_medians']:.2f}x; needed >= {_k(need)}/s = 3x "
          f"{_k(summary['peer_inflight']['calls_per_s'])}/s)")

    result = {
        "benchmark": "bench_invoke",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "processor": platform.processor()},
        "git": _git_revision(),
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
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.output}  (run took {result['duration_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
