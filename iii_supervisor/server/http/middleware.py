"""HTTP middleware, the pure part: what a middleware function receives, what its answer means.

A middleware is an ordinary function named by a route's ``middleware_function_ids`` (or by the
``[http] middleware`` list, for every route). Before the handler, the front calls each in turn
with :func:`middleware_input` and reads its answer with :func:`read_answer`:

- ``{"action": "continue"}`` — go on to the next middleware, then the handler; an optional
  ``context`` object is merged (shallowly) into the ``context`` the next middleware and the
  handler receive;
- ``{"action": "respond", "response": {status_code?, headers?, body?}}`` — answer the client
  with this response (the same rules as a handler's returned response); nothing after runs.

Anything else is a mistake in the middleware, answered 500 by the front with a message naming
what was wrong (:class:`BadAnswer`). The reference engine's shapes (its ``views.rs``); see
docs/http.md for where this front differs.
"""

from __future__ import annotations

from typing import Any

import attrs

from .messages import Request, Response, render_response

PHASE = "preHandler"


class BadAnswer(ValueError):
    """A middleware's answer is not one of the two shapes; the message says what was wrong."""


@attrs.frozen
class Continue:
    #: what the middleware added to the context (empty if nothing)
    context: dict[str, Any]


@attrs.frozen
class Respond:
    response: Response


def middleware_input(request: Request, pattern: str, params: dict[str, str],
                     context: dict[str, Any]) -> dict[str, Any]:
    """The payload of a ``preHandler`` middleware call (the request without its body, which
    is not read yet for global middleware)."""
    return {
        "phase": PHASE,
        "request": {
            "path_params": params,
            "query_params": request.query,
            "headers": request.headers,
            "method": request.method,
            "path": pattern,
            "request_path": request.path,
        },
        "context": context,
    }


def read_answer(answer: Any) -> Continue | Respond:
    """What a middleware's answer asks for; :class:`BadAnswer` if it is neither shape."""
    if not isinstance(answer, dict):
        raise BadAnswer(f"returned {_show(answer)}, not an object with an 'action'")
    action = answer.get("action")
    if action == "continue":
        context = answer.get("context")
        if context is None:
            return Continue({})
        if not isinstance(context, dict):
            raise BadAnswer(f"returned 'continue' with a context that is not an object: {_show(context)}")
        return Continue(context)
    if action == "respond":
        response = answer.get("response")
        if not isinstance(response, dict):
            raise BadAnswer(f"returned 'respond' without a response object (got {_show(response)})")
        try:
            return Respond(render_response(response))
        except (ValueError, TypeError) as exc:  # (TypeError: a body orjson cannot encode)
            raise BadAnswer(f"returned 'respond' with an invalid response: {exc}") from None
    if action is None:
        raise BadAnswer(f"returned an object without an 'action' (expected 'continue' or 'respond'): "
                        f"{_show(answer)}")
    raise BadAnswer(f"returned the unknown action {_show(action)} (expected 'continue' or 'respond')")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "…"
