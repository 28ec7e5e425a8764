"""The update operations of state::update / stream::update: pure, every op and every error."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from iii_supervisor.errors import (
    InvocationError,
    UnknownUpdateOp,
    UpdateOpError,
    UpdatePathError,
    UpdateTypeError,
    error_from_wire,
)
from iii_supervisor.modules.update_ops import MAX_OPS, MAX_PATH_DEPTH, apply_ops


@pytest.mark.parametrize(("value", "ops", "expected"), [
    # set
    (None, [{"type": "set", "path": "", "value": 5}], 5),
    ({"a": 1}, [{"type": "set", "value": [1]}], [1]),
    ({"a": 1}, [{"type": "set", "path": "b", "value": 2}], {"a": 1, "b": 2}),
    (None, [{"type": "set", "path": "b", "value": None}], {"b": None}),
    ({}, [{"type": "set", "path": "user.name", "value": "x"}], {"user.name": "x"}),  # literal field
    ({}, [{"type": "set", "path": ["a", "b", "c"], "value": 1}], {"a": {"b": {"c": 1}}}),
    ({"a": {"z": 0}}, [{"type": "set", "path": ["a", "b"], "value": 1}], {"a": {"z": 0, "b": 1}}),
    # merge
    (None, [{"type": "merge", "value": {"a": 1}}], {"a": 1}),
    ({"a": 1, "b": 2}, [{"type": "merge", "path": "", "value": {"b": 3, "c": 4}}], {"a": 1, "b": 3, "c": 4}),
    ({"p": {"x": 1}}, [{"type": "merge", "path": "p", "value": {"y": 2}}], {"p": {"x": 1, "y": 2}}),
    ({}, [{"type": "merge", "path": ["s", "t"], "value": {"y": 2}}], {"s": {"t": {"y": 2}}}),
    # increment / decrement
    (None, [{"type": "increment", "path": "n", "by": 2}], {"n": 2}),
    ({"n": 1}, [{"type": "increment", "path": "n"}], {"n": 2}),  # by defaults to 1
    ({"n": 1.5}, [{"type": "increment", "path": "n", "by": 1}], {"n": 2.5}),
    ({"n": 10}, [{"type": "decrement", "path": "n", "by": 3}], {"n": 7}),
    (None, [{"type": "decrement", "path": "n"}], {"n": -1}),
    (4, [{"type": "increment", "path": "", "by": 1}], 5),  # the root itself
    (None, [{"type": "increment", "by": 7}], 7),
    ({"a": {"n": 1}}, [{"type": "increment", "path": ["a", "n"], "by": 1}], {"a": {"n": 2}}),
    # append
    (None, [{"type": "append", "value": 1}], [1]),
    ([1], [{"type": "append", "path": "", "value": [2]}], [1, [2]]),
    ({"l": [1]}, [{"type": "append", "path": "l", "value": 2}], {"l": [1, 2]}),
    ({"s": "ab"}, [{"type": "append", "path": "s", "value": "c"}], {"s": "abc"}),
    ({}, [{"type": "append", "path": ["x", "events"], "value": {"k": 1}}], {"x": {"events": [{"k": 1}]}}),
    # remove
    ({"a": 1, "b": 2}, [{"type": "remove", "path": "a"}], {"b": 2}),
    ({"a": 1}, [{"type": "remove", "path": "zz"}], {"a": 1}),
    ({"a": {"b": 1, "c": 2}}, [{"type": "remove", "path": ["a", "b"]}], {"a": {"c": 2}}),
    ({"a": 1}, [{"type": "remove", "path": ["x", "y"]}], {"a": 1}),  # nothing on the way: nothing to do
    (None, [{"type": "remove", "path": "a"}], {}),
    # several, in order
    ({"count": 0, "status": "pending"},
     [{"type": "increment", "path": "count", "by": 1}, {"type": "set", "path": "status", "value": "paid"}],
     {"count": 1, "status": "paid"}),
    ({"x": 1}, [], {"x": 1}),
])
def test_ops(value: Any, ops: list[dict[str, Any]], expected: Any) -> None:
    before = copy.deepcopy(value)
    assert apply_ops(value, ops) == expected
    assert value == before  # the input is never mutated


@pytest.mark.parametrize(("value", "ops", "error", "words"), [
    ({}, [{"type": "multiply", "path": "n"}], UnknownUpdateOp, ["ops[0]", "'multiply'", "set, merge"]),
    ({}, [{"path": "n"}], UnknownUpdateOp, ["unknown op type None"]),
    ({}, ["set"], UpdateOpError, ["ops[0] must be an object", "'set'"]),
    ({}, {"type": "set"}, UpdateOpError, ["ops must be a list"]),
    ({"s": "abc"}, [{"type": "increment", "path": "s", "by": 1}], UpdateTypeError,
     ["ops[0] increment at path 's'", "expected a number", "'abc'"]),
    ({"s": True}, [{"type": "decrement", "path": "s"}], UpdateTypeError, ["decrement at path 's'", "True"]),
    ({"n": 1}, [{"type": "increment", "path": "n", "by": "2"}], UpdateTypeError, ["'by' must be a number", "'2'"]),
    ({"n": 1}, [{"type": "increment", "path": "n", "by": True}], UpdateTypeError, ["'by' must be a number"]),
    (5, [{"type": "set", "path": "a", "value": 1}], UpdatePathError,
     ["ops[0] set at path 'a'", "a number (5), not an object"]),
    ({"a": [1]}, [{"type": "set", "path": ["a", "b"], "value": 1}], UpdatePathError,
     ["['a', 'b']", "'a' is an array (of 1), not an object"]),
    ({"a": {"b": "x"}}, [{"type": "merge", "path": ["a", "b", "c"], "value": {}}], UpdatePathError,
     ["['a', 'b'] is a string ('x'), not an object"]),
    ({"a": 1}, [{"type": "merge", "path": "a", "value": {"k": 1}}], UpdateTypeError,
     ["merge at path 'a'", "cannot merge an object into a number (1)"]),
    ({}, [{"type": "merge", "value": [1]}], UpdateTypeError, ["merge value must be an object", "[1]"]),
    ({"n": 3}, [{"type": "append", "path": "n", "value": 1}], UpdateTypeError, ["cannot append to a number (3)"]),
    ({"s": "a"}, [{"type": "append", "path": "s", "value": 1}], UpdateTypeError,
     ["can only append a string to a string"]),
    ({}, [{"type": "set", "path": "a"}], UpdateOpError, ["ops[0] set at path 'a'", "missing 'value'"]),
    ({}, [{"type": "remove", "path": ""}], UpdatePathError, ["remove needs a field path", "state::delete"]),
    ({}, [{"type": "set", "path": 5, "value": 1}], UpdatePathError, ["path must be a string or a list", "5"]),
    ({}, [{"type": "set", "path": ["a", 1], "value": 1}], UpdatePathError, ["path must be a string or a list"]),
    ({}, [{"type": "set", "path": ["a", ""], "value": 1}], UpdatePathError, ["segment '' is not allowed"]),
    ({}, [{"type": "set", "path": "__proto__", "value": 1}], UpdatePathError, ["'__proto__' is not allowed"]),
    ({}, [{"type": "set", "path": ["a"] * (MAX_PATH_DEPTH + 1), "value": 1}], UpdatePathError,
     [f"deeper than {MAX_PATH_DEPTH}"]),
    ({}, [{"type": "remove", "path": "a"}] * (MAX_OPS + 1), UpdateOpError, [f"at most {MAX_OPS} ops"]),
])
def test_bad_ops_raise_naming_the_op_and_path_and_change_nothing(value: Any, ops: Any, error: type[Exception],
                                                                 words: list[str]) -> None:
    before = copy.deepcopy(value)
    with pytest.raises(error) as info:
        apply_ops(value, ops)
    for word in words:
        assert word in info.value.message, info.value.message
    assert value == before
    assert isinstance(info.value, InvocationError)  # a call's failure, as the SDK raises it


def test_a_bad_op_after_good_ones_fails_the_whole_update() -> None:
    value = {"n": 1, "s": "x"}
    with pytest.raises(UpdateTypeError) as info:
        apply_ops(value, [{"type": "increment", "path": "n"}, {"type": "set", "path": "t", "value": 1},
                          {"type": "increment", "path": "s"}])
    assert info.value.index == 2 and info.value.op == "increment" and info.value.path == ["s"]
    assert value == {"n": 1, "s": "x"}


def test_untouched_parts_are_shared_and_touched_ones_copied() -> None:
    big = {"keep": [1, 2, 3]}
    value = {"a": {"n": 1}, "other": big}
    new = apply_ops(value, [{"type": "increment", "path": ["a", "n"]}])
    assert new["other"] is big  # not copied
    assert new["a"] is not value["a"] and value["a"] == {"n": 1}


def test_errors_cross_the_wire_with_their_class_and_code() -> None:
    with pytest.raises(UpdateOpError) as info:
        apply_ops({}, [{"type": "nope"}])
    body = info.value.to_wire()
    again = error_from_wire(body["code"], body["message"])
    assert type(again) is UnknownUpdateOp and again.code == "unknown_update_op"
