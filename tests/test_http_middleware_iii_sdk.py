"""HTTP middleware with a worker of the official SDK (iii-sdk 0.25, over the iii door) and one of
ours: middleware and routes are registry functions and triggers, whichever door they came in by."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from supervisor_harness import Supervisor, write_worker

pytest.importorskip("iii", reason="the official iii-sdk is a test dependency")

#: spawned by the supervisor, which gives it III_URL (and its token) for the door
SDK_WORKER = """
from iii import register_worker

iii = register_worker()


def auth(req):
    token = req["request"]["headers"].get("authorization", "").removeprefix("Bearer ")
    if not token:
        return {"action": "respond", "response": {"status_code": 401, "body": {"error": "no token"}}}
    return {"action": "continue", "context": {"user": token, "order": req["context"].get("order", []) + ["sdk"]}}


iii.register_function("sdk::auth", auth)
iii.register_function("sdk::me", lambda req: {"status_code": 200, "body": {"context": req.get("context"),
                                                                           "id": req["path_params"]["id"]}})
iii.register_trigger({"type": "http", "function_id": "sdk::me",
                      "config": {"api_path": "/sdk/me/:id", "http_method": "GET",
                                 "middleware_function_ids": ["sdk::auth", "ours::tag"]}})
iii.register_trigger({"type": "http", "function_id": "sdk::me",
                      "config": {"api_path": "/sdk/bad", "middleware_function_ids": "sdk::auth"}})
iii.register_function("sdk::ready", lambda data: True)
"""

#: ours: a middleware for the SDK worker's route, and a route of ours behind the SDK's middleware
OURS = """
iii.register_function("ours::tag", lambda req: {"action": "continue",
                                                "context": {"order": req["context"]["order"] + ["ours"]}})
iii.register_function("ours::hello", lambda req: {"status_code": 200, "body": req.get("context")})
iii.register_trigger({"type": "http", "function_id": "ours::hello",
                      "config": {"api_path": "/ours/hello", "middleware_function_ids": ["sdk::auth"]}})
iii.register_function("ours::ready", lambda data: True)
"""


async def test_middleware_across_the_two_doors(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    write_worker(workers, "sdk_mw", SDK_WORKER, preamble=False)
    write_worker(workers, "ours", OURS)
    with trio.fail_after(60):
        async with Supervisor(workers, "--iii-port", "0", env={"OTEL_ENABLED": "false"}) as sup:
            await sup.start(functions=("sdk::ready", "ours::ready"), timeout=30)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sup.http_port}", trust_env=False,
                                         timeout=10) as client:
                r = await client.get("/sdk/me/5", headers={"authorization": "Bearer ada"})
                assert r.status_code == 200, r.text
                assert r.json() == {"id": "5", "context": {"user": "ada", "order": ["sdk", "ours"]}}
                r = await client.get("/sdk/me/5")
                assert (r.status_code, r.json()) == (401, {"error": "no token"})
                r = await client.get("/ours/hello", headers={"authorization": "Bearer bob"})
                assert (r.status_code, r.json()) == (200, {"user": "bob", "order": ["sdk"]})
                assert (await client.get("/sdk/bad")).status_code == 404  # its registration was refused
            # the refusal reached the SDK worker (triggerregistrationresult), which logs it
            refused = [line for line in sup.output().splitlines() if "Trigger registration failed" in line]
            assert len(refused) == 1 and "config.middleware_function_ids must be a list of function ids, " \
                "got 'sdk::auth'" in refused[0], refused
