"""The huey peer of bench_queue.py: SqliteHuey with its defaults and a trivial task."""

import os

from huey import SqliteHuey

huey = SqliteHuey(filename=os.environ.get("HUEY_DB", "huey-bench.db"))


@huey.task()
def trivial(i):
    return i
