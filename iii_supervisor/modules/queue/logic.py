"""The queue's decisions, without I/O: settings, retry schedule, dead letters, lanes, fifo groups.

Vocabulary
----------
- A **lane** is one line of delivery with its own settings and in-flight limit: a named queue
  (``[queues.payments]``; its messages name their function) or one subscriber of a topic (the
  pair topic + function; every subscribed function has its own lane, so each gets its own copy,
  and several bindings of the same function share that lane's messages).
- **Attempts** are counted one way everywhere: attempt 1 is the first delivery; ``max_retries =
  N`` allows N retries, so N + 1 attempts in all. After attempt *a* fails, the next one waits
  ``backoff_ms × 2^(a−1)`` (capped at ``max_backoff_ms``); after attempt N + 1 fails the message
  is dead-lettered with its last error and attempt count. A delivery interrupted by a supervisor
  crash is not counted (it was never answered); one whose worker died is (``invocation_stopped``).

Times given to :class:`Lane` are in the caller's clock (the module passes trio's monotonic
clock; tests pass numbers).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import deque
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import orjson

from ...errors import EnqueueError

DEFAULT_QUEUE = "default"
#: messages a lane holds in memory (ready + in flight + waiting to retry); more stay on disk only
DEFAULT_WINDOW = 4096
#: ... and at most this many bytes of message data (so large messages cannot fill the memory)
DEFAULT_WINDOW_BYTES = 32 * 1024 * 1024


def _non_negative(_inst: Any, attribute: attrs.Attribute, value: int) -> None:  # type: ignore[type-arg]
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _positive(_inst: Any, attribute: attrs.Attribute, value: int) -> None:  # type: ignore[type-arg]
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class QueueSettings:
    """``[queues.NAME]`` in the config file, and a subscriber's ``config.queue_config``."""

    #: retries after the first attempt (so max_retries + 1 attempts in all)
    max_retries: int = attrs.field(default=3, validator=_non_negative)
    #: wait before the first retry, in ms; doubled for each further retry
    backoff_ms: int = attrs.field(default=1000, validator=_non_negative)
    #: the longest wait between two attempts, in ms
    max_backoff_ms: int = attrs.field(default=300_000, validator=_non_negative)
    #: deliveries in flight at once (per lane)
    concurrency: int = attrs.field(default=10, validator=_positive)
    #: "fifo": messages of one group (``message_group_field`` in the data) strictly in order
    type: Literal["standard", "fifo"] = attrs.field(default="standard",
                                                   validator=attrs.validators.in_(["standard", "fifo"]))
    message_group_field: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.type == "fifo" and not self.message_group_field:
            raise ValueError("a fifo queue needs message_group_field (the data field that names a message's group)")

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1


SETTING_KEYS = frozenset(f.name for f in attrs.fields(QueueSettings))
#: the reference engine's camelCase names of the same settings (its subscribers' queue_config)
SETTING_ALIASES = {"maxRetries": "max_retries", "backoffDelayMs": "backoff_ms", "backoffMs": "backoff_ms",
                   "maxBackoffMs": "max_backoff_ms", "messageGroupField": "message_group_field"}


def parse_settings(raw: Any, *, where: str, base: QueueSettings | None = None) -> QueueSettings:
    """Settings from a plain mapping (a trigger's ``queue_config``); errors name the key and value.

    Raises ``ValueError`` with a message such as ``queue_config.max_retries: expected an integer, got 'x'``.
    """
    if raw is None:
        return base or QueueSettings()
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a table of settings, got {raw!r}")  # noqa: TRY004 - one error type for callers
    values: dict[str, Any] = attrs.asdict(base) if base is not None else {}
    for key, value in raw.items():
        key = SETTING_ALIASES.get(key, key)
        if key not in SETTING_KEYS:
            raise ValueError(f"{where}.{key}: unknown setting (known: {', '.join(sorted(SETTING_KEYS))})")
        if key in ("type", "message_group_field"):
            if not isinstance(value, str) or (key == "type" and value not in ("standard", "fifo")):
                expected = "'standard' or 'fifo'" if key == "type" else "a string"
                raise ValueError(f"{where}.{key}: expected {expected}, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}.{key}: expected an integer, got {value!r}")
        values[key] = value
    try:
        return QueueSettings(**values)
    except ValueError as exc:
        message = str(exc)
        key = message.split(" ", 1)[0]
        raise ValueError(f"{where}.{message}" if key in SETTING_KEYS else f"{where}: {message}") from None


def retry_delay_ms(settings: QueueSettings, failed_attempts: int) -> int:
    """The wait after the ``failed_attempts``-th failed attempt (1 → backoff_ms)."""
    if failed_attempts < 1:
        raise ValueError(f"failed_attempts starts at 1, got {failed_attempts}")
    exponent = min(failed_attempts - 1, 62)  # 2^62 ms is beyond any cap: no huge ints
    return min(settings.backoff_ms * (1 << exponent), settings.max_backoff_ms)


def is_dead(settings: QueueSettings, attempts_made: int) -> bool:
    """True when a message that failed ``attempts_made`` times gets no further attempt."""
    return attempts_made >= settings.max_attempts


def group_of(settings: QueueSettings, data: Any, *, queue: str) -> str | None:
    """The fifo group of ``data`` (None for a standard lane); refuses a message without one."""
    if settings.type != "fifo":
        return None
    field = settings.message_group_field
    assert field is not None
    value = data.get(field) if isinstance(data, dict) else None
    if value is None:
        raise EnqueueError(f"fifo queue {queue!r} needs the field {field!r} in the message data "
                           f"(its group); got {short_json(data)}")
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def short_json(data: Any) -> str:
    """A client's value as JSON, cut so that an error message stays small."""
    text = orjson.dumps(data, default=repr).decode()
    return text if len(text) <= 120 else text[:117] + "..."


# --- lanes ------------------------------------------------------------------------------------


@attrs.define(eq=False, slots=True)
class Message:
    id: int
    function_id: str
    data: Any
    group: str | None = None
    #: failed attempts so far
    attempts: int = 0
    last_error: str | None = None
    #: the condition function already said yes for this delivery
    condition_passed: bool = False
    #: bytes of the encoded data (for the lane's memory bound)
    size: int = 0
    #: the publisher's trace, which the delivery continues (kept in memory only: a message
    #: loaded from disk after a restart is delivered under a new trace)
    traceparent: str | None = None


@attrs.define(eq=False)
class Failure:
    """What to do after a failed attempt: retry at ``due`` or dead-letter (``due`` is None)."""

    attempts: int
    delay_ms: int | None

    @property
    def dead(self) -> bool:
        return self.delay_ms is None


class Lane:
    """Messages of one lane held in memory, and which one goes next.

    Standard lanes hand out ready messages in order, up to ``concurrency`` at once; a failed one
    waits for its retry time and goes behind the ready ones. Fifo lanes keep one line per group:
    a group's head is delivered alone, and stays the head (blocking its group, not the others)
    until it succeeds or is dead-lettered.

    At most ``window`` messages (and ``window_bytes`` of data) are held; while more wait on disk,
    ``backlog`` is set and new messages are not taken into memory (so the order on disk is kept);
    the module refills.
    """

    def __init__(self, name: str, settings: QueueSettings, *, function_id: str | None = None,
                 window: int = DEFAULT_WINDOW, window_bytes: int = DEFAULT_WINDOW_BYTES) -> None:
        self.name = name
        self.settings = settings
        #: the subscriber's function (topic lanes); named queues carry it per message
        self.function_id = function_id
        self.window = window
        self.window_bytes = window_bytes
        #: bytes of data held
        self.bytes = 0
        self.in_flight: dict[int, Message] = {}
        self._ready: deque[Message] = deque()  # standard
        self._groups: dict[str, list[Message]] = {}  # fifo: each group's messages in id order
        self._ready_groups: deque[str] = deque()
        self._delayed: list[tuple[float, int, Message]] = []
        self._seq = itertools.count()
        self._ids: set[int] = set()
        #: more ready messages are on disk than in memory
        self.backlog = False
        #: bumped whenever a message goes to disk only (lets a refill know it raced one)
        self.disk_only_count = 0

    @property
    def fifo(self) -> bool:
        return self.settings.type == "fifo"

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, message_id: int) -> bool:
        return message_id in self._ids

    @property
    def ready_count(self) -> int:
        if self.fifo:
            return sum(len(msgs) for msgs in self._groups.values()) - len(self.in_flight) - len(self._delayed)
        return len(self._ready)

    @property
    def delayed_count(self) -> int:
        return len(self._delayed)

    def accepts(self) -> bool:
        """May a new message go straight into memory (else: disk only, and ``backlog``)?"""
        return not self.backlog and not self.full()

    def full(self) -> bool:
        return len(self._ids) >= self.window or self.bytes >= self.window_bytes

    def add(self, msg: Message, *, due: float | None = None) -> None:
        """Hold ``msg``: ready now, or (``due``) waiting for its retry time."""
        if msg.id in self._ids:
            return
        self._ids.add(msg.id)
        self.bytes += msg.size
        if self.fifo:
            assert msg.group is not None
            line = self._groups.get(msg.group)
            if line is None:
                self._groups[msg.group] = [msg]
                if due is None:
                    self._ready_groups.append(msg.group)
                else:
                    heapq.heappush(self._delayed, (due, next(self._seq), msg))
                return
            pos = bisect.bisect([m.id for m in line], msg.id)
            head_busy = line[0].id in self.in_flight or any(m is line[0] for _, _, m in self._delayed)
            line.insert(max(pos, 1) if head_busy else pos, msg)
            return
        if due is None:
            self._ready.append(msg)
        else:
            heapq.heappush(self._delayed, (due, next(self._seq), msg))

    def take(self) -> Message | None:
        """The next message to deliver, or None (nothing ready, or ``concurrency`` in flight)."""
        if len(self.in_flight) >= self.settings.concurrency:
            return None
        if self.fifo:
            if not self._ready_groups:
                return None
            msg = self._groups[self._ready_groups.popleft()][0]
        else:
            if not self._ready:
                return None
            msg = self._ready.popleft()
        self.in_flight[msg.id] = msg
        return msg

    def succeeded(self, msg: Message) -> None:
        """``msg`` is done (handled, skipped by its condition, or dead-lettered): forget it."""
        self.in_flight.pop(msg.id, None)
        if msg.id in self._ids:
            self._ids.discard(msg.id)
            self.bytes -= msg.size
        if self.fifo:
            assert msg.group is not None
            line = self._groups.get(msg.group)
            if line and line[0] is msg:
                line.pop(0)
                if line:
                    self._ready_groups.append(msg.group)
                else:
                    del self._groups[msg.group]

    def failed(self, msg: Message, error: str, now: float) -> Failure:
        """``msg``'s attempt failed: it waits for its retry, or (``Failure.dead``) is let go."""
        self.in_flight.pop(msg.id, None)
        msg.attempts += 1
        msg.last_error = error
        msg.condition_passed = False
        if is_dead(self.settings, msg.attempts):
            self.succeeded(msg)
            return Failure(msg.attempts, None)
        delay = retry_delay_ms(self.settings, msg.attempts)
        heapq.heappush(self._delayed, (now + delay / 1000, next(self._seq), msg))
        return Failure(msg.attempts, delay)

    def returned(self, msg: Message) -> None:
        """``msg`` was taken but not delivered (its function is not registered): ready again, first."""
        self.in_flight.pop(msg.id, None)
        if self.fifo:
            assert msg.group is not None
            self._ready_groups.appendleft(msg.group)
        else:
            self._ready.appendleft(msg)

    def release_due(self, now: float) -> int:
        """Make the messages whose retry time has come ready again; returns how many."""
        released = 0
        while self._delayed and self._delayed[0][0] <= now:
            _, _, msg = heapq.heappop(self._delayed)
            if msg.id not in self._ids:
                continue
            released += 1
            if self.fifo:
                assert msg.group is not None
                self._ready_groups.append(msg.group)
            else:
                self._ready.append(msg)
        return released

    def next_due(self) -> float | None:
        return self._delayed[0][0] if self._delayed else None

    def drop(self, message_id: int) -> Message | None:
        """Take a message out (discarded, or redriven elsewhere); in-flight ones are left alone."""
        if message_id not in self._ids or message_id in self.in_flight:
            return None
        self._ids.discard(message_id)
        found_size = [m.size for _, _, m in self._delayed if m.id == message_id] + \
            [m.size for m in self._ready if m.id == message_id] + \
            [m.size for line in self._groups.values() for m in line if m.id == message_id]
        self.bytes -= found_size[0] if found_size else 0
        for i, (_, _, m) in enumerate(self._delayed):
            if m.id == message_id:
                self._delayed.pop(i)
                heapq.heapify(self._delayed)
                found = m
                break
        else:
            found = None
        if self.fifo:
            for group, line in list(self._groups.items()):
                for i, m in enumerate(line):
                    if m.id == message_id:
                        line.pop(i)
                        if i == 0:
                            if group in self._ready_groups:
                                self._ready_groups.remove(group)
                            if line:
                                self._ready_groups.append(group)
                        if not line:
                            del self._groups[group]
                        return m
            return found
        for m in self._ready:
            if m.id == message_id:
                self._ready.remove(m)
                return m
        return found

    def ready_messages(self) -> bool:
        """Is any message ready now (regardless of ``concurrency``)?"""
        return bool(self._ready_groups) if self.fifo else bool(self._ready)
