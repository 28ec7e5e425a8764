"""Functions, triggers and trigger types, each with its owner. Plain data, no I/O.

Theory of operation
-------------------
An *owner* is whatever registered an entry: a connected worker session, or ``None`` for the
engine itself (built-in functions and in-process trigger types). When an owner goes away,
:meth:`Registry.remove_owner` takes out everything it registered in one synchronous step, so no
other task can observe a half-removed worker.

Trigger types are the seam where modules plug in (``http``, ``queue``, ``cron`` … in-process,
or a worker that sent ``registertriggertype``). A provider gets ``register``/``unregister``
calls for each binding of its type and rejects bad configs by raising
:class:`TriggerRegistrationError`. When a *worker* provider leaves, the bindings of its type are
kept, parked, and replayed when a provider of the type comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs

from .errors import FunctionConflict, InvalidInvocation, RegistrationError, TriggerRegistrationError

log = logging.getLogger(__name__)


class Owner(Protocol):
    """A registering party: a worker session (the engine itself is ``None``); calls to its
    functions and frames of its channels are sent to it."""

    @property
    def name(self) -> str: ...

    def send_nowait(self, msg: Any) -> None: ...

    def backlog(self) -> int:
        """Bytes queued for this peer and not yet taken by its socket."""
        ...


BuiltinHandler = Callable[[Any], Awaitable[Any]]


@attrs.define(kw_only=True)
class ActionCall:
    """A call that came with a trigger action other than ``void`` (e.g. ``enqueue``): what the
    module serving that action gets."""

    function_id: str
    data: Any
    #: the protocol's ``Action`` (``type``, ``queue``)
    action: Any
    metadata: dict[str, Any] | None = None
    traceparent: str | None = None
    baggage: str | None = None
    #: name of the calling peer (for logs and errors)
    caller: str = ""


#: serves the calls of one action type; its return value is the call's result
ActionHandler = Callable[[ActionCall], Awaitable[Any]]

#: ``(function_id, invocation, attached) -> handler``: checks a ``registerfunction``'s ``invocation``
#: (raising :class:`RegistrationError` naming the bad field) and returns what serves the calls of
#: that external function (the external-functions module); ``attached``: the registering worker is
#: one the supervisor did not spawn
ExternalFactory = Callable[[str, dict[str, Any], bool], BuiltinHandler]


@attrs.define(eq=False)
class FunctionEntry:
    id: str
    owner: Owner | None
    description: str | None = None
    metadata: dict[str, Any] | None = None
    #: For engine built-ins, and for the external (HTTP) functions a worker owns: the coroutine
    #: function that serves the call in-process.
    builtin: BuiltinHandler | None = None
    #: other instances of the owner's worker (``instances = N``) that registered it too; calls
    #: are spread over ``owner`` and these (see :meth:`Registry.owners_of`)
    replicas: list[Owner] = attrs.Factory(list)

    @property
    def owner_name(self) -> str:
        return self.owner.name if self.owner is not None else "engine"


@attrs.define(eq=False)
class TriggerEntry:
    id: str
    trigger_type: str
    function_id: str
    config: dict[str, Any]
    owner: Owner | None
    metadata: dict[str, Any] | None = None
    #: False while the provider of its type is away (the binding waits to be replayed).
    active: bool = False
    #: other instances of the owner's worker that registered the same binding: their own
    #: trigger id, by owner. The binding lives (and fires) while any of them does.
    replicas: dict[Any, str] = attrs.Factory(dict)


def _group(owner: Owner | None) -> str | None:
    """The worker an owner is an instance of (``api`` for ``api:0``, ``api:1``), or None."""
    return getattr(owner, "group", None)


def _same_group(a: Owner | None, b: Owner | None) -> bool:
    return a is not None and b is not None and a is not b and _group(a) is not None and _group(a) == _group(b)


class TriggerProvider(Protocol):
    """What a module (or a worker) implements to provide a trigger type."""

    def register(self, trigger: TriggerEntry) -> None:
        """Start firing ``trigger``; raise :class:`TriggerRegistrationError` on a bad config."""

    def unregister(self, trigger: TriggerEntry) -> None:
        """Stop firing ``trigger``. Must not raise."""


@attrs.define(eq=False)
class TriggerTypeEntry:
    id: str
    description: str
    provider: TriggerProvider | None
    owner: Owner | None = None
    aliases: tuple[str, ...] = ()


class Registry:
    def __init__(self) -> None:
        self.functions: dict[str, FunctionEntry] = {}
        self.triggers: dict[str, TriggerEntry] = {}
        self.trigger_types: dict[str, TriggerTypeEntry] = {}
        #: alias → canonical trigger type id (e.g. ``durable:subscriber`` → ``queue``).
        self._type_alias: dict[str, str] = {}
        #: action type (``enqueue``) → the module's handler
        self._actions: dict[str, ActionHandler] = {}
        #: trigger id of an instance sharing a binding → the id the binding is stored under
        self._trigger_replicas: dict[str, str] = {}
        self._external: ExternalFactory | None = None

    # --- functions ----------------------------------------------------------------------------

    def add_function(self, entry: FunctionEntry) -> None:
        """Register a function. The same owner re-registering is idempotent (it updates)."""
        current = self.functions.get(entry.id)
        if current is not None and current.owner is not entry.owner:
            if _same_group(current.owner, entry.owner):  # another instance of the same worker
                if entry.owner not in current.replicas:
                    current.replicas.append(entry.owner)  # type: ignore[arg-type]
                return
            raise FunctionConflict(
                f"function {entry.id!r} is already registered by {current.owner_name!r}",
            )
        if current is not None:
            entry.replicas = current.replicas
        self.functions[entry.id] = entry

    def add_builtin(self, function_id: str, handler: BuiltinHandler, description: str) -> None:
        self.add_function(FunctionEntry(function_id, None, description=description, builtin=handler))

    def remove_function(self, function_id: str, owner: Owner | None) -> bool:
        current = self.functions.get(function_id)
        if current is None:
            return False
        if owner in current.replicas:
            current.replicas.remove(owner)  # type: ignore[arg-type]
            return True
        if current.owner is not owner:
            return False
        if current.replicas:  # another instance takes it over: the function stays available
            current.owner = current.replicas.pop(0)
        else:
            del self.functions[function_id]
        return True

    @staticmethod
    def owners_of(entry: FunctionEntry) -> list[Owner]:
        """Every live owner of ``entry`` (one, or each instance of a worker that registered it)."""
        return [entry.owner, *entry.replicas] if entry.owner is not None else []

    def lookup(self, function_id: str) -> FunctionEntry | None:
        return self.functions.get(function_id)

    def list_functions(self) -> list[FunctionEntry]:
        """Every function, sorted by id."""
        return sorted(self.functions.values(), key=lambda f: f.id)

    def functions_of(self, owner: Owner) -> list[str]:
        """Ids of the functions ``owner`` registered, sorted."""
        return sorted(f.id for f in self.functions.values() if f.owner is owner or owner in f.replicas)

    def serve_external_functions(self, factory: ExternalFactory | None) -> None:
        """Let workers register external HTTP functions (``registerfunction`` with an
        ``invocation``), served by ``factory``'s handlers; ``None`` stops accepting them."""
        self._external = factory

    def external_handler(self, function_id: str, invocation: dict[str, Any], *, attached: bool = False
                         ) -> BuiltinHandler:
        """The handler of an external function; raises :class:`RegistrationError` if the
        ``invocation`` is refused or no module serves external functions."""
        if self._external is None:
            raise InvalidInvocation(f"function {function_id!r} has an 'invocation' (an external HTTP function), "
                                    f"but external functions are disabled ([external_functions] enabled = false)")
        return self._external(function_id, invocation, attached)

    # --- actions --------------------------------------------------------------------------------

    def add_action_handler(self, action_type: str, handler: ActionHandler) -> None:
        """Serve calls made with ``action_type`` (``TriggerAction.Enqueue`` is ``enqueue``)."""
        if action_type in self._actions:
            raise RegistrationError(f"action {action_type!r} is already served by another module")
        self._actions[action_type] = handler

    def action_handler(self, action_type: str) -> ActionHandler | None:
        return self._actions.get(action_type)

    # --- trigger types ------------------------------------------------------------------------

    def canonical_type(self, trigger_type: str) -> str:
        return self._type_alias.get(trigger_type, trigger_type)

    def add_trigger_type(self, entry: TriggerTypeEntry) -> None:
        """Add (or bring back) a trigger type; parked bindings of the type are replayed."""
        current = self.trigger_types.get(entry.id)
        if current is not None and current.provider is not None and current.owner is not entry.owner:
            raise RegistrationError(
                f"trigger type {entry.id!r} is already provided by "
                f"{current.owner.name if current.owner else 'the engine'!r}"
            )
        self.trigger_types[entry.id] = entry
        for alias in entry.aliases:
            self._type_alias[alias] = entry.id
        for trigger in self.triggers.values():
            if trigger.trigger_type == entry.id and not trigger.active:
                self._activate(trigger, entry)

    def remove_trigger_type(self, type_id: str, owner: Owner | None) -> None:
        """The provider went away: park its bindings until a provider returns."""
        entry = self.trigger_types.get(type_id)
        if entry is None or entry.owner is not owner:
            return
        entry.provider = None
        entry.owner = None
        for trigger in self.triggers.values():
            if trigger.trigger_type == type_id:
                trigger.active = False

    # --- triggers -----------------------------------------------------------------------------

    def add_trigger(self, trigger: TriggerEntry) -> None:
        """Register a trigger binding; raises :class:`TriggerRegistrationError` on refusal."""
        trigger.trigger_type = self.canonical_type(trigger.trigger_type)
        type_entry = self.trigger_types.get(trigger.trigger_type)
        if type_entry is None:
            known = ", ".join(sorted(self.trigger_types)) or "none"
            raise TriggerRegistrationError(
                f"unknown trigger type {trigger.trigger_type!r} (known types: {known})"
            )
        current = self.triggers.get(trigger.id)
        if current is None and trigger.id not in self._trigger_replicas:
            shared = self._shared_binding(trigger)
            if shared is not None:  # another instance of the same worker bound it already
                shared.replicas[trigger.owner] = trigger.id
                self._trigger_replicas[trigger.id] = shared.id
                return
        was_active = current is not None and current.active
        if current is not None:
            if current.owner is not trigger.owner:
                raise TriggerRegistrationError(f"trigger id {trigger.id!r} is already in use")
            # out first: the new binding may take the old one's place (an http route, say)
            self.remove_trigger(trigger.id, trigger.owner)
        if type_entry.provider is not None:
            try:
                type_entry.provider.register(trigger)  # raises on a bad config: nothing stored
            except TriggerRegistrationError:
                if current is not None:  # a refused update keeps the binding that worked
                    self.triggers[current.id] = current
                    current_type = self.trigger_types.get(current.trigger_type)
                    if was_active and current_type is not None and current_type.provider is not None:
                        self._activate(current, current_type)
                raise
            trigger.active = True
        self.triggers[trigger.id] = trigger

    def _shared_binding(self, trigger: TriggerEntry) -> TriggerEntry | None:
        if _group(trigger.owner) is None:
            return None
        for t in self.triggers.values():
            if (t.trigger_type == trigger.trigger_type and t.function_id == trigger.function_id
                    and t.config == trigger.config and _same_group(t.owner, trigger.owner)):
                return t
        return None

    def _activate(self, trigger: TriggerEntry, type_entry: TriggerTypeEntry) -> None:
        assert type_entry.provider is not None
        try:
            type_entry.provider.register(trigger)
            trigger.active = True
        except TriggerRegistrationError as exc:
            log.warning("trigger %s (%s → %s) refused on replay: %s", trigger.id, trigger.trigger_type,
                        trigger.function_id, exc.message)

    def remove_trigger(self, trigger_id: str, owner: Owner | None) -> TriggerEntry | None:
        key = self._trigger_replicas.get(trigger_id, trigger_id)  # an instance's own id for a shared binding
        trigger = self.triggers.get(key)
        if trigger is None:
            return None
        if trigger.owner is not owner:
            if owner is None or trigger.replicas.get(owner) != trigger_id:
                return None
            del trigger.replicas[owner]
            del self._trigger_replicas[trigger_id]
            return trigger
        if trigger.replicas:  # shared with other instances: one of them takes it over, it keeps firing
            new_owner = next(iter(trigger.replicas))
            del trigger.replicas[new_owner]
            trigger.owner = new_owner  # (its own id already names the binding)
            return trigger
        for alias in [a for a, k in self._trigger_replicas.items() if k == key]:
            del self._trigger_replicas[alias]
        trigger_id = key
        del self.triggers[trigger_id]
        if trigger.active:
            trigger.active = False
            type_entry = self.trigger_types.get(trigger.trigger_type)
            if type_entry is not None and type_entry.provider is not None:
                type_entry.provider.unregister(trigger)
        return trigger

    # --- owners -------------------------------------------------------------------------------

    def trigger(self, trigger_id: str) -> TriggerEntry | None:
        return self.triggers.get(trigger_id)

    def trigger_type(self, type_id: str) -> TriggerTypeEntry | None:
        return self.trigger_types.get(self.canonical_type(type_id))

    def list_triggers(self) -> list[TriggerEntry]:
        """Every trigger binding, sorted by id."""
        return sorted(self.triggers.values(), key=lambda t: t.id)

    def list_trigger_types(self) -> list[TriggerTypeEntry]:
        return sorted(self.trigger_types.values(), key=lambda tt: tt.id)

    def remove_owner(self, owner: Owner) -> tuple[list[str], list[str]]:
        """Remove everything ``owner`` registered; returns (function ids, trigger ids)."""
        functions = [fid for fid, f in self.functions.items() if f.owner is owner or owner in f.replicas]
        for fid in functions:
            self.remove_function(fid, owner)
        triggers = [tid for tid, t in self.triggers.items() if t.owner is owner]
        triggers += [tid for tid, shared in self._trigger_replicas.items()
                     if (t := self.triggers.get(shared)) is not None and t.replicas.get(owner) == tid]
        for tid in triggers:
            self.remove_trigger(tid, owner)
        for type_id in [tid for tid, t in self.trigger_types.items() if t.owner is owner]:
            self.remove_trigger_type(type_id, owner)
        return functions, triggers

