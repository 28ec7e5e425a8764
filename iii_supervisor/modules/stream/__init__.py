"""Live streams, as a module: items in the store, ``stream::*`` built-ins, a WebSocket endpoint
for clients (``join``/``leave``), and the ``stream``, ``stream:join`` and ``stream:leave`` triggers.

- :mod:`.module` the module (I/O: built-ins, the write path, connections, triggers);
- :mod:`.logic` (pure) client messages, the subscription index, event shapes, trigger configs;
- :mod:`.config` the ``[stream]`` section.

The WebSocket server itself (trio-websocket, and the writer of pre-encoded frames) is
``iii_supervisor/server/ws.py``. See docs/streams.md.
"""

from __future__ import annotations

from ..base import ModuleContext, ModuleSpec, address_flags
from .config import StreamConfig
from .module import StreamModule


def _build(ctx: ModuleContext, config: StreamConfig) -> StreamModule:
    return StreamModule(config, ctx.registry, ctx.invoker, ctx.store)


SPEC = ModuleSpec(
    name="stream",
    section="stream",
    config_type=StreamConfig,
    build=_build,
    flags=address_flags("stream", "the stream endpoint", 3112),
    uses_store=True,
)

__all__ = ["SPEC", "StreamConfig", "StreamModule"]
