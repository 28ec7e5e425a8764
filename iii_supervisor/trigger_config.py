"""What every trigger type's config checks the same way. Pure.

Each provider validates its own keys; the ones all of them share (the optional
``condition_function_id``) and the way a client's bad value is quoted in the error live here, so
that every trigger type words the same mistake the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import TriggerRegistrationError


def short(value: Any, limit: int = 80) -> str:
    """``repr`` of a value from a client, cut so that an error message stays small."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def known_keys(config: Mapping[str, Any], known: tuple[str, ...], where: str, *, shown: str | None = None) -> None:
    """Refuse keys of a trigger config that are not in ``known`` (``shown``: how the known ones are
    listed in the error, if not all by name)."""
    unknown = set(config) - set(known)
    if unknown:
        raise TriggerRegistrationError(f"{where}: unknown config key(s) {', '.join(sorted(map(repr, unknown)))} "
                                       f"(known: {shown if shown is not None else ', '.join(known)})")


def optional_strings(config: Mapping[str, Any], names: tuple[str, ...], where: str) -> None:
    """Refuse a value of ``names`` that is set (not null) but not a string."""
    for name in names:
        value = config.get(name)
        if value is not None and not isinstance(value, str):
            raise TriggerRegistrationError(f"{where}: {name} must be a string, got {short(value)}")


def condition_function_id(config: Mapping[str, Any], where: str) -> str | None:
    """The optional ``condition_function_id`` of a trigger config: a function id, or None.

    ``where`` names the trigger in the error (``cron trigger 't1'``)."""
    condition = config.get("condition_function_id")
    if condition is not None and (type(condition) is not str or not condition):
        raise TriggerRegistrationError(f"{where}: config.condition_function_id must be a function id (a non-empty "
                                       f"string), got {short(condition)}")
    return condition
