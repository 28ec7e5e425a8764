"""Example worker: a tiny user store, in the style of the iii documentation's snippets."""

from iii_supervisor import register_worker

iii = register_worker()

users: dict[str, dict] = {}


def create_user(data):
    user = {"id": str(len(users) + 1), "name": data["name"]}
    users[user["id"]] = user
    print(f"created user {user['id']}: {user['name']}")
    return user


async def get_user(data):
    user = users.get(str(data["id"]))
    if user is None:
        raise KeyError(f"no user with id {data['id']}")
    return user


fn = iii.register_function({"id": "users.create"}, create_user)
iii.register_function("users.get", get_user)
