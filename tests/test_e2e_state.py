"""State end to end: real supervisor, real worker processes, a real SQLite file, kill -9."""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

from iii_supervisor.engine import MODULES
from supervisor_harness import Supervisor, run_cli, write_worker

pytestmark = pytest.mark.skipif("state" not in {m.name for m in MODULES},
                                reason="the state module joins engine.MODULES with the embedded store")

INCREMENTER = """
    def run(data):
        for _ in range(data["n"]):
            iii.trigger({{"function_id": "state::update", "payload": {{
                "scope": "counters", "key": "hits", "ops": [{{"type": "increment", "path": "count", "by": 1}}]}}}})
        return data["n"]
    iii.register_function("{name}.run", run)
"""

WATCHER = """
    def profile_changed(event):                       # the seed's condition, as written
        return event.get('event_type') == 'updated' and event.get('key') == 'profile'

    def on_profile_update(event):
        print('Profile updated:', event.get('new_value'))
        return {}

    def on_email(event):
        print('email', event['event_type'], event['old_value'], event['new_value'])

    condition_fn = iii.register_function({"id": "conditions::profileChanged"}, profile_changed)
    fn = iii.register_function({"id": "state::onProfileUpdate"}, on_profile_update)
    iii.register_function("watch.email", on_email)
    iii.register_trigger({'type': 'state', 'function_id': fn.id,
                          'config': {'scope': 'users', 'condition_function_id': condition_fn.id}})
    iii.register_trigger({'type': 'state', 'function_id': 'watch.email', 'config': {'scope': 'users', 'key': 'email'}})
"""


async def lines_of(sup: Supervisor, worker: str) -> list[str]:
    result = await sup.call("engine::logs::list", {"worker": worker, "limit": 1000})
    return [e["message"] for e in result["entries"]]


async def test_state_end_to_end_atomic_increments_triggers_and_kill_9(tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    workers.mkdir()
    for name in ("inc_a", "inc_b"):
        write_worker(workers, name, INCREMENTER.format(name=name))
    write_worker(workers, "watch", WATCHER)
    data_dir = Path(tempfile.mkdtemp(prefix="iii-d", dir=tmp_path))
    async with Supervisor(workers, "--data-dir", str(data_dir)) as sup:
        with trio.fail_after(90):
            await sup.start(expect_workers=3, functions=("inc_a.run", "inc_b.run", "watch.email"))
            await trio.sleep(0.2)  # the triggers are registered just after the functions

            # two worker processes incrementing one counter 1,000 times each, at the same time
            async with trio.open_nursery() as nursery:
                for name in ("inc_a", "inc_b"):
                    nursery.start_soon(sup.call, f"{name}.run", {"n": 1000})
            assert await sup.call("state::get", {"scope": "counters", "key": "hits"}) == {"count": 2000}

            # triggers: the seed's condition picks updates of users/profile; a key filter picks email
            for key, value in (("profile", {"v": 1}), ("profile", {"v": 2}), ("profile", {"v": 2}),
                               ("email", "a@x"), ("email", "b@x"), ("other", 1)):
                await sup.call("state::set", {"scope": "users", "key": key, "value": value})
            await sup.call("state::delete", {"scope": "users", "key": "email"})
            await sup.call("state::set", {"scope": "orders", "key": "profile", "value": {"v": 9}})
            want = ["Profile updated: {'v': 2}", "email created None a@x", "email updated a@x b@x",
                    "email deleted b@x None"]
            while len(await lines_of(sup, "watch")) < len(want):
                await trio.sleep(0.05)
            await trio.sleep(0.3)  # nothing more comes (the unchanged write fired nothing)
            assert sorted(await lines_of(sup, "watch")) == sorted(want)

            # the CLI
            done = await run_cli(sup, "state", "set", "cli", "k", '{"a": [1, 2]}')
            assert done.returncode == 0, done.stderr
            got = await run_cli(sup, "state", "get", "cli", "k")
            assert got.returncode == 0 and got.stdout.decode().split() == ["{", '"a":', "[", "1,", "2", "]", "}"]
            listed = await run_cli(sup, "state", "ls")
            assert [line.split() for line in listed.stdout.decode().splitlines()] == [
                ["SCOPE", "KEYS"], ["cli", "1"], ["counters", "1"], ["orders", "1"], ["users", "2"]]
            bad = await run_cli(sup, "state", "set", "cli", "k", "{nope")
            assert bad.returncode == 2 and b"not valid JSON" in bad.stderr

            # durable: whatever was acknowledged survives kill -9 of the supervisor
            acknowledged: dict[str, Any] = {}
            for i in range(50):
                await sup.call("state::set", {"scope": "durable", "key": f"k{i}", "value": i})
                acknowledged[f"k{i}"] = i
            assert sup.proc is not None
            sup.proc.send_signal(signal.SIGKILL)
            await sup.proc.wait()

    async with Supervisor(workers, "--data-dir", str(data_dir)) as again:
        with trio.fail_after(60):
            await again.start(expect_workers=3)
            items = await again.call("state::list", {"scope": "durable", "include_keys": True})
            assert {i["key"]: i["value"] for i in items} == acknowledged
            assert await again.call("state::get", {"scope": "counters", "key": "hits"}) == {"count": 2000}
            assert await again.call("state::get", {"scope": "cli", "key": "k"}) == {"a": [1, 2]}
