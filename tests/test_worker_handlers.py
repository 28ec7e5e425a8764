"""How the SDK calls a handler: with the payload, or without when it takes no parameter (the iii
docs' ``def cleanup():`` cron handler)."""

from __future__ import annotations

import functools
from typing import Any

from iii_supervisor.worker.client import _is_async, _without_argument


def test_handlers_with_a_parameter_are_kept_as_they_are() -> None:
    def one(data: Any) -> Any:
        return data

    def star(*args: Any) -> Any:
        return args

    for handler in (one, star, functools.partial(lambda a, b: (a, b), 1), print):
        assert _without_argument(handler) is handler


def test_a_handler_without_parameters_is_called_without_the_payload() -> None:
    def cleanup() -> str:
        return "cleaned"

    def keyword_only(*, verbose: bool = False) -> bool:
        return verbose

    assert _without_argument(cleanup)({"trigger": "cron"}) == "cleaned"
    assert _without_argument(keyword_only)(None) is False
    assert _without_argument(lambda: 7)(None) == 7


async def test_an_async_handler_without_parameters() -> None:
    async def cleanup() -> str:
        return "cleaned"

    wrapped = _without_argument(cleanup)
    assert _is_async(cleanup) and _is_async(wrapped)
    assert await wrapped({"trigger": "cron"}) == "cleaned"
