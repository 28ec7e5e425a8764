"""Example worker: the state store and a `state` trigger with the seed's condition snippet.

Try it: `iii-supervisor invoke profiles.visit '{"user": "ann"}'` (twice), then
`iii-supervisor state ls users` and `iii-supervisor logs profiles`.
"""

from iii_supervisor import register_worker

iii = register_worker()


def visit(data):
    user = data.get("user", "ann")
    # atomic: concurrent visits never lose a count
    iii.trigger({"function_id": "state::update", "payload": {"scope": "users", "key": "profile", "ops": [
        {"type": "merge", "value": {"name": user}},
        {"type": "increment", "path": "visits", "by": 1},
    ]}})
    return iii.trigger({"function_id": "state::get", "payload": {"scope": "users", "key": "profile"}})


def profile_changed(event):
    return event.get('event_type') == 'updated' and event.get('key') == 'profile'


def on_profile_update(event):
    print('Profile updated:', event.get('new_value'))
    return {}


iii.register_function({"id": "profiles.visit"}, visit)
condition_fn = iii.register_function({"id": "conditions::profileChanged"}, profile_changed)
fn = iii.register_function({"id": "state::onProfileUpdate"}, on_profile_update)
iii.register_trigger({
    'type': 'state',
    'function_id': fn.id,
    'config': {
        'scope': 'users',
        'condition_function_id': condition_fn.id,
    },
})
