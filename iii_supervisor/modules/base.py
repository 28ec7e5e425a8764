"""The module interface: one door for every in-process module (http, queue, cron, state, stream, log).

A module is described by a :class:`ModuleSpec` — its name, its config section (an attrs class,
validated strictly like the rest of the config), its ``start`` flags and CLI subcommands — and
built by ``engine.py`` from a :class:`ModuleContext`. The engine starts every module of
``engine.MODULES`` in order with ``nursery.start(module.run)``, before any worker is spawned:

- ``run`` installs the module's trigger types (``registry.add_trigger_type``), built-in functions
  (``registry.add_builtin``) and action handlers (``registry.add_action_handler``), then calls
  ``task_status.started()``; it serves until cancelled and then stops cleanly;
- a module reaches the rest of the engine only through the context: the registry, the invoker,
  the channel table and the store. It never imports another module or a server.

A new module therefore needs its file, its config class and one entry in ``engine.MODULES``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

if TYPE_CHECKING:
    from ..channels import ChannelTable
    from ..config import Config
    from ..invocation import Invoker
    from ..process.pool import WorkerPool
    from ..registry import Registry
    from ..worker_lines import WorkerLines


class Module(Protocol):
    """What the engine starts. ``run`` signals readiness once its registrations are in."""

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None: ...


@attrs.frozen(kw_only=True)
class ModuleContext:
    """Everything a module may talk to."""

    registry: Registry
    invoker: Invoker
    channels: ChannelTable
    #: the whole validated config (a module reads its own section with ``config.section(name)``)
    config: Config
    runtime_dir: Path
    #: the embedded store, for modules that keep data (``ModuleSpec.uses_store``); else None
    store: Any = None
    #: every line the workers print to stdout/stderr (see worker_lines.py); None when no workers run
    worker_lines: WorkerLines | None = None
    #: the worker pool (the iii door authenticates spawned workers and shows attached ones); None in tests
    pool: WorkerPool | None = None


@attrs.frozen(kw_only=True)
class StartFlag:
    """A ``start`` option that overrides one key of the module's config section."""

    flag: str  # "--http-port"
    key: str  # "port"
    type: Callable[[str], Any] = str
    help: str = ""


def address_flags(name: str, what: str, default_port: int) -> tuple[StartFlag, StartFlag]:
    """``--NAME-host`` and ``--NAME-port`` for a module that listens (keys ``host`` and ``port``)."""
    return (StartFlag(flag=f"--{name}-host", key="host", help=f"address of {what} (default 127.0.0.1)"),
            StartFlag(flag=f"--{name}-port", key="port", type=int,
                      help=f"port of {what} (default {default_port}; 0 picks a free one)"))


#: ``handler(args, config) -> exit code`` of a module's CLI subcommand
CliHandler = Callable[[argparse.Namespace, "Config"], int]


@attrs.frozen(kw_only=True)
class ModuleSpec:
    #: the module's name (logs, errors)
    name: str
    #: its TOML section (``[http]``, ``[queues.NAME]`` …)
    section: str
    #: what the section is structured into (an attrs class, or e.g. ``dict[str, QueueConfig]``)
    config_type: Any
    #: builds the module from the engine's context and its validated section
    build: Callable[[ModuleContext, Any], Module]
    #: the section's value when the file has none (default: ``config_type()``)
    default: Callable[[], Any] | None = None
    #: ``start`` flags that override keys of the section
    flags: tuple[StartFlag, ...] = ()
    #: a check across sections, after each section validated on its own: returns a problem or None
    check: Callable[[Config], str | None] | None = None
    #: adds the module's CLI subcommands; each sets ``func`` (a :data:`CliHandler`) as a default
    add_commands: Callable[[Any], None] | None = None
    #: the module keeps data in the embedded store
    uses_store: bool = False

    def default_config(self) -> Any:
        return self.default() if self.default is not None else self.config_type()
