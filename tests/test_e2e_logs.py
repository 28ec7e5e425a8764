"""Logs end to end: real supervisor, real worker processes, the real CLI.

One supervisor runs every scenario (they use different workers and functions), to keep the
suite short.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from supervisor_harness import Supervisor, write_worker

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"

WORKERS = {
    "api": """
        from iii_supervisor import logger
        def hello(req):
            logger.info("hello from api", {"n": 1})
            print("printed by api")
            result = iii.trigger({"function_id": "backend.work", "payload": {}})
            return {"status_code": 200, "body": result}
        iii.register_function("api.hello", hello)
        iii.register_trigger({"type": "http", "function_id": "api.hello",
                              "config": {"api_path": "/hello", "http_method": "POST"}})
        def say(data):
            logger.info(data["text"])
            return None
        iii.register_function("api.say", say)
        def publish(data):
            logger.info("publishing")
            iii.trigger({"function_id": "enqueue", "payload": {"topic": "t.trace", "data": {}}})
        iii.register_function("api.publish", publish)
    """,
    "queued": """
        from iii_supervisor import logger
        def on_message(data):
            logger.info("got the queued message")
        iii.register_function("queued.on_message", on_message)
        iii.register_trigger({"type": "queue", "function_id": "queued.on_message", "config": {"topic": "t.trace"}})
    """,
    "backend": """
        import sys
        from iii_supervisor import Logger
        log = Logger(service_name="backend")
        async def work(data):
            log.warn("backend working")
            print("backend stderr line", file=sys.stderr)
            return {"ok": True}
        iii.register_function("backend.work", work)
    """,
    "alerts": """
        from iii_supervisor import logger
        def on_warn(entry):
            print(f"ALERT {entry['level']} {entry['message']}")
            logger.error("alert raised for " + entry["message"])  # must not come back here
            iii.trigger({"function_id": "backend.work", "payload": {}})  # nor what this logs
        iii.register_function("alerts.on_warn", on_warn)
        iii.register_trigger({"type": "log", "function_id": "alerts.on_warn", "config": {"level": "warn"}})
    """,
    "slow": """
        import trio
        async def on_any(entry):
            await trio.sleep(0.5)
        iii.register_function("slow.on_any", on_any)
        iii.register_trigger({"type": "log", "function_id": "slow.on_any", "config": {}})
    """,
    "busy": """
        import time
        from iii_supervisor import logger
        def run(data):
            start = time.monotonic()
            for i in range(data["n"]):
                logger.info(f"busy {i}")
            return time.monotonic() - start
        iii.register_function("busy.run", run)
    """,
}


async def entries(sup: Supervisor, **query: Any) -> list[dict[str, Any]]:
    return (await sup.call("engine::logs::list", {"limit": 10_000, **query}))["entries"]


async def wait_for(sup: Supervisor, predicate: Any, **query: Any) -> list[dict[str, Any]]:
    while True:
        found = [e for e in await entries(sup, **query) if predicate(e)]
        if found:
            return found
        await trio.sleep(0.05)


async def test_logs_end_to_end(tmp_path: Path) -> None:
    for name, body in WORKERS.items():
        write_worker(tmp_path, name, body)
    functions = ("api.hello", "api.say", "api.publish", "backend.work", "alerts.on_warn", "slow.on_any", "busy.run",
                 "queued.on_message")
    async with Supervisor(tmp_path) as sup:
        with trio.fail_after(60):
            await sup.start(expect_workers=len(WORKERS), functions=functions)
            await trio.sleep(0.2)  # the log triggers are registered just after the functions

            # HTTP with a traceparent → api's handler (logger + print) → iii.trigger → backend
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sup.http_port}", trust_env=False) as client:
                response = await client.post("/hello", json={}, headers={"traceparent": TRACEPARENT})
            assert response.status_code == 200 and response.json() == {"ok": True}
            traced = await wait_for(sup, lambda e: e["source"] == "stderr", trace_id=TRACE)
            traced = await entries(sup, trace_id=TRACE)
            by_message = {e["message"]: e for e in traced}
            sdk = by_message["hello from api"]
            assert (sdk["worker_name"], sdk["function_name"], sdk["level"], sdk["data"]) == (
                "api", "api.hello", "info", {"n": 1})
            printed = by_message["printed by api"]
            assert (printed["worker_name"], printed["function_name"], printed["source"]) == ("api", "api.hello",
                                                                                          "stdout")
            second = by_message["backend working"]  # the second worker continues the trace
            assert (second["worker_name"], second["function_name"], second["level"]) == ("backend", "backend.work",
                                                                                       "warn")
            assert second["span_id"] != sdk["span_id"]
            stderr = by_message["backend stderr line"]
            assert (stderr["level"], stderr["function_name"]) == ("error", "backend.work")
            assert "\x1e" not in sup.output() and "backend[" in sup.output()  # tags never reach the output

            # a queue delivery continues the publisher's trace
            await sup.call("api.publish", {})
            (received,) = await wait_for(sup, lambda e: e["message"] == "got the queued message", worker="queued")
            (published,) = await wait_for(sup, lambda e: e["message"] == "publishing", worker="api")
            assert received["trace_id"] == published["trace_id"] is not None
            assert received["span_id"] != published["span_id"]

            # level filtering and no loop: the alert handler saw the warn entry, once, and not its own
            # entries (nor backend's, made through the call it made)
            alerts = await wait_for(sup, lambda e: e["message"].startswith("ALERT"), worker="alerts")
            await trio.sleep(0.5)
            alerts = [e["message"] for e in await entries(sup, worker="alerts") if e["message"].startswith("ALERT")]
            # warn and above: backend's warn and its stderr line (error); not api's info entries
            assert sorted(alerts) == ["ALERT error backend stderr line", "ALERT warn backend working"], alerts
            stats = {t["function_id"]: t for t in (await sup.call("engine::logs::list", {"limit": 0}))["triggers"]}
            assert stats["alerts.on_warn"]["delivered"] == 2
            assert sorted(e["message"] for e in await entries(sup, level="error", worker="alerts")) == [
                "alert raised for backend stderr line", "alert raised for backend working"]
            # what the handler's call to backend logged is there, and was not fed back either
            assert len([e for e in await entries(sup, worker="backend") if e["message"] == "backend working"]) == 3

            # a slow log handler does not slow a busy worker: 3000 entries go by in a moment, the
            # slow trigger drops what its buffer cannot hold
            elapsed = await sup.call("busy.run", {"n": 3000})
            assert elapsed < 5, elapsed
            await wait_for(sup, lambda e: e["message"] == "busy 2999", worker="busy")
            stats = {t["function_id"]: t for t in (await sup.call("engine::logs::list", {"limit": 0}))["triggers"]}
            assert stats["slow.on_any"]["dropped"] > 0
            assert sup.proc is not None and sup.proc.returncode is None

            # `logs -f` shows a new line within a second
            follow = await trio.lowlevel.open_process(sup.cli_args("logs", "api", "-f", "-n", "1"),
                                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            buffered = b""

            async def read_line() -> bytes:
                nonlocal buffered
                assert follow.stdout is not None
                while b"\n" not in buffered:
                    chunk = await follow.stdout.receive_some(4096)
                    assert chunk, f"logs -f ended: {buffered!r}"
                    buffered += chunk
                line, _, buffered = buffered.partition(b"\n")
                return line

            try:
                first_line = await read_line()
                assert b"api" in first_line, first_line
                await sup.call("api.say", {"text": "follow-marker"})
                said = time.monotonic()
                line = await read_line()
                seen = time.monotonic()
                assert b"follow-marker" in line and b"INFO" in line and b"api.say" in line, line
                assert seen - said < 1.0, seen - said
            finally:
                follow.kill()
                await follow.wait()
