"""External HTTP functions, as a module: a worker registers a function with an ``invocation``
(``{url, method, timeout_ms, headers, auth}``) and the engine serves its calls by calling that
URL over HTTP (httpx), on behalf of the worker that owns it.

- :mod:`.endpoint` (pure) the invocation's checks, the request's headers and signature, the
  answer's mapping to a result or an error;
- :mod:`.module` the ``[external_functions]`` section, the shared client and the call.

See docs/external-functions.md.
"""

from __future__ import annotations

from ..base import ModuleContext, ModuleSpec
from .module import ExternalConfig, ExternalFunctions


def _build(ctx: ModuleContext, config: ExternalConfig) -> ExternalFunctions:
    return ExternalFunctions(ctx, config)


SPEC = ModuleSpec(name="external", section="external_functions", config_type=ExternalConfig, build=_build)

__all__ = ["SPEC", "ExternalConfig", "ExternalFunctions"]
