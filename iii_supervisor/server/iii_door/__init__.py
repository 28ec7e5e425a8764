"""The iii worker protocol over WebSocket: the door for workers written with the official SDKs.

- :mod:`.door` the module: listener, upgrade (who is connecting), sessions, reattach;
- :mod:`.stream` one worker connection with the interface the Session uses;
- :mod:`.wire` (pure) the translation between the reference's messages and ours;
- :mod:`.channels` / :mod:`.otel` the channel and telemetry sockets;
- :mod:`.config` the ``[iii]`` section. See docs/iii-door.md.
"""

from __future__ import annotations

from ...modules.base import ModuleContext, ModuleSpec, StartFlag
from .config import IiiConfig, check


def _build(ctx: ModuleContext, config: IiiConfig) -> object:
    from .door import IiiDoor  # (late: the door imports the session, which the config must not need)

    return IiiDoor(config, ctx)


SPEC = ModuleSpec(
    name="iii",
    section="iii",
    config_type=IiiConfig,
    build=_build,  # type: ignore[arg-type]
    flags=(StartFlag(flag="--iii-host", key="host", help="address of the iii door (default 127.0.0.1)"),
           StartFlag(flag="--iii-port", key="port", type=int,
                     help="port of the iii door for official-SDK workers (default: off; the reference uses "
                          "49134; 0 picks a free one)")),
    check=check,
)

__all__ = ["SPEC", "IiiConfig"]
