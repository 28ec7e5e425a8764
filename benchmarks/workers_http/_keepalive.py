"""Work around a supervisor bug for the benchmark workers: clear PR_SET_PDEATHSIG.

The supervisor spawns workers with ``trio.lowlevel.open_process(..., preexec_fn=_set_pdeathsig)``.
trio runs ``subprocess.Popen`` in a *thread of its thread cache*, and the kernel's parent-death
signal fires when the **thread** that forked the child exits, not the process. trio's cached
threads exit after 10 s idle (``trio._core._thread_cache.IDLE_TIMEOUT``), so every worker gets
SIGTERM ~10 s after it was spawned (and again after each restart). A benchmark longer than 10 s
cannot run like that, so these workers clear the signal for themselves at startup.

Safe: a worker still exits when the supervisor goes away (the SDK's ``exit_on_disconnect``).
The file name starts with ``_`` so the supervisor does not start it as a worker.
"""

import ctypes
import sys

PR_SET_PDEATHSIG = 1

if sys.platform == "linux":
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, 0)
    except (OSError, AttributeError):
        pass
