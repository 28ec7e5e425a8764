"""The live demo in a real browser: headless Chromium opens workers/live.py's page, which joins the
stream over WebSocket; a change made by the worker shows on the page within 1 s.

Chromium is driven over the DevTools protocol (CDP) with trio-websocket. `.ci/run` installs the
Debian package `chromium` when it is missing; where it cannot be installed the test is skipped
with the reason printed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from supervisor_harness import Supervisor

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; "
                                                         ".ci/run does it)")


class Page:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.ids = 0

    async def evaluate(self, expression: str) -> Any:
        self.ids += 1
        await self.ws.send_message(orjson.dumps({"id": self.ids, "method": "Runtime.evaluate",
                                                 "params": {"expression": expression, "returnByValue": True}}).decode())
        while True:
            answer = orjson.loads(await self.ws.get_message())
            if answer.get("id") == self.ids:
                return answer["result"]["result"].get("value")


async def _devtools_port(profile: Path, proc: trio.Process) -> int:
    marker = profile / "DevToolsActivePort"
    # the port's line is complete once its newline is there (the browser path follows it)
    while not marker.exists() or "\n" not in marker.read_text():
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        await trio.sleep(0.05)
    return int(marker.read_text().split()[0])


async def test_the_demo_page_shows_a_workers_change_within_a_second(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    shutil.copy(ROOT / "workers" / "live.py", workers / "live.py")
    profile = Path(tempfile.mkdtemp(prefix="iii-chromium-"))
    with trio.fail_after(60):
        async with Supervisor(workers) as sup:
            await sup.start(expect_workers=1, functions=("live.page", "live.bump"))
            url = f"http://127.0.0.1:{sup.http_port}/live"
            assert CHROMIUM is not None
            proc = await trio.lowlevel.open_process(
                [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0", url],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                port = await _devtools_port(profile, proc)
                async with httpx.AsyncClient() as client:
                    while True:
                        targets = (await client.get(f"http://127.0.0.1:{port}/json/list")).json()
                        pages = [t for t in targets if t.get("type") == "page" and t.get("url", "").startswith(url)]
                        if pages:
                            break
                        await trio.sleep(0.05)
                async with open_websocket_url(pages[0]["webSocketDebuggerUrl"]) as ws:
                    page = Page(ws)
                    while await page.evaluate("document.body && document.body.dataset.synced") != "1":
                        await trio.sleep(0.02)
                    before = await page.evaluate("document.getElementById('count').textContent")
                    assert await page.evaluate("document.getElementById('status').textContent") == "live"
                    start = trio.current_time()
                    new_value = (await sup.call("live.bump", {}))["body"]["count"]
                    assert new_value == int(before) + 1
                    while await page.evaluate("document.getElementById('count').textContent") != str(new_value):
                        await trio.sleep(0.01)
                        assert trio.current_time() - start < 1.0, "the page did not show the change within 1 s"
                    elapsed = trio.current_time() - start
                    print(f"the browser showed the worker's change {elapsed * 1000:.0f} ms after the call began")
                    # the chat: a message said over HTTP (the worker sets an item and sends an event)
                    said = await sup.call("live.say", {"body": {"text": "hello from the test"}})
                    assert said["status_code"] == 201
                    with trio.fail_after(2):
                        while "hello from the test" not in (await page.evaluate(
                                "document.getElementById('messages').textContent") or ""):
                            await trio.sleep(0.02)
                        while await page.evaluate("document.getElementById('typing').textContent") != \
                                "last: hello from the test":
                            await trio.sleep(0.02)
            finally:
                with trio.CancelScope(shield=True):
                    if proc.returncode is None:
                        os.killpg(proc.pid, signal.SIGKILL)
                        await proc.wait()
                    shutil.rmtree(profile, ignore_errors=True)
