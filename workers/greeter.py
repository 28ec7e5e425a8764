"""Example worker: calls the users worker's functions through the supervisor."""

from iii_supervisor import TriggerAction, register_worker

iii = register_worker()


def greet(data):
    # A sync handler runs in its own thread, so it may block on another worker's answer.
    user = iii.trigger({"function_id": "users.create", "payload": {"name": data.get("name", "world")}})
    iii.trigger({"function_id": "greeter.log", "payload": {"greeted": user["id"]}, "action": TriggerAction.Void()})
    return {"message": f"hello, {user['name']}!", "user": user}


async def log_greeting(data):
    print(f"greeted user {data['greeted']}")


iii.register_function({"id": "greeter.greet"}, greet)
iii.register_function("greeter.log", log_greeting)
