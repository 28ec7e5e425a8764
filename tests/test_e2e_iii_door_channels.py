"""Channels and telemetry of the iii door end to end: real iii-sdk 0.25 workers under a real supervisor.

One supervisor runs every scenario: an ``@http`` streaming handler (status, headers, a body larger
than one flow-control window) served over HTTP, a streamed request body read by its handler,
``engine::channels::create`` between two SDK workers, and the SDK's ``Logger`` (over ``/otel``)
showing in ``iii-supervisor logs``.
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import httpx
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from supervisor_harness import Supervisor, run_cli


def node_modules() -> Path | None:
    """The Node SDK's install (scripts/test puts it in III_NODE_SDK_DIR), or None (with the reason printed)."""
    from test_iii_door_node import node_sdk

    sdk, why = node_sdk()
    if sdk is None:
        print(f"the Node SDK part is skipped: {why}")
    return sdk


pytest.importorskip("iii")

STREAMER = """
    import hashlib, json
    from iii import InitOptions, register_worker
    from iii.helpers import create_channel_async
    from iii_helpers.http import http

    iii = register_worker(options=InitOptions(worker_name="chan-streamer"))

    @http
    async def stream(req, res):
        await res.status(206)
        await res.headers({"content-type": "text/plain", "x-chan": "yes"})
        for i in range(3):
            await res.writer.write(f"part{i};".encode())
        await res.writer.write(b"z" * 700_000)  # more than one flow-control window
        await res.writer.close_async()

    @http
    async def upload(req, res):
        body = await req.request_body.read_all()
        await res.status(201)
        await res.headers({"content-type": "application/json"})
        await res.writer.write(json.dumps({"size": len(body), "sha": hashlib.sha256(body).hexdigest()}).encode())
        await res.writer.close_async()

    async def produce(data):
        import asyncio
        channel = await create_channel_async(iii, buffer_size=4)
        payload = bytes(range(256)) * (data["size"] // 256)

        async def write():
            await channel.writer.write(payload)
            await channel.writer.close_async()

        _, got = await asyncio.gather(write(), iii.trigger_async(
            {"function_id": "chan.consume", "payload": {"reader": channel.reader_ref.model_dump()}}))
        return {"sent": len(payload), "sha": hashlib.sha256(payload).hexdigest(), "got": got}

    iii.register_function("chan.stream", stream)
    iii.register_trigger({"type": "http", "function_id": "chan.stream",
                          "config": {"api_path": "/chan/stream", "http_method": "GET"}})
    iii.register_function("chan.upload", upload)
    iii.register_trigger({"type": "http", "function_id": "chan.upload",
                          "config": {"api_path": "/chan/upload", "http_method": "POST"}})
    iii.register_function("chan.produce", produce)
"""

CONSUMER = """
    import hashlib
    from iii import InitOptions, register_worker
    from iii_helpers.observability import Logger

    iii = register_worker(options=InitOptions(worker_name="chan-consumer", otel={"enabled": True}))
    logger = Logger(service_name="consumer")

    async def consume(data):
        body = await data["reader"].read_all()
        return {"size": len(body), "sha": hashlib.sha256(body).hexdigest()}

    def emit(data):
        logger.warn("sdk logger line", {"order": data["order"]})
        return None

    iii.register_function("chan.consume", consume)
    iii.register_function("chan.emit", emit)
"""


NODE = """
import { registerWorker } from 'iii-sdk'
import { http } from '@iii-dev/helpers/http'
import { Logger } from '@iii-dev/helpers/observability'

const iii = registerWorker(process.env.III_URL, { otel: { enabled: true } })
const logger = new Logger()

iii.registerFunction('node.stream', http(async (req, res) => {
  const chunks = []
  for await (const chunk of req.request_body.stream) chunks.push(chunk)
  await res.status(207)
  await res.headers({ 'content-type': 'text/plain', 'x-node': 'yes' })
  res.stream.write(Buffer.from(`got ${Buffer.concat(chunks).length};`))
  res.stream.write(Buffer.alloc(300000, 0x61))
  res.stream.end()
}))
iii.registerTrigger({ type: 'http', function_id: 'node.stream',
                      config: { api_path: '/node/stream', http_method: 'POST' } })
iii.registerFunction('node.emit', async (input) => {
  logger.error('node logger line', { order: input.order })
  return null
})
"""


async def test_sdk_workers_stream_http_pipe_between_each_other_and_log_through_otel(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    (workers / "streamer.py").write_text(textwrap.dedent(STREAMER))
    (workers / "consumer.py").write_text(textwrap.dedent(CONSUMER))
    functions = ["chan.stream", "chan.upload", "chan.produce", "chan.consume", "chan.emit"]
    extra: list[str] = []
    node = node_modules()  # the Node SDK too, spawned with III_URL (its channel URLs differ): if npm works
    if node is not None:
        (workers / "nodechan.mjs").write_text(NODE)
        (workers / "node_modules").symlink_to(node / "node_modules")
        config = tmp_path / "iii.toml"
        config.write_text('[workers.nodechan]\ncommand = ["node", "nodechan.mjs"]\n')
        extra = ["--config", str(config)]
        functions += ["node.stream", "node.emit"]
    async with Supervisor(workers, "--iii-port", "0", *extra, env={"OTEL_ENABLED": "false"}) as sup:
        await sup.start(functions=tuple(functions), timeout=30)
        port = sup.iii_port
        with trio.fail_after(60):
            # through the real door: a channel that does not exist, and garbage on /otel
            with pytest.raises(ConnectionRejected) as rejected:  # refused before the upgrade, as the reference
                async with open_websocket_url(f"ws://127.0.0.1:{port}/ws/channels/nope?key=x&dir=read"):
                    pass
            assert rejected.value.status_code == 404
            async with open_websocket_url(f"ws://127.0.0.1:{port}/otel") as ws:
                await ws.send_message("not telemetry")
                with pytest.raises(ConnectionClosed) as info:
                    await ws.get_message()
                assert info.value.reason.code == 1003
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sup.http_port}", timeout=20) as client:
                # @http streaming: status, headers, a streamed body of several windows
                response = await client.get("/chan/stream")
                assert response.status_code == 206, response.text
                assert response.headers["x-chan"] == "yes" and response.headers["content-type"] == "text/plain"
                assert response.content == b"part0;part1;part2;" + b"z" * 700_000
                # a streamed request body (not JSON, larger than one frame) read by the handler
                body = bytes(range(256)) * 4096  # 1 MiB
                response = await client.post("/chan/upload", content=body,
                                             headers={"content-type": "application/octet-stream"})
                assert response.status_code == 201, response.text
                assert response.json() == {"size": len(body), "sha": hashlib.sha256(body).hexdigest()}
            # engine::channels::create: one SDK worker streams to another through the engine
            result = await sup.call("chan.produce", {"size": 512 * 1024})
            assert result["got"] == {"size": result["sent"], "sha": result["sha"]} and result["sent"] == 512 * 1024
            # the SDK's Logger → /otel → a log entry that `iii-supervisor logs` shows
            await sup.call("chan.emit", {"order": "o-17"})
            while True:
                done = await run_cli(sup, "logs", "--json", "-n", "500")
                assert done.returncode == 0, done.stderr
                if b"sdk logger line" in done.stdout:
                    break
                await trio.sleep(0.1)
            entry = next(e for e in orjson.loads(done.stdout) if e["message"] == "sdk logger line")
            assert (entry["level"], entry["source"], entry["data"], entry["worker_name"]) == (
                "warn", "otel", {"order": "o-17"}, "consumer"), entry
            plain = await run_cli(sup, "logs", "-n", "500")
            assert b"WARN" in plain.stdout and b"sdk logger line" in plain.stdout
            # the SDK did not complain about its telemetry socket
            assert "OTel WS disconnected" not in sup.output() and "dropping message" not in sup.output()
            if node is None:
                return
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sup.http_port}", timeout=20) as client:
                response = await client.post("/node/stream", content=b"q" * 200_000,
                                             headers={"content-type": "application/octet-stream"})
            assert response.status_code == 207 and response.headers["x-node"] == "yes", response.text
            assert response.content == b"got 200000;" + b"a" * 300_000
            await sup.call("node.emit", {"order": "n-1"})
            while True:
                done = await run_cli(sup, "logs", "nodechan", "--json", "-n", "50")
                found = [e for e in orjson.loads(done.stdout) if e["message"] == "node logger line"]
                if found:
                    break
                await trio.sleep(0.1)
            assert (found[0]["level"], found[0]["data"], found[0]["source"]) == ("error", {"order": "n-1"}, "otel")
