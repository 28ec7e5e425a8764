"""A worker written with the official iii SDK, unmodified: the supervisor spawns it with III_URL
(the door's address) and III_TOKEN (its own secret) in its environment.

    curl -XPOST localhost:3111/math/add -d '{"a": 2, "b": 3}' -H 'content-type: application/json'
    iii-supervisor invoke math::add '{"a": 2, "b": 3}'
"""

from iii import register_worker

iii = register_worker()


def add(data):
    return {"status_code": 200, "body": {"sum": data["body"]["a"] + data["body"]["b"]}} if "body" in data \
        else {"sum": data["a"] + data["b"]}


fn = iii.register_function("math::add", add, description="Add a and b")
iii.register_trigger({"type": "http", "function_id": fn.id, "config": {"api_path": "/math/add", "http_method": "POST"}})
