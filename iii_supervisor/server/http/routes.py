"""HTTP routing for ``http`` triggers: config validation, clash detection, matching. Pure.

A route is a method and an ``api_path`` pattern such as ``/users/:id/posts/:post_id`` (the
leading ``/`` is optional). Two routes *clash* when they have the same method and the same shape
— same segment count, same static segments, parameters in the same places, whatever the
parameter names — because no request could tell them apart. A clash is refused at registration
with a message naming the owner of the existing route. When several routes match a request,
the one with a static segment earliest wins (``/users/me`` before ``/users/:id``).
"""

from __future__ import annotations

from typing import Any

import attrs

from ...errors import TriggerRegistrationError
from ...protocol.codec import MAX_ID_LENGTH
from ...registry import TriggerEntry
from ...trigger_config import condition_function_id

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
#: ``middleware_function_ids`` entries one route may list (each is a call before its handler)
MAX_ROUTE_MIDDLEWARE = 16
_PARAM = None  # a parameter segment in a route's shape


@attrs.frozen
class Route:
    method: str
    pattern: str  # normalised, with a leading "/"
    segments: tuple[str, ...]
    trigger: TriggerEntry = attrs.field(eq=False)
    condition_function_id: str | None = None
    #: called in this order before the handler (after the condition); see :mod:`.middleware`
    middleware_function_ids: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[str | None, ...]:
        return tuple(_PARAM if s.startswith(":") else s for s in self.segments)

    @property
    def specificity(self) -> tuple[bool, ...]:
        # static segments sort before parameters, position by position
        return tuple(s.startswith(":") for s in self.segments)

    #: (position, name) of each parameter segment, and (position, text) of each static one
    _params: tuple[tuple[int, str], ...] = attrs.field(init=False, eq=False, repr=False)
    _static: tuple[tuple[int, str], ...] = attrs.field(init=False, eq=False, repr=False)

    @_params.default
    def _params_default(self) -> tuple[tuple[int, str], ...]:
        return tuple((i, s[1:]) for i, s in enumerate(self.segments) if s.startswith(":"))

    @_static.default
    def _static_default(self) -> tuple[tuple[int, str], ...]:
        return tuple((i, s) for i, s in enumerate(self.segments) if not s.startswith(":"))

    def match(self, parts: list[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        for i, text in self._static:
            if parts[i] != text:
                return None
        params: dict[str, str] = {}
        for i, name in self._params:
            part = parts[i]
            if not part:
                return None
            params[name] = part
        return params


def split_path(path: str) -> list[str]:
    """``/a/b/`` → ``["a", "b"]``; the root is ``[]``."""
    stripped = path.strip("/")
    return stripped.split("/") if stripped else []


def normalise_pattern(api_path: str) -> tuple[str, tuple[str, ...]]:
    segments = tuple(split_path(api_path))
    for seg in segments:
        if seg == ":" or (seg.startswith(":") and not seg[1:].replace("_", "").isalnum()):
            raise TriggerRegistrationError(f"api_path {api_path!r}: invalid parameter segment {seg!r}")
    names = [s[1:] for s in segments if s.startswith(":")]
    if len(names) != len(set(names)):
        raise TriggerRegistrationError(f"api_path {api_path!r} repeats a parameter name")
    return "/" + "/".join(segments), segments


def route_from_trigger(trigger: TriggerEntry) -> Route:
    """Validate an ``http`` trigger's config into a :class:`Route`."""
    config: dict[str, Any] = trigger.config
    api_path = config.get("api_path")
    if not isinstance(api_path, str) or not api_path.strip():
        raise TriggerRegistrationError(f"http trigger {trigger.id!r}: config.api_path must be a non-empty string, "
                                       f"got {api_path!r}")
    method = config.get("http_method", "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise TriggerRegistrationError(f"http trigger {trigger.id!r}: config.http_method must be one of "
                                       f"{', '.join(METHODS)}, got {method!r}")
    condition = condition_function_id(config, f"http trigger {trigger.id!r}")
    middleware = _middleware_ids(trigger.id, config.get("middleware_function_ids"))
    pattern, segments = normalise_pattern(api_path)
    return Route(method.upper(), pattern, segments, trigger, condition, middleware)


def _middleware_ids(trigger_id: str, value: Any) -> tuple[str, ...]:
    """``config.middleware_function_ids``: absent or null, or a list of function ids.

    The functions need not exist yet (workers start in any order, functions come and go): a
    missing one is reported when a request reaches it.
    """
    if value is None:
        return ()
    where = f"http trigger {trigger_id!r}: config.middleware_function_ids"
    if not isinstance(value, list):
        raise TriggerRegistrationError(f"{where} must be a list of function ids, got {value!r:.200}")
    if len(value) > MAX_ROUTE_MIDDLEWARE:
        raise TriggerRegistrationError(f"{where} lists {len(value)} functions, more than the "
                                       f"{MAX_ROUTE_MIDDLEWARE} allowed")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip() or len(item) > MAX_ID_LENGTH:
            raise TriggerRegistrationError(f"{where}[{i}] must be a non-empty function id of at most "
                                           f"{MAX_ID_LENGTH} characters, got {item!r:.200}")
    return tuple(value)


@attrs.frozen
class Match:
    route: Route
    params: dict[str, str]


@attrs.frozen
class MethodNotAllowed:
    allowed: tuple[str, ...]


class Router:
    """The routing table, rebuilt incrementally as triggers come and go."""

    def __init__(self) -> None:
        self._by_trigger: dict[str, Route] = {}
        # segment count → routes, most specific first
        self._by_length: dict[int, list[Route]] = {}

    def add(self, route: Route) -> None:
        for other in self._by_length.get(len(route.segments), ()):
            if other.method == route.method and other.shape == route.shape:
                owner = other.trigger.owner.name if other.trigger.owner else "the engine"
                raise TriggerRegistrationError(
                    f"route {route.method} {route.pattern} clashes with {other.method} {other.pattern}, "
                    f"already registered by worker {owner!r} for function {other.trigger.function_id!r}"
                )
        self._by_trigger[route.trigger.id] = route
        bucket = self._by_length.setdefault(len(route.segments), [])
        bucket.append(route)
        bucket.sort(key=lambda r: r.specificity)

    def remove(self, trigger_id: str) -> Route | None:
        route = self._by_trigger.pop(trigger_id, None)
        if route is not None:
            self._by_length[len(route.segments)].remove(route)
        return route

    def resolve(self, method: str, path: str) -> Match | MethodNotAllowed | None:
        """The route for ``method path``; :class:`MethodNotAllowed` if only other methods match."""
        parts = split_path(path)
        allowed: list[str] = []
        for route in self._by_length.get(len(parts), ()):
            params = route.match(parts)
            if params is None:
                continue
            if route.method == method:
                return Match(route, params)
            if route.method not in allowed:
                allowed.append(route.method)
        if method == "HEAD":  # HEAD falls back to GET, as HTTP servers do
            found = self.resolve("GET", path)
            if isinstance(found, Match):
                return found
        if allowed:
            return MethodNotAllowed(tuple(sorted(allowed)))
        return None


class HttpTriggerProvider:
    """The ``http`` trigger type: bindings become routes of the HTTP front."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def register(self, trigger: TriggerEntry) -> None:
        self.router.add(route_from_trigger(trigger))

    def unregister(self, trigger: TriggerEntry) -> None:
        self.router.remove(trigger.id)
