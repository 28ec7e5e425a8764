"""Update operations on a JSON value: what ``state::update`` (and later ``stream::update``) apply.

Pure: no I/O, no trio. :func:`apply_ops` takes the current value (``None`` when the key does not
exist) and a list of operations in the reference engine's shapes, and returns the new value. It
never mutates its input: containers on an op's path are copied, the rest is shared with the old
value (so treat both as read-only afterwards). The ops of one call are all-or-nothing: the first
bad op raises an :class:`~iii_supervisor.errors.UpdateOpError` naming its index, type and path,
and no value is produced. (The reference engine applies ops best-effort and reports failures in
an ``errors`` list; an atomic update that either happens whole or not at all is easier to reason
about, see docs/state.md.)

Operations (tag ``type``):

=============  =====================================  ==============================================
op             fields                                 effect at ``path``
=============  =====================================  ==============================================
``set``        ``path``, ``value``                    replace (the root when ``path`` is empty)
``merge``      ``path?``, ``value`` (an object)       shallow-merge ``value`` into the object there
                                                      (a missing/null target becomes ``value``)
``increment``  ``path``, ``by?`` (number, default 1)  add ``by`` to the number there (missing = 0)
``decrement``  ``path``, ``by?`` (number, default 1)  subtract ``by`` from the number there
``append``     ``path?``, ``value``                   push onto the array there, or concatenate a
                                                      string to the string there (missing = ``[]``)
``remove``     ``path`` (not empty)                   delete that field (absent: nothing happens)
=============  =====================================  ==============================================

Paths: ``""`` or omitted is the root value; a string is **one literal field name** of the root
object (``"user.name"`` is the field named ``user.name``, as in the reference engine); a list of
strings is a nested path (``["sessions", "abc", "events"]``), accepted by every op. Missing
objects on the way are created; a path through something that is not an object (a number, a
list, a string) is an error. When the root is ``None`` (no value yet) and a path is given, the
root starts as ``{}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import UnknownUpdateOp, UpdateOpError, UpdatePathError, UpdateTypeError

#: the op types, in the reference engine's spelling
OP_TYPES = ("set", "merge", "increment", "decrement", "append", "remove")
#: nested paths deeper than this are refused (the reference's limit)
MAX_PATH_DEPTH = 32
#: ops in one call at most
MAX_OPS = 1024

_FORBIDDEN_SEGMENTS = ("__proto__", "constructor", "prototype")  # refused, like the reference (JS clients)


def apply_ops(value: Any, ops: Any) -> Any:
    """Apply ``ops`` in order to ``value`` and return the new value (``value`` is untouched).

    Raises :class:`UpdateOpError` (``UnknownUpdateOp``, ``UpdatePathError``, ``UpdateTypeError``)
    for the first op that cannot be applied; nothing is applied then.
    """
    if not isinstance(ops, list):
        raise UpdateOpError(f"ops must be a list of operations, got {_show(ops)}")
    if len(ops) > MAX_OPS:
        raise UpdateOpError(f"at most {MAX_OPS} ops per update, got {len(ops)}")
    for index, op in enumerate(ops):
        value = apply_op(value, op, index=index)
    return value


def apply_op(value: Any, op: Any, *, index: int = 0) -> Any:
    """Apply one operation (see the module's docstring); ``index`` is only used in errors."""
    if not isinstance(op, dict):
        raise UpdateOpError(f"ops[{index}] must be an object like {{'type': 'set', 'path': ..., 'value': ...}}, "
                            f"got {_show(op)}", index=index)
    kind = op.get("type")
    if kind not in OP_TYPES:
        raise UnknownUpdateOp(f"ops[{index}]: unknown op type {_show(kind)} (known: {', '.join(OP_TYPES)})",
                              index=index, op=kind if isinstance(kind, str) else None)
    path = _path(op.get("path"), index, kind)
    ctx = _Where(index, kind, path)
    if kind == "remove":
        if not path:
            raise UpdatePathError(f"{ctx}: remove needs a field path (use state::delete to remove the whole value)",
                                  **ctx.fields())
        return _at(value, path, ctx, lambda parent, name: _remove(parent, name), create=False)
    if kind in ("set", "merge", "append") and "value" not in op:
        raise UpdateOpError(f"{ctx}: missing 'value'", **ctx.fields())
    operand = op.get("value")
    if kind == "set":
        return _replace(value, path, ctx, lambda _current: operand)
    if kind == "merge":
        if not isinstance(operand, dict):
            raise UpdateTypeError(f"{ctx}: merge value must be an object, got {_show(operand)}", **ctx.fields())
        return _replace(value, path, ctx, lambda current: _merge(current, operand, ctx))
    if kind == "append":
        return _replace(value, path, ctx, lambda current: _append(current, operand, ctx))
    by = op.get("by", 1)
    if isinstance(by, bool) or not isinstance(by, int | float):
        raise UpdateTypeError(f"{ctx}: 'by' must be a number, got {_show(by)}", **ctx.fields())
    sign = 1 if kind == "increment" else -1
    return _replace(value, path, ctx, lambda current: _add(current, sign * by, ctx))


class _Where:
    """Names an op in errors: ``ops[2] increment at path 'count'``."""

    __slots__ = ("index", "op", "path")

    def __init__(self, index: int, op: str, path: list[str]) -> None:
        self.index, self.op, self.path = index, op, path

    def __str__(self) -> str:
        return f"ops[{self.index}] {self.op} at path {format_path(self.path)}"

    def fields(self) -> dict[str, Any]:
        return {"index": self.index, "op": self.op, "path": list(self.path)}


def format_path(path: Sequence[str]) -> str:
    """``''`` for the root, ``'count'`` for one field, ``['a', 'b']`` for a nested path."""
    if not path:
        return "'' (the root)"
    return repr(path[0]) if len(path) == 1 else repr(list(path))


def _path(raw: Any, index: int, kind: str) -> list[str]:
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        segments = [raw]
    elif isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        segments = list(raw)
    else:
        raise UpdatePathError(f"ops[{index}] {kind}: path must be a string or a list of strings, got {_show(raw)}",
                              index=index, op=kind)
    if len(segments) > MAX_PATH_DEPTH:
        raise UpdatePathError(f"ops[{index}] {kind}: path {segments[:4]!r}… is deeper than {MAX_PATH_DEPTH}",
                              index=index, op=kind)
    for segment in segments:
        if segment == "" or segment in _FORBIDDEN_SEGMENTS:
            raise UpdatePathError(f"ops[{index}] {kind} at path {format_path(segments)}: segment {segment!r} "
                                  f"is not allowed", index=index, op=kind, path=segments)
    return segments


def _replace(value: Any, path: list[str], ctx: _Where, change: Any) -> Any:
    """The new root after the value at ``path`` becomes ``change(current)`` (current: None if absent)."""
    if not path:
        return change(value)
    return _at(value, path, ctx, lambda parent, name: _set_field(parent, name, change(parent.get(name))),
               create=True)


def _at(value: Any, path: list[str], ctx: _Where, edit: Any, *, create: bool) -> Any:
    """Copy the objects along ``path[:-1]`` and let ``edit(parent_copy, last)`` change the last one."""
    root = {} if value is None else value
    if not isinstance(root, dict):
        raise UpdatePathError(f"{ctx}: the value is {_kind(root)}, not an object, so it has no field "
                              f"{path[0]!r}", **ctx.fields())
    top = dict(root)
    parent = top
    for depth, name in enumerate(path[:-1]):
        child = parent.get(name)
        if child is None:
            if not create:
                return value  # nothing there to remove
            child = {}
        elif not isinstance(child, dict):
            raise UpdatePathError(f"{ctx}: {format_path(path[:depth + 1])} is {_kind(child)}, not an object",
                                  **ctx.fields())
        child = dict(child)
        parent[name] = child
        parent = child
    edit(parent, path[-1])
    return top


def _set_field(parent: dict[str, Any], name: str, new: Any) -> None:
    parent[name] = new


def _remove(parent: dict[str, Any], name: str) -> None:
    parent.pop(name, None)


def _merge(current: Any, operand: dict[str, Any], ctx: _Where) -> Any:
    if current is None:
        return dict(operand)
    if not isinstance(current, dict):
        raise UpdateTypeError(f"{ctx}: cannot merge an object into {_kind(current)}", **ctx.fields())
    return {**current, **operand}


def _append(current: Any, operand: Any, ctx: _Where) -> Any:
    if current is None:
        return [operand]
    if isinstance(current, list):
        return [*current, operand]
    if isinstance(current, str):
        if not isinstance(operand, str):
            raise UpdateTypeError(f"{ctx}: can only append a string to a string, got {_show(operand)}",
                                  **ctx.fields())
        return current + operand
    raise UpdateTypeError(f"{ctx}: cannot append to {_kind(current)} (only to an array or a string)",
                          **ctx.fields())


def _add(current: Any, by: float, ctx: _Where) -> Any:
    if current is None:
        return by
    if isinstance(current, bool) or not isinstance(current, int | float):
        raise UpdateTypeError(f"{ctx}: expected a number there, got {_show(current)}", **ctx.fields())
    return current + by


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({_show(value)})"
    if isinstance(value, list):
        return f"an array (of {len(value)})"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
