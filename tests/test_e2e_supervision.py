"""End to end: production supervision — per-worker settings, crash-loop limits (FATAL), and the
stop/start/restart commands. Real supervisor, real worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import orjson
import trio

from supervisor_harness import Supervisor, open_control, pid_alive, run_cli, write_worker

ENV = """
import os
iii.register_function("target.env", lambda names: {n: os.environ.get(n) for n in names})
iii.register_function("target.cwd", lambda _d: os.getcwd())
"""

#: a program that is not in the workers directory and does not use the SDK: it prints the
#: III_* variables it got and then waits to be stopped
EXTERNAL = ("import os, sys, time; print('external', os.environ['III_WORKER_NAME'], "
            "bool(os.environ.get('III_WORKER_TOKEN')), sys.argv[1:], flush=True); time.sleep(600)")


async def wait_state(sup: Supervisor, name: str, state: str) -> dict:
    while (worker := (await sup.workers())[name])["state"] != state:
        await trio.sleep(0.05)
    return worker


async def test_per_worker_command_env_cwd_restart_and_enabled(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    (tmp_path / "elsewhere").mkdir()
    write_worker(workers, "target", ENV)
    write_worker(workers, "once", "print('once ran', flush=True)\niii.shutdown()\n")
    write_worker(workers, "off", 'iii.register_function("off.ping", lambda _d: "pong")\n')
    config = tmp_path / "config.toml"
    config.write_text(f"""
[workers.target]
env = {{ GREETING = "hello", PATH_EXTRA = "x" }}
cwd = "../elsewhere"

[workers.external]
command = {orjson.dumps([sys.executable, "-c", EXTERNAL, "--flag", "two words"]).decode()}
grace_period = 1.0

[workers.once]
restart = "never"

[workers.off]
enabled = false
""")
    with trio.fail_after(40):
        async with Supervisor(workers, "--config", str(config)) as sup:
            await sup.start(functions=("target.cwd",))
            env = await sup.call("target.env", ["GREETING", "PATH_EXTRA", "III_WORKER_NAME"])
            assert env == {"GREETING": "hello", "PATH_EXTRA": "x", "III_WORKER_NAME": "target"}
            assert await sup.call("target.cwd") == str(tmp_path / "elsewhere")
            # a command outside the directory, with arguments, with the same III_* environment
            await sup.wait_for_output("external external True ['--flag', 'two words']")
            ext = await wait_state(sup, "external", "starting")  # never registers: stays "starting"
            assert ext["pid"] is not None
            # restart = "never": ran once, exited 0, stays stopped
            once = await wait_state(sup, "once", "stopped")
            assert once["restarts"] == 0 and once["last_exit"] == 0 and once["pid"] is None
            assert sup.output().count("once ran") == 1
            # enabled = false: not started until asked
            off = (await sup.workers())["off"]
            assert off["state"] == "stopped" and off["pid"] is None
            started = await run_cli(sup, "start", "off")
            assert started.returncode == 0 and b"starting off" in started.stdout, started
            await wait_state(sup, "off", "running")
            while "off.ping" not in await sup.function_ids():
                await trio.sleep(0.05)
            assert await sup.call("off.ping") == "pong"
            # stop keeps it stopped (no restart), and its functions are gone
            stopped = await run_cli(sup, "stop", "off")
            assert stopped.returncode == 0 and b"stopping off" in stopped.stdout
            off = await wait_state(sup, "off", "stopped")
            assert off["restarts"] == 0 and "off.ping" not in await sup.function_ids()
            await trio.sleep(0.5)
            assert (await sup.workers())["off"]["state"] == "stopped"
            unknown = await run_cli(sup, "stop", "ghost")
            assert unknown.returncode == 1 and b"worker_not_found" in unknown.stderr


async def test_on_failure_restarts_only_failures(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    # exits 0 the first time it finds a marker file, 1 before that
    write_worker(workers, "flaky", f"""
import os, sys
marker = {str(tmp_path / "marker")!r}
if os.path.exists(marker):
    iii.shutdown()
    sys.exit(0)
open(marker, "w").close()
iii.shutdown()  # (a main code that ends keeps serving: to exit from it, close the connection first)
sys.exit(1)
""")
    config = tmp_path / "config.toml"
    config.write_text('[restart]\ninitial_delay = 0.1\n\n[workers.flaky]\nrestart = "on-failure"\n')
    with trio.fail_after(30):
        async with Supervisor(workers, "--config", str(config)) as sup:
            await sup.start()
            flaky = await wait_state(sup, "flaky", "stopped")
            assert flaky["restarts"] == 1 and flaky["last_exit"] == 0
            assert "worker flaky exited with code 0; not restarted (restart = 'on-failure')" in sup.output()


async def test_a_crash_loop_becomes_fatal_and_restart_clears_it(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    write_worker(workers, "crashy", "raise SystemExit(3)\n", preamble=False)
    write_worker(workers, "steady", 'iii.register_function("steady.ping", lambda _d: "pong")\n')
    config = tmp_path / "config.toml"
    config.write_text("[restart]\ninitial_delay = 0.1\nfactor = 1.0\nmax_restarts = 3\nrestart_window = 30.0\n")
    with trio.fail_after(40):
        async with Supervisor(workers, "--config", str(config)) as sup:
            await sup.start(functions=("steady.ping",))
            crashy = await wait_state(sup, "crashy", "fatal")
            assert crashy["restarts"] == 3 and crashy["last_exit"] == 3 and crashy["pid"] is None
            output = sup.output()
            assert output.count("FATAL: more than 3 restarts within 30s") == 1, output
            status = await run_cli(sup, "status")
            row = next(line for line in status.stdout.decode().splitlines() if line.startswith("crashy"))
            assert " fatal " in row
            await trio.sleep(0.5)  # no more restarts while FATAL
            assert (await sup.workers())["crashy"]["restarts"] == 3
            assert await sup.call("steady.ping") == "pong"  # the others are untouched
            # restart clears FATAL: it runs again, and (still crashing) becomes FATAL again
            restarted = await run_cli(sup, "restart", "crashy")
            assert restarted.returncode == 0
            while sup.output().count("FATAL: more than 3 restarts") < 2:
                await trio.sleep(0.05)
            crashy = await wait_state(sup, "crashy", "fatal")
            assert crashy["restarts"] == 6
            assert "worker crashy: FATAL cleared on request" in sup.output()
            assert (await sup.workers())["steady"]["restarts"] == 0


async def test_a_worker_section_without_a_program_or_command_is_refused(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    config = tmp_path / "config.toml"
    config.write_text('[workers.ghost]\nrestart = "never"\n')
    sup = Supervisor(workers, "--config", str(config))
    try:
        with trio.fail_after(20):
            bad = await run_cli(sup, "start", str(workers), "--config", str(config))
            assert bad.returncode == 78
            assert b"workers.ghost: there is no worker program 'ghost'" in bad.stderr
            config.write_text('[workers.api]\nrestart = "sometimes"\n')
            bad = await run_cli(sup, "start", str(workers), "--config", str(config))
            assert bad.returncode == 78 and b"workers.api.restart must be in" in bad.stderr
    finally:
        await sup.aclose()


def _tree(pid: int) -> set[int]:
    import psutil

    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _in_sessions(sessions: set[int]) -> set[int]:
    """Every live process (zombies excluded) whose session is one of ``sessions``."""
    import psutil

    found = set()
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(proc.pid) in sessions:
                found.add(proc.pid)
        except (ProcessLookupError, psutil.Error, OSError):
            pass
    return found


async def test_supervisor_kill_9_leaves_no_process_behind(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    # an SDK worker busy in a long sync handler, with a child of its own
    write_worker(workers, "busy", """
import subprocess, time
child = subprocess.Popen(["sleep", "600"])
def sleepy(_data):
    time.sleep(600)
iii.register_function("busy.sleepy", sleepy)
iii.register_function("busy.child", lambda _d: child.pid)
""")
    # a program that ignores its socket and SIGTERM, with a child that ignores SIGTERM too
    write_worker(workers, "deaf", """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
deaf_child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
subprocess.Popen([sys.executable, "-c", deaf_child])
print("deaf ready", flush=True)
time.sleep(600)
""", preamble=False)
    with trio.fail_after(40):
        async with Supervisor(workers) as sup:
            await sup.start(functions=("busy.child",))
            await sup.wait_for_output("deaf ready")
            assert sup.proc is not None
            async with trio.open_nursery() as nursery:
                async def call_sleepy() -> None:
                    with contextlib.suppress(Exception):  # the supervisor dies under it
                        await sup.call("busy.sleepy")
                nursery.start_soon(call_sleepy)
                await trio.sleep(0.3)
                worker_pids = {w["pid"] for w in (await sup.workers()).values()}
                tree = _tree(sup.proc.pid)  # workers, their children, the reaper
                assert len(tree) >= 5, tree  # 2 workers + 2 children + the reaper
                sup.proc.kill()
                await sup.proc.wait()
                killed_at = time.monotonic()
                while left := {p for p in tree if pid_alive(p)} | _in_sessions(worker_pids):
                    assert time.monotonic() - killed_at < 1.5, f"still alive after 1.5 s: {sorted(left)}"
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
            assert "reaper: the supervisor is gone; stopping 2 worker group(s)" in sup.output()


async def test_start_readiness_and_start_timeout(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    # registers, then its main code goes on (a loop of its own) without saying it is ready
    write_worker(workers, "slowpoke", """
import time
iii.register_function("slowpoke.f", lambda _d: 1)
print("slowpoke registered", flush=True)
time.sleep(600)
""")
    # the same, but it says so
    write_worker(workers, "looper", """
import time
iii.register_function("looper.f", lambda _d: 1)
iii.ready()
time.sleep(600)
""")
    # never connects at all
    write_worker(workers, "mute", "import time\ntime.sleep(600)\n", preamble=False)
    # like slowpoke, with no start timeout: stays "starting"
    write_worker(workers, "patient", "import time\niii.register_function('patient.f', lambda _d: 1)\ntime.sleep(600)\n")
    config = tmp_path / "config.toml"
    config.write_text("[supervisor]\nstart_timeout = 1.5\n\n[restart]\ninitial_delay = 20.0\n\n"
                      "[workers.mute]\nstart_timeout = 1.0\n\n[workers.patient]\nstart_timeout = 0\n")
    with trio.fail_after(30):
        async with Supervisor(workers, "--config", str(config)) as sup:
            await sup.start()
            await wait_state(sup, "looper", "running")
            await sup.wait_for_output("worker mute did not finish starting within 1s (still connecting")
            await sup.wait_for_output("worker slowpoke did not finish starting within 1.5s (still registering")
            slowpoke = await wait_state(sup, "slowpoke", "backoff")
            assert slowpoke["restarts"] == 1
            looper = (await sup.workers())["looper"]
            assert looper["state"] == "running" and looper["restarts"] == 0
            patient = (await sup.workers())["patient"]  # connected and registered, never said ready
            assert patient["state"] == "starting" and patient["restarts"] == 0 and "patient.f" in patient["functions"]


async def test_hung_workers_are_restarted(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    write_worker(workers, "blocker", """
import os, time
async def block(_data):
    time.sleep(600)  # blocks the worker's event loop: no more pongs
iii.register_function("blocker.block", block)
iii.register_function("blocker.pid", lambda _d: os.getpid())
""")
    write_worker(workers, "sleeper", 'iii.register_function("sleeper.pid", lambda _d: __import__("os").getpid())\n')
    write_worker(workers, "healthy", 'iii.register_function("healthy.pid", lambda _d: __import__("os").getpid())\n')
    config = tmp_path / "config.toml"
    config.write_text("[supervisor]\nping_interval = 0.3\nping_timeout = 2.0\ngrace_period = 1.0\n\n"
                      "[restart]\ninitial_delay = 0.2\n")
    with trio.fail_after(40):
        async with Supervisor(workers, "--config", str(config)) as sup:
            await sup.start(expect_workers=3)
            healthy_pid = await sup.call("healthy.pid")
            sleeper_pid = await sup.call("sleeper.pid")
            os.kill(sleeper_pid, signal.SIGSTOP)
            async with open_control(sup.control_socket) as control:
                blocked = await control.call_raw("blocker.block", timeout_ms=60_000)
            # the call in flight to the hung worker fails when it is restarted
            assert blocked.error is not None and blocked.error.code == "invocation_stopped", blocked
            await sup.wait_for_output("worker blocker did not answer a ping within 2s")
            await sup.wait_for_output("worker sleeper did not answer a ping within 2s")
            workers_now = await sup.wait_running(3, restarts=2)
            assert workers_now["sleeper"]["pid"] != sleeper_pid and workers_now["sleeper"]["restarts"] == 1
            assert workers_now["blocker"]["restarts"] == 1
            assert workers_now["healthy"]["restarts"] == 0 and await sup.call("healthy.pid") == healthy_pid
            assert not pid_alive(sleeper_pid)


async def test_a_bloated_worker_is_restarted_at_max_rss(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    write_worker(workers, "leaky", """
hoard = []
def leak(mib):
    hoard.append(bytearray(mib * 1024 * 1024))  # touched (zeroed): resident
    return len(hoard)
iii.register_function("leaky.leak", leak)
""")
    write_worker(workers, "lean", 'iii.register_function("lean.ping", lambda _d: "pong")\n')
    config = tmp_path / "config.toml"
    config.write_text('[supervisor]\nsample_interval = 0.2\n\n[restart]\ninitial_delay = 0.2\n\n'
                      '[workers.leaky]\nmax_rss = "150MiB"\n\n[workers.lean]\nmax_rss = "150MiB"\n')
    with trio.fail_after(40):
        async with Supervisor(workers, "--config", str(config)) as sup:
            await sup.start(expect_workers=2)
            while (await sup.workers())["leaky"]["rss_bytes"] is None:
                await trio.sleep(0.05)
            before = (await sup.workers())["leaky"]
            assert before["rss_bytes"] < 150 * 2**20 and before["max_rss"] == 150 * 2**20
            await sup.call("leaky.leak", 200)
            await sup.wait_for_output("worker leaky: RSS ")
            line = next(x for x in sup.output().splitlines() if "worker leaky: RSS " in x)
            assert "is above max_rss 150.0MiB (2 samples in a row); restarting it" in line, line
            workers_now = await sup.wait_running(2, restarts=1)
            assert workers_now["leaky"]["pid"] != before["pid"]
            assert workers_now["lean"]["restarts"] == 0
            status = await run_cli(sup, "status")
            header, *rows = status.stdout.decode().splitlines()
            assert header.split()[-3:] == ["CPU%", "IN-FLIGHT", "LAST-EXIT"]
            leaky_row = next(r for r in rows if r.startswith("leaky")).split()
            assert leaky_row[-1] == "SIGTERM"  # restarted gracefully


PID_WORKER = 'import os\niii.register_function("{name}.pid", lambda _d: os.getpid())\n'


async def test_reload_adds_removes_and_restarts_exactly_the_right_workers(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    for name in ("gone", "edited", "tuned", "steady"):
        write_worker(workers, name, PID_WORKER.format(name=name))
    write_worker(workers, "tuned", PID_WORKER.format(name="tuned") +
                 'iii.register_function("tuned.env", lambda _d: os.environ.get("LEVEL"))\n')
    config = tmp_path / "config.toml"
    config.write_text('[workers.tuned]\nenv = { LEVEL = "1" }\n')
    with trio.fail_after(40):
        async with Supervisor(workers, "--config", str(config)) as sup:
            await sup.start(expect_workers=4)
            before = {n: w["pid"] for n, w in (await sup.workers()).items()}
            (workers / "gone.py").unlink()
            write_worker(workers, "fresh", PID_WORKER.format(name="fresh"))
            write_worker(workers, "edited", PID_WORKER.format(name="edited") + "# edited\n")
            config.write_text('[workers.tuned]\nenv = { LEVEL = "2" }\n')
            assert sup.proc is not None
            sup.proc.send_signal(signal.SIGHUP)
            await sup.wait_for_output("reloaded from")
            line = next(x for x in sup.output().splitlines() if "reloaded from" in x)
            assert "added fresh; removed gone; restarted edited, tuned; 1 unchanged" in line, line
            while set(await sup.workers()) != {"fresh", "edited", "tuned", "steady"}:
                await trio.sleep(0.05)
            after = await sup.wait_running(4)
            assert after["steady"]["pid"] == before["steady"] and after["steady"]["restarts"] == 0
            assert after["edited"]["pid"] != before["edited"] and after["tuned"]["pid"] != before["tuned"]
            assert not pid_alive(before["gone"])
            while "tuned.env" not in await sup.function_ids():
                await trio.sleep(0.05)
            assert await sup.call("tuned.env") == "2"
            assert "gone.pid" not in await sup.function_ids()
            # a bad config is refused with a clear message, and nothing changes
            config.write_text('[workers.tuned]\nrestart = "sometimes"\n')
            write_worker(workers, "late", PID_WORKER.format(name="late"))
            refused = await run_cli(sup, "reload")
            assert refused.returncode == 78  # EX_CONFIG, as for a bad config at start
            assert b"reload refused, nothing changed" in refused.stderr
            assert b"workers.tuned.restart must be in" in refused.stderr
            unchanged = await sup.workers()
            assert {n: w["pid"] for n, w in unchanged.items()} == {n: w["pid"] for n, w in after.items()}
            # fixed: the CLI reload applies it and says what it did
            config.write_text('[workers.tuned]\nenv = { LEVEL = "2" }\n')
            applied = await run_cli(sup, "reload", "--json")
            assert applied.returncode == 0, applied.stderr
            assert orjson.loads(applied.stdout) == {"added": ["late"], "removed": [], "restarted": [],
                                                    "unchanged": ["edited", "fresh", "steady", "tuned"]}
            await sup.wait_running(5)
