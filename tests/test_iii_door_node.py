"""End to end: a worker written with the official NODE SDK (npm iii-sdk) under a real supervisor.

``scripts/test`` installs the npm package into a temp dir and names it in ``III_NODE_SDK_DIR``;
without it (no npm, no registry) the test is skipped and says why.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import orjson
import pytest
import trio

from supervisor_harness import Supervisor, json_lines, pid_alive, run_cli, write_worker

HERE = Path(__file__).parent / "iii_sdk"
SDK_DIR = Path(os.environ.get("III_NODE_SDK_DIR", "/nonexistent"))

OURS = """
import json, os

def plus1(data):
    return {"n": data["n"] + 1}

def via_node(data):
    return iii.trigger({"function_id": "node::double", "payload": {"n": data["n"]}})

def sink(data):
    with open(os.environ["NODE_OUT"], "a") as f:
        f.write(json.dumps(data) + "\\n")

iii.register_function("ours::plus1", plus1)
iii.register_function("ours::via_node", via_node)
iii.register_function("ours::sink", sink)
"""


def node_sdk() -> tuple[Path | None, str]:
    """npm's iii-sdk install (the directory holding its ``node_modules``), or None and why not."""
    if shutil.which("node") is None:
        return None, "no node on PATH (.ci/run installs nodejs and npm)"
    if not (SDK_DIR / "node_modules" / "iii-sdk" / "package.json").is_file():
        return None, (f"npm's iii-sdk is not installed in III_NODE_SDK_DIR={SDK_DIR} (scripts/test installs it; "
                      "it printed why it could not)")
    return SDK_DIR, ""


@pytest.fixture
def node_modules() -> Path:
    """A sync fixture: a skip inside the trio test would lose its reason."""
    sdk, why = node_sdk()
    if sdk is None:
        pytest.skip(why)
    return sdk / "node_modules"


async def test_a_node_sdk_worker_calls_and_is_called_by_ours(tmp_path: Path, node_modules: Path) -> None:
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    shutil.copy(HERE / "node_worker.mjs", node_dir / "worker.mjs")
    (node_dir / "node_modules").symlink_to(node_modules)  # ESM resolves packages beside the script
    workers = tmp_path / "workers"
    workers.mkdir()
    write_worker(workers, "ours", OURS)
    out = tmp_path / "out.jsonl"
    config = tmp_path / "config.toml"
    config.write_text(f"[workers.node]\ncommand = {orjson.dumps(['node', str(node_dir / 'worker.mjs')]).decode()}\n")
    with trio.fail_after(60):
        async with Supervisor(workers, "--iii-port", "0", "--config", str(config),
                              env={"NODE_OUT": str(out), "OTEL_ENABLED": "false"}) as sup:
            await sup.start(functions=("node::double", "node::chain", "node::hello", "ours::plus1"), timeout=30)
            rows = await sup.workers()
            node = rows["node"]
            assert node["pid"] is not None and pid_alive(node["pid"])  # spawned, recognised by its token
            assert {"node::double", "node::chain", "node::fire"} <= set(node["functions"])

            assert await sup.call("node::double", {"n": 21}) == {"n": 42}
            assert await sup.call("ours::via_node", {"n": 5}) == {"n": 10}       # ours → node
            assert await sup.call("node::chain", {"n": 1}) == {"chained": 2}     # node → ours
            fired = await sup.call("node::fire", {})
            assert isinstance(fired["receipt"]["messageReceiptId"], str)
            with trio.fail_after(10):
                while {d.get("from") for d in json_lines(out)} != {"node-void", "node-enqueue"}:
                    await trio.sleep(0.05)

            async with httpx.AsyncClient() as http:
                response = await http.get(f"http://127.0.0.1:{sup.http_port}/node/hello/ada")
            assert response.status_code == 200 and response.json() == {"hi": "ada", "runtime": "node"}
            invoked = await run_cli(sup, "invoke", "node::double", '{"n": 4}')
            assert invoked.returncode == 0 and b"8" in invoked.stdout

            # its process dies: its functions go at once, and the supervisor starts it again
            os.kill(node["pid"], 9)
            with trio.fail_after(20):
                while True:
                    rows = await sup.workers()
                    if rows["node"]["restarts"] >= 1 and rows["node"]["state"] == "running" \
                            and "node::double" in await sup.function_ids():
                        break
                    await trio.sleep(0.05)
            assert await sup.call("node::double", {"n": 2}) == {"n": 4}
