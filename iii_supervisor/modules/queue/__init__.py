"""The queue module: durable topics (``queue`` triggers, ``enqueue``), named queues
(``TriggerAction.Enqueue``), retries with backoff, dead letters. See docs/queue.md.

- :mod:`.logic` (pure): settings, retry schedule, attempt counting, lanes and fifo groups;
- :mod:`.storage`: the queue's SQL, as ops for the store;
- :mod:`.module`: the module (delivery through the invoker, timers, refills, built-ins);
- :mod:`.config`: the ``[queues]`` section; :mod:`.cli`: ``iii-supervisor queue ...``.
"""

from __future__ import annotations

from typing import Any

from ...modules.base import ModuleContext, ModuleSpec
from .cli import add_commands
from .config import QueuesConfig
from .module import QueueModule


def _build(ctx: ModuleContext, config: QueuesConfig) -> QueueModule:
    return QueueModule(ctx, config)


SPEC = ModuleSpec(
    name="queue",
    section="queues",
    config_type=QueuesConfig,
    build=_build,
    add_commands=add_commands,
    uses_store=True,
)

__all__: list[Any] = ["SPEC", "QueueModule", "QueuesConfig"]
