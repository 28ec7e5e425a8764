"""End to end: workers of ours and a real iii-sdk worker (over the WebSocket door) register external
HTTP functions; other workers, the control socket and an HTTP route call them; the supervisor
calls a real local HTTP server."""

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
    return iii.trigger({"function_id": data.get("fn", "hooks.charge"), "payload": data["payload"]})

iii.register_function("caller.run", run)
"""

# the official SDK (iii-sdk 0.25), unmodified, spawned with III_URL / III_TOKEN
OFFICIAL = """
import os
from iii import register_worker
from iii_helpers.http import HttpAuthBearer, HttpInvocationConfig

iii = register_worker()
base = os.environ["ENDPOINT"]
iii.register_function("sdk.ext", HttpInvocationConfig(url=base + "/echo", method="PUT", timeout_ms=5000,
                                                       auth=HttpAuthBearer(token_key="XF_E2E_TOKEN")))
iii.register_function("sdk.bad", HttpInvocationConfig(url="ftp://nowhere/"))
iii.register_function("sdk.call", lambda data: iii.trigger({"function_id": "hooks.charge", "payload": data}))
"""


async def test_sdk_workers_register_and_call_external_functions(tmp_path: Path):
    with endpoint_server() as server, trio.fail_after(40):
        write_worker(tmp_path, "hooks", HOOKS)
        write_worker(tmp_path, "caller", CALLER)
        write_worker(tmp_path, "official", OFFICIAL, preamble=False)
        env = {"XF_E2E_SECRET": SECRET, "XF_E2E_TOKEN": "e2e-token", "ENDPOINT": server.url(""),
               "OTEL_ENABLED": "false"}
        async with Supervisor(tmp_path, "--iii-port", "0", env=env) as sup:
            await sup.start(expect_workers=3, functions=("hooks.charge", "hooks.route", "hooks.refusals",
                                                         "caller.run", "sdk.ext", "sdk.call"))
            # worker → supervisor → HTTP endpoint, signed with the supervisor's secret
            answer = await sup.call("caller.run", {"payload": {"amount": 12}})
            assert answer["body"] == {"amount": 12} and answer["headers"]["x-team"] == "billing"
            headers = answer["headers"]
            assert headers["x-iii-function-path"] == "hooks.charge"
            signed = f"{headers['x-iii-timestamp']}:{base64.b64encode(server.requests[-1].body).decode()}"
            assert headers["x-iii-signature"] == \
                "sha256=" + hmac.new(SECRET.encode(), signed.encode(), hashlib.sha256).hexdigest()
            # the official SDK's external function, called by one of our workers
            answer = await sup.call("caller.run", {"fn": "sdk.ext", "payload": [1, 2]})
            assert answer["method"] == "PUT" and answer["body"] == [1, 2]
            assert answer["headers"]["authorization"] == "Bearer e2e-token"
            assert answer["headers"]["x-iii-function-path"] == "sdk.ext"
            # ... and the official SDK calling ours
            assert (await sup.call("sdk.call", {"n": 5}))["body"] == {"n": 5}
            assert "sdk.bad" not in await sup.function_ids()
            assert "registerfunction 'sdk.bad' refused: function 'sdk.bad': invocation.url must be" in sup.output()
            # the refusals reached our SDK as exceptions naming the field / the variable
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
