"""Example worker: durable topics and a named queue (the seed's "Event Chain", plus payments).

    $ curl -s localhost:3111/orders -H 'content-type: application/json' \
        -d '{"id": "o-1", "email": "ann@example.com", "amount": 1500}'
    $ .venv/bin/iii-supervisor queue ls

- ``orders.place`` (HTTP POST /orders) publishes to topic ``order.placed`` and returns at once:
  the message is on disk when ``enqueue`` returns.
- ``orders.process`` (subscribed to ``order.placed``) charges through the named queue
  ``default`` with ``TriggerAction.Enqueue`` and publishes ``order.processed``.
- ``orders.sendConfirmation`` (subscribed to ``order.processed``) "sends" the e-mail.
- ``payments.charge`` fails for amounts over 10000: retried with backoff, then dead-lettered
  (see ``iii-supervisor queue dlq default``, repair with ``iii-supervisor queue redrive default``).
"""

from iii_supervisor import TriggerAction, register_worker

iii = register_worker()


def place_order(req):
    order = req["body"]
    iii.trigger({"function_id": "enqueue", "payload": {"topic": "order.placed", "data": order}})
    return {"status_code": 202, "body": {"accepted": order.get("id")}}


def process_order(order):
    print(f"processing order {order.get('id')}")
    receipt = iii.trigger({"function_id": "payments.charge", "payload": order,
                           "action": TriggerAction.Enqueue(queue="default")})
    print(f"charge of order {order.get('id')} queued: {receipt['messageReceiptId']}")
    iii.trigger({
        "function_id": "enqueue",
        "payload": {"topic": "order.processed", "data": order},
        "action": TriggerAction.Void(),
    })


def send_confirmation(order):
    print(f"confirmation for order {order.get('id')} sent to {order.get('email')}")


def charge(order):
    if order.get("amount", 0) > 10000:
        raise ValueError(f"amount {order['amount']} needs a manual review")
    print(f"charged {order.get('amount')} for order {order.get('id')}")
    return {"charged": order.get("amount")}


iii.register_function({"id": "orders.place"}, place_order)
iii.register_trigger({"type": "http", "function_id": "orders.place",
                      "config": {"api_path": "/orders", "http_method": "POST"}})

process_fn = iii.register_function({"id": "orders.process"}, process_order)
iii.register_trigger({"type": "queue", "function_id": process_fn.id, "config": {"topic": "order.placed"}})

confirm_fn = iii.register_function({"id": "orders.sendConfirmation"}, send_confirmation)
iii.register_trigger({"type": "queue", "function_id": confirm_fn.id, "config": {"topic": "order.processed"}})

iii.register_function({"id": "payments.charge"}, charge)
