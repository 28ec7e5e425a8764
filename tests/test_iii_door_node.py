"""End to end: a worker written with the official Node SDK (npm ``iii-sdk``) under a real supervisor.

The package is installed with npm into a cache directory under the system temp dir (once per
machine and version); the test is skipped, with the reason, where node or npm is missing or the
npm registry cannot be reached.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest
import trio

from supervisor_harness import Supervisor, run_cli, write_worker

NODE_SDK_VERSION = "0.22.1"
HERE = Path(__file__).parent / "iii_sdk"

OURS = """
iii.register_function("ours::echo", lambda data: {"echo": data})
"""


def node_sdk() -> Path:
    """A directory whose node_modules holds iii-sdk (installed on first use)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node or npm is not installed: the Node SDK test cannot run")
    cache = Path(tempfile.gettempdir()) / f"iii-door-node-sdk-{NODE_SDK_VERSION}"
    if (cache / "node_modules" / "iii-sdk" / "package.json").is_file():
        return cache
    work = Path(tempfile.mkdtemp(prefix="iii-node-sdk-"))
    try:
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", f"iii-sdk@{NODE_SDK_VERSION}"],
                       cwd=work, check=True, timeout=180, capture_output=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(work, ignore_errors=True)
        output = getattr(exc, "stderr", b"") or b""
        print(f"npm could not install iii-sdk@{NODE_SDK_VERSION}: {output.decode(errors='replace')[-500:]}")
        pytest.skip(f"npm could not install iii-sdk@{NODE_SDK_VERSION} (is the registry reachable?)")
    try:
        work.rename(cache)
    except OSError:  # another run installed it meanwhile
        shutil.rmtree(work, ignore_errors=True)
    return cache


async def test_node_sdk_worker_spawned_through_the_door(tmp_path: Path) -> None:
    sdk = node_sdk()
    workers = tmp_path / "workers"
    workers.mkdir()
    shutil.copy(HERE / "node_worker.mjs", workers / "node_worker.mjs")
    (workers / "node_modules").symlink_to(sdk / "node_modules")  # (skipped by discovery: no __main__.py)
    write_worker(workers, "ours", OURS)
    config = tmp_path / "iii.toml"
    config.write_text('[workers.nodew]\ncommand = ["node", "node_worker.mjs"]\n')
    with trio.fail_after(60):
        async with Supervisor(workers, "--iii-port", "0", "--config", str(config),
                              env={"OTEL_ENABLED": "false"}) as sup:
            await sup.start(expect_workers=2, functions=("node::greet", "node::http", "ours::echo"), timeout=30)
            row = (await sup.workers())["nodew"]
            # the spawn token came in III_URL's query (this SDK sends no Authorization header)
            assert row["state"] == "running" and row["pid"] is not None and "node::greet" in row["functions"]
            assert await sup.call("node::greet", {"name": "ada"}) == {"message": "Hello, ada!", "runtime": "node"}
            assert await sup.call("node::viaours", {"x": 1}) == {"echo": {"x": 1}}  # Node → ours
            async with httpx.AsyncClient() as http:
                response = await http.get(f"http://127.0.0.1:{sup.http_port}/node/bob")
            assert response.status_code == 202 and response.json() == {"hi": "bob"}
            invoked = await run_cli(sup, "invoke", "node::greet", '{"name": "cli"}')
            assert invoked.returncode == 0 and b"Hello, cli!" in invoked.stdout
            assert "nodew" in sup.output() and "registered (node" in sup.output()
            assert await sup.terminate() == 0
