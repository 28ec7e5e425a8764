"""``iii-supervisor queue ls | dlq NAME | redrive NAME [MESSAGE_ID]``: thin, over the control socket."""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from ...clitools import add_common, control_client, print_json, table
from ...config import Config


def add_commands(sub: Any) -> None:
    queue = sub.add_parser("queue", help="inspect and repair queues (ls, dlq, redrive, discard)")
    actions = queue.add_subparsers(dest="queue_command", required=True)

    ls = actions.add_parser("ls", help="queues and topic subscribers: ready, in flight, delayed, dead")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_common(ls)
    ls.set_defaults(func=cmd_ls)

    dlq = actions.add_parser("dlq", help="dead letters of a queue or topic")
    dlq.add_argument("name", help="queue or topic name")
    dlq.add_argument("--limit", type=int, default=50)
    dlq.add_argument("--offset", type=int, default=0)
    dlq.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_common(dlq)
    dlq.set_defaults(func=cmd_dlq)

    redrive = actions.add_parser("redrive", help="deliver dead letters again (attempts reset)")
    redrive.add_argument("name", help="queue or topic name")
    redrive.add_argument("message_id", nargs="?", help="only this message (default: every dead letter)")
    add_common(redrive)
    redrive.set_defaults(func=cmd_redrive)

    discard = actions.add_parser("discard", help="delete one dead letter")
    discard.add_argument("name", help="queue or topic name")
    discard.add_argument("message_id")
    add_common(discard)
    discard.set_defaults(func=cmd_discard)


def cmd_ls(args: argparse.Namespace, config: Config) -> int:
    with control_client(args, config) as client:
        rows = client.call("engine::queue::topic_stats")["queues"]
    if args.json:
        print_json(rows)
        return 0
    print(table(["QUEUE/TOPIC", "SUBSCRIBER", "TYPE", "SUBSCRIBERS", "READY", "IN FLIGHT", "DELAYED", "DEAD"], [
        [r["name"] if r["kind"] == "queue" else f"topic:{r['name']}", r["subscriber"] or "-", r["type"] or "-",
         "-" if r["subscribers"] is None else str(r["subscribers"]),
         str(r["ready"]), str(r["in_flight"]), str(r["delayed"]), str(r["dead"])] for r in rows]))
    return 0


def cmd_dlq(args: argparse.Namespace, config: Config) -> int:
    with control_client(args, config) as client:
        result = client.call("engine::queue::dlq_messages",
                             {"queue": args.name, "limit": args.limit, "offset": args.offset})
    messages = result["messages"]
    if args.json:
        print_json(messages)
        return 0
    print(table(["MESSAGE", "FUNCTION", "ATTEMPTS", "ERROR", "DATA"], [
        [m["message_id"], m["function_id"], str(m["attempts"]), _cut(m["error"] or "", 60),
         _cut(orjson.dumps(m["data"]).decode(), 60)] for m in messages]))
    return 0


def cmd_redrive(args: argparse.Namespace, config: Config) -> int:
    with control_client(args, config) as client:
        if args.message_id is None:
            result = client.call("iii::queue::redrive", {"queue": args.name})
            print(f"redriven {result['redriven']} message(s) of {args.name}")
        else:
            client.call("iii::queue::redrive_message", {"queue": args.name, "message_id": args.message_id})
            print(f"redriven message {args.message_id} of {args.name}")
    return 0


def cmd_discard(args: argparse.Namespace, config: Config) -> int:
    with control_client(args, config) as client:
        client.call("iii::queue::discard_message", {"queue": args.name, "message_id": args.message_id})
    print(f"discarded message {args.message_id} of {args.name}")
    return 0


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
