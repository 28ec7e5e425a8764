"""The ``[queues]`` config section: module options, and one ``[queues.NAME]`` table per named queue.

```toml
[queues]
subscription_retention_s = 604800   # keep a topic subscription nobody re-registers this long

[queues.payments]
max_retries = 5
backoff_ms = 500
concurrency = 4
type = "fifo"
message_group_field = "customer_id"
```

A ``default`` queue always exists (with the default settings unless ``[queues.default]`` says
otherwise).
"""

from __future__ import annotations

from typing import Any

import attrs

from ...config import register_structure_hook, structure_section
from ...errors import ConfigError
from .logic import DEFAULT_QUEUE, QueueSettings

WEEK_S = 7 * 24 * 3600.0


def _with_default(queues: dict[str, QueueSettings]) -> dict[str, QueueSettings]:
    return queues if DEFAULT_QUEUE in queues else {DEFAULT_QUEUE: QueueSettings(), **queues}


@attrs.frozen(kw_only=True)
class QueuesConfig:
    #: the named queues, by name (``default`` always among them)
    queues: dict[str, QueueSettings] = attrs.field(factory=lambda: {DEFAULT_QUEUE: QueueSettings()},
                                                   converter=_with_default)
    #: seconds a topic subscription is kept (and its messages wait) after its last binding left
    subscription_retention_s: float = WEEK_S


_OPTIONS = {"subscription_retention_s"}


def _structure(value: Any, _kind: Any) -> QueuesConfig:
    if not isinstance(value, dict):
        raise ConfigError(f"queues: expected a table, got {value!r}")
    queues: dict[str, QueueSettings] = {}
    options: dict[str, Any] = {}
    problems = []
    for key, item in value.items():
        if isinstance(item, dict):
            if not key or "\x00" in key:
                problems.append(f"queues.{key!r}: not a usable queue name")
                continue
            try:
                queues[key] = structure_section(item, QueueSettings, f"queues.{key}")
            except ConfigError as exc:
                problems.append(exc.message)
        elif key in _OPTIONS:
            if isinstance(item, bool) or not isinstance(item, int | float) or item <= 0:
                problems.append(f"queues.{key}: expected a positive number of seconds, got {item!r}")
            else:
                options[key] = float(item)
        else:
            problems.append(f"queues.{key}: unknown option {item!r} (options: {', '.join(sorted(_OPTIONS))}; "
                            f"a queue is a table, [queues.{key}])")
    if problems:
        raise ConfigError("; ".join(problems))
    return QueuesConfig(queues=queues, **options)


register_structure_hook(QueuesConfig, _structure)
