"""workers/notify.py as shipped, end to end: pub/sub behind an HTTP middleware."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import trio

from supervisor_harness import Supervisor


async def test_the_notify_example_publishes_behind_its_middleware(tmp_path: Path) -> None:
    """The middleware refuses without the key; with it, both subscribers of the topic get the note."""
    workers = tmp_path / "workers"
    workers.mkdir()
    shutil.copy(Path(__file__).resolve().parent.parent / "workers" / "notify.py", workers / "notify.py")
    with trio.fail_after(30):
        async with Supervisor(workers) as sup:
            await sup.start(expect_workers=1, functions=("notify.send", "notify.require_key"))
            url = f"http://127.0.0.1:{sup.http_port}/notify"
            async with httpx.AsyncClient() as http:
                refused = await http.post(url, json={"text": "hi"})
                assert refused.status_code == 401 and refused.json() == {"error": "send x-api-key: demo"}
                sent = await http.post(url, json={"text": "hi"}, headers={"x-api-key": "demo"})
                assert sent.status_code == 202 and sent.json() == {"published": "notes"}
            await sup.wait_for_output("console: {'text': 'hi'}")
            await sup.wait_for_output("audit: {'text': 'hi'}")
