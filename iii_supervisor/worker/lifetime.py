"""How a worker script with no run call keeps serving — with the whole standard library usable.

The iii snippets register their functions and simply end their main code. The connection then
has to outlive the main code, and the handlers run while the interpreter is *finishing*. The
first thing CPython does once the main code has ended is call ``threading._shutdown()``, which

1. sets ``threading._SHUTTING_DOWN`` (from then on ``threading._register_atexit`` raises
   "can't register atexit after shutdown": importing ``concurrent.futures`` fails),
2. runs the threading atexit hooks: ``concurrent.futures``' hook marks every executor shut down
   ("cannot schedule new futures after interpreter shutdown"; ``asyncio.run`` with its default
   executor fails the same way), and
3. joins the non-daemon threads — where a non-daemon connection thread used to keep the process
   serving, with steps 1 and 2 already done.

So the SDK wraps ``threading._shutdown`` (CPython looks the attribute up when it finalises, in
3.11 to 3.14): the wrapper first waits until the connection is over — the supervisor went away,
or the script called ``iii.shutdown()`` — and only then runs the original. Until then nothing in
the process has seen a shutdown begin: no flag is set, no hook has run, the main thread still
counts as alive, and executors, ``multiprocessing`` pools and libraries imported later all work
as they do in a script's main code. (Python 3.12.0 and 3.12.1 refuse to start threads and forks
here whatever we do; 3.12.2 fixed that: gh-113964.)

- A main code that raised (Python has printed the traceback) does not keep a half-registered
  worker serving: the connection is closed and the process exits with status 1, so the
  supervisor restarts it.
- The supervisor going away still ends the process at once: the connection thread calls
  ``os._exit`` whatever the main thread is doing.
- Python deletes ``__main__.__file__`` when the script ends; the wrapper puts it back, since
  ``multiprocessing``'s spawn and forkserver methods re-import the script from it in their
  processes. There, ``register_worker()`` returns a client that does not connect (see
  :func:`in_multiprocessing_child`): the worker itself is connected already.
- A forked child (a ``multiprocessing`` fork pool's process) inherits none of it: its copy of
  the client is not connected.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Protocol


class _Client(Protocol):
    def _main_code_ended(self) -> None: ...

    def _wait_until_closed(self) -> None: ...

    def _close_at_exit(self, reason: str) -> None: ...


_clients: list[_Client] = []
_installed = False
#: ``__main__.__file__`` while the main code runs (Python deletes it when the code ends)
_main_file: str | None = None


def keep_serving_after_main(client: _Client) -> None:
    """Keep the process serving ``client`` after the main code ends (see the module's doc)."""
    global _main_file
    _clients.append(client)
    if _main_file is None:
        _main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    _install()


def forget(client: _Client) -> None:
    if client in _clients:
        _clients.remove(client)


def in_multiprocessing_child() -> bool:
    """True in a process started by ``multiprocessing`` (spawn or forkserver re-import the main
    script there, which calls ``register_worker()`` again: that client must not connect)."""
    mp = sys.modules.get("multiprocessing")
    if mp is None:
        return False
    # while it re-imports the script a spawned process is "inheriting" (multiprocessing's own
    # check against starting processes from an unguarded main); its parent is known only after
    return bool(getattr(mp.current_process(), "_inheriting", False)) or mp.parent_process() is not None


def _main_code_raised() -> bool:
    # set by PyErr_Print when the main code ended with an uncaught exception
    return getattr(sys, "last_exc", None) is not None or getattr(sys, "last_value", None) is not None


def _serve_until_closed() -> None:
    clients = list(_clients)
    main = sys.modules.get("__main__")
    if clients and _main_file is not None and main is not None and not hasattr(main, "__file__"):
        # Python removed it when the script ended; multiprocessing's spawn and forkserver need it
        # to re-import the script in their processes (to find the functions they are sent)
        main.__file__ = _main_file
    try:
        if _main_code_raised():
            for client in clients:
                client._close_at_exit("the main code raised")
        for client in clients:
            client._main_code_ended()  # the worker has registered what it registers: ready
        for client in clients:
            client._wait_until_closed()
    except KeyboardInterrupt:
        for client in clients:
            client._close_at_exit("interrupted")


def _install() -> None:
    global _installed
    if _installed:
        return
    original: Callable[[], None] | None = getattr(threading, "_shutdown", None)
    if original is None:  # not CPython: the non-daemon connection thread still keeps the process up
        return

    def _shutdown() -> None:
        try:
            if threading.current_thread() is threading.main_thread():
                _serve_until_closed()
        finally:
            original()

    threading._shutdown = _shutdown  # type: ignore[attr-defined]
    os.register_at_fork(after_in_child=_clients.clear)  # a forked child is not connected
    _installed = True
