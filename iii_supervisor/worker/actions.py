"""``TriggerAction``: how ``iii.trigger(...)`` delivers a call."""

from __future__ import annotations

from ..protocol import Action


class TriggerAction:
    """``TriggerAction.Void()`` fires and forgets; ``TriggerAction.Enqueue(queue="q")`` goes through
    a named queue. No action (the default) waits for the result."""

    @staticmethod
    def Void() -> Action:  # noqa: N802 - the iii SDKs' spelling
        return Action(type="void")

    @staticmethod
    def Enqueue(queue: str = "default") -> Action:  # noqa: N802
        return Action(type="enqueue", queue=queue)
