"""End to end: a worker of ours registers external HTTP functions with the SDK, another worker,
the control socket and an HTTP route call them; the supervisor calls a real local HTTP server."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import httpx
import trio

from http_endpoint import endpoint_server
from supervisor_harness import Supervisor, write_worker

SECRET = "e2e-hmac-secret"

HOOKS = """
import os
from iii_supervisor.errors import EngineError
from iii_supervisor.worker import HttpInvocationConfig

base = os.environ["ENDPOINT"]
iii.register_function("hooks.charge", HttpInvocationConfig(
    url=base + "/echo", timeout_ms=5000, headers={"X-Team": "billing"},
    auth={"type": "hmac", "secret_key": "XF_E2E_SECRET"}))
iii.register_function({"id": "hooks.route", "invocation": {"url": base + "/envelope", "method": "PUT"}})
iii.register_trigger({"type": "http", "function_id": "hooks.route",
                      "config": {"api_path": "/route", "http_method": "POST"}})
refusals = []
for bad in ({"url": "gopher://x/"}, {"url": base, "auth": {"type": "bearer", "token_key": "XF_E2E_UNSET"}}):
    try:
        iii.register_function("hooks.bad", bad)
    except EngineError as exc:
        refusals.append([exc.code, exc.message])
iii.register_function("hooks.refusals", lambda _data: refusals)
"""

CALLER = """
def run(data):
    return iii.trigger({"function_id": "hooks.charge", "payload": data})

iii.register_function("caller.run", run)
"""


async def test_sdk_workers_register_and_call_external_functions(tmp_path: Path):
    with endpoint_server() as server, trio.fail_after(40):
        write_worker(tmp_path, "hooks", HOOKS)
        write_worker(tmp_path, "caller", CALLER)
        env = {"XF_E2E_SECRET": SECRET, "ENDPOINT": server.url("")}
        async with Supervisor(tmp_path, env=env) as sup:
            await sup.start(expect_workers=2, functions=("hooks.charge", "hooks.route", "hooks.refusals",
                                                         "caller.run"))
            # worker → supervisor → HTTP endpoint, signed with the supervisor's secret
            answer = await sup.call("caller.run", {"amount": 12})
            assert answer["body"] == {"amount": 12} and answer["headers"]["x-team"] == "billing"
            headers = answer["headers"]
            assert headers["x-iii-function-path"] == "hooks.charge"
            signed = f"{headers['x-iii-timestamp']}:{base64.b64encode(server.requests[-1].body).decode()}"
            assert headers["x-iii-signature"] == \
                "sha256=" + hmac.new(SECRET.encode(), signed.encode(), hashlib.sha256).hexdigest()
            # the refusals reached the SDK as exceptions naming the field / the variable
            (scheme_code, scheme_msg), (env_code, env_msg) = await sup.call("hooks.refusals")
            assert scheme_code == "invalid_invocation" and "invocation.url must be an http://" in scheme_msg
            assert env_code == "missing_env_var" and "'XF_E2E_UNSET'" in env_msg
            # an http route bound to an external function: the endpoint's answer is the response
            async with httpx.AsyncClient() as client:
                response = await client.post(f"http://127.0.0.1:{sup.http_port}/route", json={"q": 1})
            assert response.status_code == 201 and response.headers["x-served-by"] == "endpoint"
            assert response.json()["got"]["body"] == {"q": 1} and server.requests[-1].method == "PUT"
            # listed as the worker's; gone when it stops
            functions = {f["function_id"]: f for f in (await sup.call("engine::functions::list"))["functions"]}
            assert functions["hooks.charge"]["worker_name"] == "hooks"
            await sup.call("engine::workers::stop", {"name": "hooks"})
            while "hooks.charge" in await sup.function_ids():
                await trio.sleep(0.05)
            assert "caller.run" in await sup.function_ids()
