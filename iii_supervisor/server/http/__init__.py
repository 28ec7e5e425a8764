"""The HTTP front (h11 over trio), as a module: ``http`` triggers become routes.

- :mod:`.front` listens, limits connections and owns the read-deadline timer;
- :mod:`.connection` is one client's socket I/O (h11 parses, our writes answer);
- :mod:`.exchange` is one request: route → condition → invoke → respond or stream;
- :mod:`.messages` (pure) turns requests and handler results into values and bytes;
- :mod:`.routes` (pure) validates ``http`` trigger configs and matches paths.
"""

from __future__ import annotations

from typing import Any

from ...modules.base import ModuleContext, ModuleSpec, address_flags
from .config import HttpConfig, check
from .front import HttpFront


def _build(ctx: ModuleContext, config: HttpConfig) -> HttpFront:
    return HttpFront(config, ctx.registry, ctx.invoker, ctx.channels)


SPEC = ModuleSpec(
    name="http",
    section="http",
    config_type=HttpConfig,
    build=_build,
    flags=address_flags("http", "the HTTP front", 3111),
    check=check,
)

__all__: list[Any] = ["SPEC", "HttpConfig", "HttpFront"]
