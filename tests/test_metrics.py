"""Metrics: the invocation counters (pure), the exposition (parsed back with prometheus_client's
own parser), and /metrics of a real supervisor whose counters move."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from iii_supervisor.config import parse_config
from iii_supervisor.errors import ConfigError
from iii_supervisor.modules.metrics import render
from iii_supervisor.stats import BUCKETS, MAX_FUNCTIONS, OTHER, InvocationStats
from supervisor_harness import Supervisor, write_worker


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_stats_count_calls_errors_and_durations() -> None:
    stats = InvocationStats()
    stats.record("a.f", None, 0.001)
    stats.record("a.f", "invocation_failed", 0.2)
    stats.record("a.f", "invocation_timeout", 30.0)
    snap = stats.snapshot()["functions"]["a.f"]
    assert snap["calls"] == 3
    assert snap["errors"] == {"invocation_failed": 1, "invocation_timeout": 1}
    assert sum(snap["buckets"]) == 3 and snap["buckets"][-1] == 1  # 30 s is above every bound
    assert snap["buckets"][BUCKETS.index(0.005)] == 1 and snap["buckets"][BUCKETS.index(0.25)] == 1
    assert snap["seconds"] == pytest.approx(30.201)


def test_stats_memory_is_bounded() -> None:
    stats = InvocationStats()
    for i in range(MAX_FUNCTIONS + 500):
        stats.record(f"f{i}", None, 0.0)
    functions = stats.snapshot()["functions"]
    assert len(functions) == MAX_FUNCTIONS + 1
    assert functions[OTHER]["calls"] == 500


def test_render_parses_with_prometheus_clients_parser() -> None:
    stats = InvocationStats()
    stats.record("a.f", None, 0.003)
    stats.record("a.f", "invocation_failed", 0.3)
    workers = [{"name": "a", "restarts": 2, "state": "running", "rss_bytes": 123456, "cpu_percent": 12.5,
                "in_flight": 1}, {"name": "b", "restarts": 0, "state": "fatal", "rss_bytes": None,
                                  "cpu_percent": None, "in_flight": 0},
               {"name": "sdk", "restarts": None, "state": "attached", "rss_bytes": None, "cpu_percent": None,
                "in_flight": 0}]  # an iii-door worker the supervisor did not spawn
    got = samples(render(stats.snapshot(), workers, {"responses": {"200": 5, "404": 1}}).decode())
    assert got[("iii_invocations_total", (("function_id", "a.f"),))] == 2
    assert got[("iii_invocation_errors_total", (("code", "invocation_failed"), ("function_id", "a.f")))] == 1
    assert got[("iii_invocation_duration_seconds_bucket", (("function_id", "a.f"), ("le", "0.005")))] == 1
    assert got[("iii_invocation_duration_seconds_bucket", (("function_id", "a.f"), ("le", "+Inf")))] == 2
    assert got[("iii_invocation_duration_seconds_count", (("function_id", "a.f"),))] == 2
    assert got[("iii_worker_restarts_total", (("worker", "a"),))] == 2
    assert got[("iii_worker_state", (("state", "fatal"), ("worker", "b")))] == 1
    assert got[("iii_worker_state", (("state", "running"), ("worker", "b")))] == 0
    assert got[("iii_worker_rss_bytes", (("worker", "a"),))] == 123456
    assert got[("iii_worker_state", (("state", "attached"), ("worker", "sdk")))] == 1
    assert ("iii_worker_restarts_total", (("worker", "sdk"),)) not in got
    assert ("iii_worker_rss_bytes", (("worker", "b"),)) not in got
    assert got[("iii_worker_cpu_percent", (("worker", "a"),))] == 12.5
    assert got[("iii_http_responses_total", (("status", "404"),))] == 1


def test_metrics_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="metrics.port"):
        parse_config({"metrics": {"port": 70000}})
    with pytest.raises(ConfigError, match="metrics"):
        parse_config({"metrics": {"enabled": "yes"}})


WEB = """
def hello(req):
    return {"status_code": 200, "body": "hi"}
def boom(_data):
    raise ValueError("no")
iii.register_function("web.hello", hello)
iii.register_function("web.boom", boom)
iii.register_trigger({"type": "http", "function_id": "web.hello",
                      "config": {"api_path": "/hello", "http_method": "GET"}})
"""


async def test_metrics_endpoint_of_a_running_supervisor(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    write_worker(workers, "web", WEB)
    config = tmp_path / "config.toml"
    config.write_text("[metrics]\nenabled = true\nport = 0\n\n[supervisor]\nsample_interval = 0.2\n")
    with trio.fail_after(30):
        async with Supervisor(workers, "--config", str(config)) as sup:
            await sup.start(expect_workers=1, functions=("web.boom",))
            line = next(x for x in sup.output().splitlines() if "metrics on http://" in x)
            url = line.split("metrics on ", 1)[1].strip()
            async with httpx.AsyncClient() as client:
                before = samples((await client.get(url)).text)
                for _ in range(3):
                    assert (await client.get(f"http://127.0.0.1:{sup.http_port}/hello")).status_code == 200
                assert (await client.get(f"http://127.0.0.1:{sup.http_port}/nowhere")).status_code == 404
                for _ in range(2):
                    with pytest.raises(Exception, match="no"):
                        await sup.call("web.boom")
                while (await sup.workers())["web"]["rss_bytes"] is None:
                    await trio.sleep(0.05)
                response = await client.get(url)
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/plain; version=")
                after = samples(response.text)
                assert (await client.get(url.replace("/metrics", "/other"))).status_code == 404
            hello = ("iii_invocations_total", (("function_id", "web.hello"),))
            assert after[hello] - before.get(hello, 0) == 3
            boom_errors = ("iii_invocation_errors_total", (("code", "invocation_failed"), ("function_id", "web.boom")))
            assert after[boom_errors] == 2
            assert after[("iii_http_responses_total", (("status", "200"),))] >= 3
            assert after[("iii_http_responses_total", (("status", "404"),))] >= 1
            assert after[("iii_worker_state", (("state", "running"), ("worker", "web")))] == 1
            assert after[("iii_worker_rss_bytes", (("worker", "web"),))] > 1_000_000
            assert after[("iii_worker_restarts_total", (("worker", "web"),))] == 0
