"""The systemd unit in systemd/: it verifies, its sandbox scores at most 3.0 ("OK"), and its
system-call filter and address families allow everything a real supervisor run uses (traced
with strace: start, a worker, a call, an HTTP request, the store's writes, SIGTERM).

(The machine running the tests has no systemd as PID 1, so the unit itself cannot be started
here; the filter check is what can be checked without it.)"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import psutil
import pytest
import trio

from supervisor_harness import open_control, unwrap, write_worker

UNIT = Path(__file__).parent.parent / "systemd" / "iii-supervisor.service"
ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (.ci/run installs it)")


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def local_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's executable (verify checks it exists)."""
    exe = Path(sys.executable).parent / "iii-supervisor"
    text = UNIT.read_text().replace("/opt/iii/.venv/bin/iii-supervisor", str(exe))
    path = tmp_path / "iii-supervisor.service"
    path.write_text(text)
    return path


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


def test_the_unit_verifies(tmp_path: Path) -> None:
    result = analyze("verify", str(local_copy(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # no warnings either


def test_the_unit_has_what_the_design_asks_for() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["KillMode"] == ["mixed"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["WatchdogSec"] and s["RuntimeDirectory"] == ["iii"] and s["StateDirectory"] == ["iii"]
    assert s["RestartPreventExitStatus"] == ["78"]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]


def test_the_sandbox_scores_at_most_3(tmp_path: Path) -> None:
    result = analyze("security", "--offline=true", str(local_copy(tmp_path)))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 3.0, result.stdout


def _expand(group: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a systemd syscall group, nested groups expanded."""
    seen = set() if seen is None else seen
    calls: set[str] = set()
    for line in analyze("syscall-filter", group).stdout.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if item.startswith("@"):
            if item not in seen:
                seen.add(item)
                calls |= _expand(item, seen)
        else:
            calls.add(item)
    return calls


def allowed_syscalls() -> set[str]:
    allowed: set[str] = set()
    denied: set[str] = set()
    for value in unit_settings()["SystemCallFilter"]:
        negate = value.startswith("~")
        names = value.lstrip("~").split()
        calls = set().union(*(_expand(n) if n.startswith("@") else {n} for n in names))
        (denied if negate else allowed).update(calls)
    return allowed - denied


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
async def test_the_filter_allows_every_syscall_a_real_run_makes(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    write_worker(workers, "web", """
import os
def hello(req):
    return {"status_code": 200, "body": {"pid": os.getpid()}}
iii.register_function("web.hello", hello)
iii.register_trigger({"type": "http", "function_id": "web.hello",
                      "config": {"api_path": "/hello", "http_method": "GET"}})
iii.register_function("web.enqueue", lambda d: iii.trigger({"function_id": "enqueue", "payload": d}))
""")
    runtime = Path(tempfile.mkdtemp(prefix="iii-sd"))
    trace = tmp_path / "trace.txt"
    port = _free_port()
    args = ["strace", "-f", "-qq", "-o", str(trace), "--", sys.executable, "-m", "iii_supervisor", "start",
            str(workers), "--runtime-dir", str(runtime), "--http-port", str(port), "--data-dir", str(tmp_path / "data")]
    proc = await trio.lowlevel.open_process(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(60):
            while True:  # traced, everything is slower: wait for the function, not for a log line
                try:
                    async with open_control(runtime / "control.sock") as control:
                        functions = unwrap(await control.call_raw("engine::functions::list"))["functions"]
                    if any(f["function_id"] == "web.enqueue" for f in functions):
                        break
                except OSError:
                    pass
                await trio.sleep(0.2)
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://127.0.0.1:{port}/hello")
            assert response.status_code == 200
            async with open_control(runtime / "control.sock") as control:
                unwrap(await control.call_raw("web.enqueue", {"topic": "t", "data": {"n": 1}}))
            supervisor = psutil.Process(proc.pid).children()[0]  # strace's child
            os.kill(supervisor.pid, signal.SIGTERM)
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        shutil.rmtree(runtime, ignore_errors=True)
    text = trace.read_text(errors="replace")
    used = set(re.findall(r"^\d+\s+(?:<\.\.\. )?([a-z_0-9]+)\(", text, re.M))
    assert {"socket", "bind", "execve", "pidfd_open"} <= used, sorted(used)  # the trace is real
    refused = used - allowed_syscalls()
    if os.geteuid() == 0:
        # SQLite chowns its journal files to the database's owner only when it runs as root (its
        # robust_fchown); the unit runs as User=iii, and the call's EPERM is ignored anyway
        refused.discard("fchown")
    assert not refused, f"the unit's SystemCallFilter refuses syscalls a real run makes: {sorted(refused)}"
    families = set(re.findall(r"socket(?:pair)?\((AF_[A-Z0-9]+)", text))
    assert families <= {"AF_UNIX", "AF_INET", "AF_INET6"}, families
    data_files = os.listdir(tmp_path / "data")
    assert data_files, "the store wrote nothing to the data dir"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
