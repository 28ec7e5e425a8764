"""Example worker: HTTP endpoints, plain and streaming (the iii documentation's @http patterns)."""

import json

import trio

from iii_supervisor import http, register_worker
from iii_supervisor.types import HttpRequest, HttpResponse

iii = register_worker()


def get_user(req):
    # A plain handler gets the request as a dict and returns {status_code, headers, body}.
    try:
        user = iii.trigger({"function_id": "users.get", "payload": {"id": req["path_params"]["id"]}})
    except Exception as exc:  # users.get raises for an unknown id
        return {"status_code": 404, "body": {"error": str(exc)}}
    return {"status_code": 200, "body": user}


def create_user(req):
    user = iii.trigger({"function_id": "users.create", "payload": req["body"] or {}})
    return {"status_code": 201, "headers": {"location": f"/users/{user['id']}"}, "body": user}


@http
async def events(req: HttpRequest, response: HttpResponse):
    # Server-Sent Events: each frame reaches the client as soon as it is written.
    await response.status(200)
    await response.headers({"content-type": "text/event-stream", "cache-control": "no-cache"})
    for i in range(1, 4):
        frame = f"id: {i}\nevent: tick\ndata: {json.dumps({'count': i})}\n\n"
        await response.writer.write(frame.encode("utf-8"))
        await trio.sleep(0.5)
    await response.writer.close_async()


iii.register_function({"id": "api.users.get"}, get_user)
iii.register_function({"id": "api.users.create"}, create_user)
iii.register_function({"id": "api.events"}, events)
iii.register_trigger({"type": "http", "function_id": "api.users.get",
                      "config": {"api_path": "/users/:id", "http_method": "GET"}})
iii.register_trigger({"type": "http", "function_id": "api.users.create",
                      "config": {"api_path": "users", "http_method": "POST"}})
iii.register_trigger({"type": "http", "function_id": "api.events",
                      "config": {"api_path": "/events", "http_method": "GET"}})
