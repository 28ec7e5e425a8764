"""One exception hierarchy for the whole engine.

Every error carries a machine-readable ``code`` (sent on the wire as ``{code, message}``) and a
human ``message`` that names the offending value. The worker SDK raises the same classes, so a
caller sees the same ``code`` whether the failure happened in the engine or in another worker.
"""

from __future__ import annotations

from typing import Any, ClassVar


class EngineError(Exception):
    """Root of every error raised by iii_supervisor."""

    code: ClassVar[str] = "engine_error"

    def __init__(self, message: str, *, code: str | None = None, stacktrace: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]  # per-instance override of the class default
        self.stacktrace = stacktrace

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.stacktrace:
            body["stacktrace"] = self.stacktrace
        return body


# --- protocol -------------------------------------------------------------------------------


class ProtocolError(EngineError):
    """The bytes or messages exchanged on a socket break the wire protocol.

    Whose fault it is decides what happens (h11's split is the model): a
    :class:`RemoteProtocolError` — the peer sent something wrong — closes the connection; a
    :class:`LocalProtocolError` — we could not encode something for the peer (too large) —
    fails only the message or call concerned, and the peer stays connected.
    """

    code = "protocol_error"


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol: the connection is closed after telling it why."""

    code = "protocol_error"


class LocalProtocolError(ProtocolError):
    """We cannot send this message to the peer (e.g. it would exceed the frame limit)."""

    code = "message_too_large"


class FrameTooLarge(RemoteProtocolError):
    code = "frame_too_large"


class MalformedMessage(RemoteProtocolError):
    code = "malformed_message"


class UnknownMessageType(RemoteProtocolError):
    code = "unknown_message_type"


class AuthError(RemoteProtocolError):
    """A connection presented no token, a wrong one, or came from another user."""

    code = "auth_failed"


# --- configuration --------------------------------------------------------------------------


class ConfigError(EngineError):
    code = "config_error"


class RuntimeDirError(EngineError):
    """The runtime directory is unusable or another supervisor already owns it."""

    code = "runtime_dir_error"


# --- store ----------------------------------------------------------------------------------
# The startup failures are ConfigErrors: the supervisor refuses to start (exit 78) rather than
# run with its queue or state silently off.


class DataDirError(ConfigError):
    """The data directory cannot be created or written."""

    code = "data_dir_error"


class DataDirLocked(DataDirError):
    """Another supervisor holds the data directory's lock."""

    code = "data_dir_locked"


class StoreCorrupt(DataDirError):
    """The database file is not a database, fails its integrity check, or has a newer schema."""

    code = "store_corrupt"


class StoreError(EngineError):
    """A store operation failed (after start); the operation had no effect."""

    code = "store_error"


class StoreFull(StoreError):
    """The disk (or the database's size limit) is full: the write was not made; earlier data is intact."""

    code = "store_full"


class StoreClosed(StoreError):
    """The store is not running (not started yet, or shut down)."""

    code = "store_closed"


# --- registry -------------------------------------------------------------------------------


class RegistrationError(EngineError):
    code = "registration_failed"


class FunctionConflict(RegistrationError):
    code = "function_conflict"


class TriggerRegistrationError(RegistrationError):
    code = "trigger_registration_failed"


class InvalidInvocation(RegistrationError):
    """A ``registerfunction``'s ``invocation`` (external HTTP function) is not usable; the message
    names the field."""

    code = "invalid_invocation"


class MissingEnvVar(RegistrationError):
    """An external function's ``auth`` names an environment variable the engine does not have
    (the reference engine's code)."""

    code = "missing_env_var"


# --- invocation -----------------------------------------------------------------------------


class InvocationError(EngineError):
    """A call did not produce a result. ``code`` tells why."""

    code = "invocation_error"


class FunctionNotFound(InvocationError):
    code = "function_not_found"


class InvocationFailed(InvocationError):
    """The handler raised; ``message`` and ``stacktrace`` are the handler's."""

    code = "invocation_failed"


class InvocationStopped(InvocationError):
    """The worker executing (or requesting) the call went away."""

    code = "invocation_stopped"


class InvocationTimeout(InvocationError):
    code = "invocation_timeout"


class EnqueueError(InvocationError):
    code = "enqueue_error"


class WorkerOverloaded(InvocationError):
    """The target worker is not reading its socket: too much is already queued for it."""

    code = "worker_overloaded"


class UpdateOpError(InvocationError):
    """An update operation (``state::update``, ``stream::update``) cannot be applied; nothing was
    changed. ``index``, ``op`` and ``path`` name the operation (see modules/update_ops.py)."""

    code = "invalid_update"

    def __init__(self, message: str, *, index: int | None = None, op: str | None = None,
                 path: list[str] | None = None, code: str | None = None, stacktrace: str | None = None):
        super().__init__(message, code=code, stacktrace=stacktrace)
        self.index = index
        self.op = op
        self.path = path


class UnknownUpdateOp(UpdateOpError):
    code = "unknown_update_op"


class UpdatePathError(UpdateOpError):
    """The op's path is malformed, or goes through something that is not an object."""

    code = "update_path_error"


class UpdateTypeError(UpdateOpError):
    """The value at the path (or the op's operand) has the wrong type (increment of a string …)."""

    code = "update_type_error"


class HttpRequestFailed(InvocationError):
    """An external HTTP function could not be reached (connection refused, DNS, TLS, reset …)."""

    code = "http_request_failed"


class HttpStatusError(InvocationError):
    """An external HTTP function answered with a status of 400 or more."""

    code = "http_error"


class InvalidResponse(InvocationError):
    """An external HTTP function answered a body that is not JSON."""

    code = "invalid_response"


class ResultTooLarge(InvocationError):
    """A result is over the size the engine can deliver (the frame limit)."""

    code = "result_too_large"


class ValueTooLarge(InvocationError):
    """A value is over the module's size limit (the reference engine's code)."""

    code = "VALUE_TOO_LARGE"


class ConnectionLost(EngineError):
    """The peer of a framed connection went away."""

    code = "connection_lost"


_BY_CODE: dict[str, type[EngineError]] = {
    cls.code: cls
    for cls in (
        ProtocolError,
        LocalProtocolError,
        FrameTooLarge,
        MalformedMessage,
        UnknownMessageType,
        AuthError,
        ConfigError,
        DataDirError,
        DataDirLocked,
        StoreCorrupt,
        StoreError,
        StoreFull,
        StoreClosed,
        RegistrationError,
        FunctionConflict,
        TriggerRegistrationError,
        InvalidInvocation,
        MissingEnvVar,
        InvocationError,
        FunctionNotFound,
        InvocationFailed,
        InvocationStopped,
        InvocationTimeout,
        EnqueueError,
        WorkerOverloaded,
        UpdateOpError,
        UnknownUpdateOp,
        UpdatePathError,
        UpdateTypeError,
        HttpRequestFailed,
        HttpStatusError,
        InvalidResponse,
        ResultTooLarge,
        ValueTooLarge,
        ConnectionLost,
    )
}


def error_from_wire(code: str, message: str, stacktrace: str | None = None) -> EngineError:
    """Rebuild the matching exception class from an ``{code, message}`` error body."""
    cls = _BY_CODE.get(code, InvocationError)
    return cls(message, code=code, stacktrace=stacktrace)
