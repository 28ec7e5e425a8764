"""What the ``bench_*.py`` scripts share (not a benchmark itself; imported by them).

- machine noise and CPU accounting: :func:`machine_busy_cores`, :func:`wait_quiet`, :class:`CpuSampler`;
- statistics: :func:`median`, :func:`percentile`, :func:`latency_stats`, :func:`spread`;
- the routed-call loop the driver workers run (``workers_invoke/driver.py`` on our SDK,
  ``workers_invoke_sdk/sdk_driver.py`` on the official one): :func:`call_loop`;
- table formatting: :func:`fmt_k`, :func:`fmt_f`, :func:`fmt_cell`, :func:`table`;
- subprocesses: :class:`LoggedProcess` (log file, startup polling, stop, cleanup), :func:`stop_process`,
  :func:`reap`;
- the supervisor under test: :class:`Supervisor` (``iii-supervisor start`` on a temporary runtime directory,
  ready once the wanted functions are registered, called over its control socket),
  :func:`supervisor_launcher`, :func:`supervisor_start_args`;
- py-spy: :func:`find_pyspy`, :func:`pyspy_recording`, :func:`collect_pyspy`, :func:`print_process_profile`;
- the JSON result: :func:`write_result` (the common fields, written and announced), and its parts
  :func:`utc_timestamp`, :func:`machine_info`, :func:`args_json`, :func:`git_state`, :func:`write_json`.

The scripts run as ``python benchmarks/bench_*.py``, so this directory is on ``sys.path`` and
``import _common`` finds this file. The invoke driver workers put this directory on ``sys.path``
themselves to use :func:`call_loop`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_BIN = Path(sys.executable).parent
#: A measurement during which other processes + steal took more than this many cores is flagged "noisy".
NOISY_CORES = 0.3


# --- machine noise and CPU accounting -----------------------------------------------------------

_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat() -> tuple[int, int]:
    """(busy jiffies excluding steal, steal jiffies) of the whole machine, from the first line of /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, IndexError, ValueError):
        return 0, 0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq, steal


def machine_busy_cores(interval: float = 0.2) -> float:
    """Cores busy (incl. steal) over ``interval``: between runs, that is everybody else."""
    b0, s0 = _proc_stat()
    t0 = time.perf_counter()
    time.sleep(interval)
    b1, s1 = _proc_stat()
    return ((b1 - b0) + (s1 - s0)) / _HZ / (time.perf_counter() - t0)


def wait_quiet(threshold: float, max_wait: float, interval: float = 0.2) -> tuple[float, float]:
    """Wait (at most ``max_wait`` s) until other processes use < ``threshold`` cores.

    Returns (seconds waited, last busy reading)."""
    t0 = time.perf_counter()
    busy = machine_busy_cores(interval)
    while busy > threshold and time.perf_counter() - t0 < max_wait:
        busy = machine_busy_cores(interval)
    return time.perf_counter() - t0, busy


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


class CpuSampler:
    """CPU seconds of some processes between start() and stop(), plus the machine's steal and the CPU
    of other processes.

    ``children``: count the CPU of each process's reaped children too (psutil ``children_*``).
    ``detail``: stop() also reports per-process system seconds (``sys_s``) and run-queue wait
    (``runq_wait_s``: runnable but not running, from /proc schedstat).
    """

    def __init__(self, procs: dict[str, psutil.Process], *, children: bool = False, detail: bool = False) -> None:
        self.procs = procs
        self.children = children
        self.detail = detail

    def _read(self) -> dict[str, tuple[float, float, dict[str, float]]]:
        """name → (user s, system s, {tid: run-queue wait s})."""
        out = {}
        for name, p in self.procs.items():
            try:
                t = p.cpu_times()
                user, system = t.user, t.system
                if self.children:
                    user += t.children_user
                    system += t.children_system
                out[name] = (user, system, _runq_wait_s(p.pid) if self.detail else {})
            except psutil.Error:
                out[name] = (float("nan"), float("nan"), {})
        return out

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._c0 = self._read()
        self._busy0, self._steal0 = _proc_stat()

    def stop(self, extra: dict[str, float] | None = None) -> dict[str, Any]:
        """``extra``: CPU seconds of other processes of ours measured otherwise (e.g. wrk's rusage)."""
        wall = time.perf_counter() - self._t0
        c1 = self._read()
        busy1, steal1 = _proc_stat()
        c0 = self._c0
        cpu = {k: (c1[k][0] - c0[k][0]) + (c1[k][1] - c0[k][1]) for k in c1}
        cpu.update(extra or {})
        busy = (busy1 - self._busy0) / _HZ
        steal = (steal1 - self._steal0) / _HZ
        ours = sum(v for v in cpu.values() if v == v)
        others = max(0.0, busy - ours)  # cores used by processes other than ours (other sessions, py-spy, …)
        out = {"cpu_s": cpu, "wall_s": wall, "steal_cores": steal / wall, "others_cores": others / wall,
               "noise_cores": (steal + others) / wall}
        if self.detail:
            out["sys_s"] = {k: c1[k][1] - c0[k][1] for k in c1}
            out["runq_wait_s"] = {k: _runq_delta(c0[k][2], c1[k][2]) for k in c1}
        return out


# --- statistics ---------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    """Median of the values that are not NaN (NaN if none)."""
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: list[float], q: float, empty: float = 0.0) -> float:
    """Nearest-rank percentile ``q`` (0-100) of an ascending list; ``empty`` if there is none."""
    if not sorted_values:
        return empty
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


def latency_stats(latencies: list[float], calls: int, elapsed: float, mismatches: int) -> dict[str, Any]:
    """Throughput and latency (ms) of a call loop from its per-call latencies (s)."""
    lat = sorted(latencies)
    return {
        "calls": calls,
        "elapsed_s": elapsed,
        "calls_per_s": calls / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "max_ms": (lat[-1] if lat else 0.0) * 1000,
        "mean_ms": (sum(lat) / len(lat) if lat else 0.0) * 1000,
        "mismatches": mismatches,
    }


def spread(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, float]:
    """For each key: the median over the runs, and ``<key>_min`` / ``<key>_max``."""
    out: dict[str, float] = {}
    for key in keys:
        vals = [r[key] for r in runs]
        out[key] = median(vals)
        out[key + "_min"] = min(vals)
        out[key + "_max"] = max(vals)
    return out


# --- the routed-call loops that run inside the driver workers ------------------------------------


async def call_loop(params: dict[str, Any], trigger: Callable[[dict[str, Any]], Awaitable[Any]],
                    run_all: Callable[[Callable[[], Awaitable[None]], int], Awaitable[None]]) -> dict[str, Any]:
    """One measurement of a driver worker (A): call ``params["target"]`` through the supervisor with
    ``await trigger({"function_id", "payload"})`` until ``count`` calls have completed or ``seconds``
    have passed — one at a time (``mode: "seq"``, per-call latency) or from ``concurrency`` tasks
    each awaiting calls in a loop (``"inflight"``). ``trigger`` and ``run_all(task, n)`` (run ``n``
    copies of ``task`` concurrently, until all end) come from the worker's SDK and event loop, so
    the same loop measures our SDK (trio) and the official one (asyncio).

    Returns :func:`latency_stats` plus ``driver_cpu_s`` (the driver's CPU seconds)."""
    mode = params["mode"]
    payload = params.get("payload", {"x": 1})
    count = int(params["count"])
    seconds = float(params["seconds"])
    req = {"function_id": params["target"], "payload": payload}
    perf = time.perf_counter
    latencies: list[float] = []
    append = latencies.append
    state = {"issued": 0, "done": 0, "mismatches": 0}
    cpu0 = time.process_time()
    start = perf()
    deadline = start + seconds
    if mode == "seq":
        calls = mismatches = 0
        now = start
        while calls < count and now < deadline:
            t0 = perf()
            result = await trigger(req)
            now = perf()
            append(now - t0)
            calls += 1
            if result != payload:
                mismatches += 1
        state.update(done=calls, mismatches=mismatches)
    elif mode == "inflight":
        async def caller() -> None:
            while state["issued"] < count and perf() < deadline:
                state["issued"] += 1
                t0 = perf()
                result = await trigger(req)
                append(perf() - t0)
                state["done"] += 1
                if result != payload:
                    state["mismatches"] += 1

        await run_all(caller, int(params.get("concurrency", 64)))
    else:
        raise ValueError(f"unknown mode {mode!r} (expected 'seq' or 'inflight')")
    stats = latency_stats(latencies, state["done"], perf() - start, state["mismatches"])
    stats["driver_cpu_s"] = time.process_time() - cpu0
    return stats


# --- table formatting ---------------------------------------------------------------------------


def fmt_k(v: float) -> str:
    """1234 → "1.2k", 999 → "999", NaN → "-"."""
    if v != v:
        return "-"
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def fmt_f(v: float, digits: int = 2) -> str:
    return "-" if v != v else f"{v:.{digits}f}"


def fmt_cell(s: dict[str, Any], key: str, fmt: Callable[[float], str], reps: int) -> str:
    """``median [min–max]`` of a :func:`spread` key (just the median for a single rep)."""
    if reps > 1:
        return f"{fmt(s[key])} [{fmt(s[key + '_min'])}–{fmt(s[key + '_max'])}]"
    return fmt(s[key])


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with padded columns."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(headers), sep, *(fmt(r) for r in rows)])


# --- subprocesses -------------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen | None, label: str, timeout: float) -> None:
    """SIGTERM, wait up to ``timeout`` s, SIGKILL. ``label`` names it in the message on timeout."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"bench: {label} did not stop within {timeout:g}s; killing it", file=sys.stderr)
        proc.kill()
        proc.wait(timeout=5)


def reap(procs: dict[str, psutil.Process | int], parent: str) -> None:
    """Wait (3 s each) for processes whose parent was just stopped (it normally stops them); kill the
    ones that outlive it. ``procs``: label → process or pid; ``parent`` names the parent in the message."""
    for label, proc in procs.items():
        try:
            p = psutil.Process(proc) if isinstance(proc, int) else proc
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                p.wait(timeout=3)
        except psutil.TimeoutExpired:
            print(f"bench: {label} outlived {parent}; killing it", file=sys.stderr)
            try:
                p.kill()
            except psutil.Error:
                pass
        except psutil.Error:
            pass


class LoggedProcess:
    """A subprocess (run from the repository root) whose output goes to a log file in its own
    temporary directory. Subclasses build the command and say when it is ready."""

    #: lines shown by :meth:`log_tail`, and what it says when there is no log
    log_lines = 30
    no_log = "(no log)"

    def __init__(self, tmp_prefix: str, log_name: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix))
        self.log_path = self.tmp / log_name
        self.proc: subprocess.Popen | None = None
        self._log = None

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env=env)

    def wait_started(self, probe: Callable[[], Any], timeout: float, *, label: str,
                     retry_on: tuple[type[BaseException], ...], not_ready: Callable[[Any], str]) -> None:
        """Call ``probe`` every 50 ms until it returns True; raise if the process exits first or
        ``timeout`` s pass. Any other value ``probe`` returns except None, and any ``retry_on``
        exception it raises, is kept as the last failure for ``not_ready(last)``, the timeout message."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{label} exited with {self.proc.returncode} during startup\n{self.log_tail()}")
            try:
                state = probe()
            except retry_on as exc:
                state = exc
            if state is True:
                return
            if state is not None:
                last = state
            time.sleep(0.05)
        raise RuntimeError(f"{not_ready(last)}\n{self.log_tail()}")

    def log_tail(self, n: int | None = None) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return self.no_log
        return "\n".join("  | " + line for line in lines[-(n or self.log_lines):])

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


# --- the supervisor under test ------------------------------------------------------------------


def supervisor_launcher() -> list[str]:
    """The command that runs the ``iii-supervisor`` CLI: the venv's console script, else ``python -m``."""
    exe = VENV_BIN / "iii-supervisor"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "iii_supervisor.cli"]


def cli_start_supports(flag: str) -> bool:
    """Whether ``iii-supervisor start`` knows ``flag`` (the CLI grows options over time)."""
    from iii_supervisor.cli import build_parser

    parser = build_parser()
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]  # noqa: SLF001
        start = action.choices.get("start")  # type: ignore[union-attr]
        if start is not None:
            return any(flag in a.option_strings for a in start._actions)  # noqa: SLF001
    return False


def supervisor_start_args(workers_dir: Path, runtime_dir: Path, data_dir: Path, *,
                          log_level: str = "warning") -> list[str]:
    """``start WORKERS_DIR --runtime-dir DIR --data-dir DIR --log-level LEVEL`` plus ``--http-port 0``
    and ``--stream-port 0`` where the CLI has them: a benchmark's supervisor has its own directories
    and free ports, so it never clashes with another supervisor (the data directory is locked by its
    pid; the default ports may be taken)."""
    args = ["start", str(workers_dir), "--runtime-dir", str(runtime_dir), "--data-dir", str(data_dir),
            "--log-level", log_level]
    for flag in ("--http-port", "--stream-port"):
        if cli_start_supports(flag):
            args += [flag, "0"]
    return args


class Supervisor(LoggedProcess):
    """A real ``iii-supervisor start WORKERS_DIR`` subprocess on a temporary runtime directory, ready once
    ``functions`` are all registered, driven over its control socket (what ``iii-supervisor invoke`` does).

    ``extra_args`` are appended to the start command; ``env`` replaces the environment. Subclasses may
    override :meth:`launcher` (e.g. to run the CLI under a profiler)."""

    log_lines = 40
    no_log = "(no supervisor log)"

    def __init__(self, workers_dir: Path, functions: Collection[str], *, tmp_prefix: str = "iii-b",
                 extra_args: Sequence[str] = (), env: dict[str, str] | None = None) -> None:
        super().__init__(tmp_prefix, "supervisor.log")  # short prefix: the control socket path has a length limit
        self.workers_dir = workers_dir
        self.functions = set(functions)
        self.extra_args = list(extra_args)
        self.env = env
        self.runtime_dir = self.tmp
        self.data_dir = self.tmp / "data"
        #: worker name → pid of the workers it spawned (read when it is ready)
        self.worker_pids: dict[str, int] = {}

    @property
    def control_socket(self) -> Path:
        return self.runtime_dir / "control.sock"

    def launcher(self) -> list[str]:
        return supervisor_launcher()

    def start(self, timeout: float = 30.0) -> None:
        self.spawn([*self.launcher(), *supervisor_start_args(self.workers_dir, self.runtime_dir, self.data_dir),
                    *self.extra_args],
                   env=self.env)

        def ready() -> bool | None:
            if not self.control_socket.exists():
                return None
            have = {f["function_id"] for f in self.call("engine::functions::list", timeout=5)["functions"]}
            if not self.functions <= have:
                return None
            workers = self.call("engine::workers::list", timeout=5)["workers"]
            self.worker_pids = {w["name"]: w["pid"] for w in workers if w["pid"]}
            return True

        self.wait_started(ready, timeout, label="the supervisor", retry_on=(Exception,),  # not ready yet
                          not_ready=lambda last: f"the supervisor was not ready within {timeout:g}s "
                                                 f"(last error: {last!r})")

    def call(self, function_id: str, data: Any = None, *, timeout: float = 60.0) -> Any:
        from iii_supervisor.control import ControlClient  # here: driver workers import this file too

        with ControlClient(self.control_socket, timeout=timeout) as client:
            return client.call(function_id, data, timeout_ms=int(timeout * 1000))

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait, SIGKILL on timeout; then make sure the workers are gone too."""
        stop_process(self.proc, "supervisor", timeout)
        reap({f"worker {name} (pid {pid})": pid for name, pid in self.worker_pids.items()}, "the supervisor")
        self.close_log()


# --- py-spy -------------------------------------------------------------------------------------


def find_pyspy() -> str | None:
    """The py-spy executable (the venv's first), or None after saying how to install it."""
    pyspy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if pyspy is None:
        print("bench: py-spy not found (install it with: .venv/bin/pip install py-spy); skipping the profile",
              file=sys.stderr)
    return pyspy


@contextlib.contextmanager
def pyspy_recording(pyspy: str, pids: dict[str, int], raw_path: Callable[[str], Path], duration: int, rate: int,
                    extra: list[str] | tuple[str, ...] = ()) -> Iterator[dict[str, tuple[Path, subprocess.Popen]]]:
    """``py-spy record`` (raw collapsed stacks) of each process for ``duration`` s, started before
    the body runs (with half a second to attach); yields name → (raw file, py-spy process).
    py-spy processes still running when the block exits are killed."""
    spies: dict[str, tuple[Path, subprocess.Popen]] = {}
    try:
        for name, pid in pids.items():
            raw = raw_path(name)
            # no --idle: sleeping threads are not sampled
            spies[name] = (raw, subprocess.Popen(
                [pyspy, "record", "--pid", str(pid), "--duration", str(duration), "--rate", str(rate),
                 "--format", "raw", "--output", str(raw), "--nonblocking", *extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        time.sleep(0.5)  # let py-spy attach
        yield spies
    finally:
        for _, spy in spies.values():
            if spy.poll() is None:
                spy.kill()
                spy.wait()


def parse_collapsed(path: Path) -> tuple[int, collections.Counter, collections.Counter]:
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
        frames = stack.split(";")
        while frames and frames[0].startswith(("process ", "thread ")):  # --subprocesses / --threads
            del frames[0]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    return total, own, incl


#: this checkout's root, as profiles print it (stripped from their paths)
_REPO = str(Path(__file__).resolve().parent.parent) + "/"


def short_frame(frame: str) -> str:
    """"func (path/to/file.py:123)" → "func (file.py:123)" with site-packages paths shortened."""
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    for marker in ("site-packages/", "/lib/python3.11/", _REPO):
        if marker in loc:
            loc = loc.split(marker, 1)[1]
            break
    return f"{name} ({loc})" if loc else name


def _module_of(frame: str) -> str:
    m = re.search(r"\((.*?):\d+\)$", frame)
    path = m.group(1) if m else frame
    for marker, prefix in (("site-packages/", ""), ("/lib/python3.11/", "stdlib/"), (_REPO, "")):
        if marker in path:
            return prefix + path.split(marker, 1)[1]
    return path


def _by_module(own: collections.Counter) -> collections.Counter:
    """Own samples per source file: robust to py-spy's truncated coroutine stacks."""
    out: collections.Counter = collections.Counter()
    for frame, count in own.items():
        out[_module_of(frame)] += count
    return out


def collect_pyspy(spies: dict[str, tuple[Path, subprocess.Popen]], timeout: float, n_self: int, n_incl: int,
                  *, n_modules: int = 0) -> dict[str, Any]:
    """Wait for each py-spy and summarize its stacks: name → {samples, [self_by_module,] self_top,
    inclusive_top, raw} (percentages of the process's samples), or {error} if it recorded nothing.
    ``n_modules``: how many source files in ``self_by_module`` (0: no such list)."""
    out: dict[str, Any] = {}
    for name, (raw, spy) in spies.items():
        try:
            _, err = spy.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        total, own, incl = parse_collapsed(raw)
        if total == 0:
            out[name] = {"error": (err or b"").decode(errors="replace")[-500:]}
            continue
        prof: dict[str, Any] = {"samples": total}
        if n_modules:
            prof["self_by_module"] = [[m, round(100 * c / total, 1)] for m, c in _by_module(own).most_common(n_modules)]
        prof["self_top"] = [[short_frame(f), round(100 * c / total, 1)] for f, c in own.most_common(n_self)]
        prof["inclusive_top"] = [[short_frame(f), round(100 * c / total, 1)] for f, c in incl.most_common(n_incl)]
        prof["raw"] = str(raw)
        out[name] = prof
    return out


def print_process_profile(name: str, prof: dict[str, Any], n_self: int, n_incl: int) -> None:
    """Print one process's entry of :func:`collect_pyspy`."""
    if "error" in prof:
        print(f"\n{name}: py-spy failed: {prof['error']}")
        return
    if "self_by_module" in prof:
        print(f"\n{name} ({prof['samples']} samples) — self, by source file:")
        for module, pct in prof["self_by_module"]:
            print(f"  {pct:5.1f}%  {module}")
        print(f"{name} — self, by function line:")
    else:
        print(f"\n{name} ({prof['samples']} samples) — self:")
    for frame, pct in prof["self_top"][:n_self]:
        print(f"  {pct:5.1f}%  {frame}")
    print(f"{name} — inclusive:")
    for frame, pct in prof["inclusive_top"][:n_incl]:
        print(f"  {pct:5.1f}%  {frame}")


# --- the JSON result ----------------------------------------------------------------------------


def utc_timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def machine_info(**extra: Any) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(), **extra}


def args_json(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def git_state() -> dict[str, Any]:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD"), "dirty_files": git("status", "--porcelain").splitlines()}


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")


def write_result(path: Path, benchmark: str, args: argparse.Namespace, t_start: float, *,
                 machine: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """Write a benchmark's JSON result: its name, time, arguments, machine, git state, ``fields`` and
    the run's duration since ``t_start`` (``time.perf_counter()``); print where it went."""
    result = {"benchmark": benchmark, "timestamp": utc_timestamp(), "args": args_json(args),
              "machine": machine_info(**(machine or {})), "git": git_state(), **fields,
              "duration_s": time.perf_counter() - t_start}
    write_json(path, result)
    print(f"results: {path}  (run took {result['duration_s']:.1f} s)")
    return result
