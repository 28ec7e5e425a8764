"""The engine's own functions (``engine::*``), callable like any other function.

The CLI uses them too: ``iii-supervisor status`` is ``engine::workers::list`` over the control
socket, ``iii-supervisor restart NAME`` is ``engine::workers::restart`` (``start NAME``, ``stop NAME``
likewise).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .errors import InvocationError
from .process.pool import WorkerPool
from .registry import Registry
from .stats import InvocationStats


def install_builtins(registry: Registry, pool: WorkerPool, stats: InvocationStats | None = None) -> None:
    async def functions_list(data: Any) -> dict[str, Any]:
        include_internal = isinstance(data, dict) and bool(data.get("include_internal"))
        return {"functions": [
            {"function_id": f.id, "worker_name": f.owner_name, "description": f.description, "metadata": f.metadata}
            for f in registry.list_functions()
            if include_internal or f.owner is not None
        ]}

    async def workers_list(_data: Any) -> dict[str, Any]:
        return {"workers": pool.status()}

    async def triggers_list(_data: Any) -> dict[str, Any]:
        return {
            "triggers": [
                {"id": t.id, "trigger_type": t.trigger_type, "function_id": t.function_id, "config": t.config,
                 "worker_name": t.owner.name if t.owner else "engine", "active": t.active}
                for t in registry.list_triggers()
            ],
            "trigger_types": [
                {"id": tt.id, "description": tt.description,
                 "provider": (tt.owner.name if tt.owner else "engine") if tt.provider else None}
                for tt in registry.list_trigger_types()
            ],
        }

    async def invocation_stats(_data: Any) -> dict[str, Any]:
        return stats.snapshot() if stats is not None else {"buckets": [], "functions": {}}

    def control(verb: str) -> Callable[[Any], Awaitable[dict[str, Any]]]:
        """``engine::workers::VERB`` {name}: ``pool.VERB(name)`` (restart, start, stop)."""
        async def handler(data: Any) -> dict[str, Any]:
            name = data.get("name") if isinstance(data, dict) else None
            if not isinstance(name, str):
                raise InvocationError(f'engine::workers::{verb} needs {{"name": "<worker name>"}}',
                                      code="invalid_argument")
            try:
                getattr(pool, verb)(name)
            except KeyError:
                known = ", ".join(sorted(pool.slots)) or "none"
                raise InvocationError(f"no worker named {name!r} (workers: {known})", code="worker_not_found") from None
            return {f"{verb}ing" if verb != "stop" else "stopping": name}
        return handler

    registry.add_builtin("engine::functions::list", functions_list,
                         "List registered functions ({include_internal?: bool})")
    registry.add_builtin("engine::workers::list", workers_list, "List worker processes with pid, state, RSS")
    registry.add_builtin("engine::triggers::list", triggers_list, "List registered triggers and trigger types")
    registry.add_builtin("engine::invocations::stats", invocation_stats,
                         "Calls, errors by code and a duration histogram per function (for /metrics)")
    registry.add_builtin("engine::workers::restart", control("restart"),
                         "Restart a worker (a stopped or FATAL one starts): {name}")
    registry.add_builtin("engine::workers::start", control("start"),
                         "Start a stopped, disabled or FATAL worker: {name}")
    registry.add_builtin("engine::workers::stop", control("stop"),
                         "Stop a worker and keep it stopped: {name}")
