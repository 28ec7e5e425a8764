"""iii-supervisor: a trio engine for the iii model, run as a single-host worker supervisor.

Worker programs import the SDK from here::

    from iii_supervisor import register_worker, TriggerAction, http

The SDK is imported lazily so that ``iii_supervisor.protocol`` stays importable without trio.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_SDK = {"register_worker", "TriggerAction", "III", "InitOptions", "FunctionRef", "Trigger", "Logger"}


def __getattr__(name: str) -> Any:
    if name in _SDK:
        from . import worker

        return getattr(worker, name)
    if name == "logger":
        from .worker.logger import logger

        return logger
    if name == "http":
        from .worker.http import http

        return http
    raise AttributeError(f"module 'iii_supervisor' has no attribute {name!r}")


__all__ = sorted(_SDK | {"http", "logger", "__version__"})
