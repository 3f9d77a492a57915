"""Processes the pipeline starts end with it, however it ends (issue 12).

Without PREFECT_API_URL, Prefect starts a temporary server (`python -m uvicorn ... create_app`) and stops it
from an atexit hook. SIGTERM (Prefect re-raises it once the flow has ended its runs) and SIGKILL end the
process without atexit, so the server, re-parented to PID 1, ran on for good, one more per stopped run.

On Linux the kernel ends them now (prctl PR_SET_PDEATHSIG: a signal sent to a process when the thread that
forked it ends):
- The temporary server gets SIGTERM when the process that started it dies, and is gone 1-4 s later. It is
  forked from a daemon thread of ours, which lives as long as the process, not from whichever Prefect
  thread asked for it (that thread may end first).
- Under `mlflow run` (MLFLOW_RUN_ID set and the parent is `mlflow run`: `bash -c` exec'd into the command)
  the pipeline takes SIGTERM when `mlflow` dies, so a signal to `mlflow run` alone stops it as a SIGTERM
  does (runs ended KILLED, its server with it). A flow run that `python -m flows serve` spawned (it imports
  flows, not flows.__main__: guard_child) likewise ends with `serve`. mlflow 3.17 and Prefect 3.9 fork
  these from their main thread, which lives as long as their process.
Only our own children are signalled, by the kernel: nothing is looked up by name or killed by scanning, so a
`prefect server` the user started, other pipelines and other processes are never touched. Elsewhere: no-op.
"""
import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future

_PR_SET_PDEATHSIG = 1
_SERVER_MODULE = "prefect.server.api.server"  # starts the temporary server with subprocess.Popen
_GUARD = "PAIRS_GUARD_PID"  # set to the pid of a guarded `python -m flows`, inherited by its children
_jobs = queue.SimpleQueue()
_prctl = None


def _die_with_parent(parent, sig=signal.SIGTERM):
    """Have the kernel send us `sig` when our parent dies; if it already has, no signal will come: act now."""
    _prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)  # best effort: a refusal must not stop the pipeline
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def _spawner():
    while True:
        job, done = _jobs.get()
        try:
            done.set_result(job())
        except BaseException as e:  # noqa: BLE001  (handed to the caller)
            done.set_exception(e)


class _Popen(subprocess.Popen):
    """Forked from our thread, with a parent-death signal."""

    def __init__(self, *args, **kwargs):
        parent, done, init = os.getpid(), Future(), super().__init__
        _jobs.put((lambda: init(*args, preexec_fn=lambda: _die_with_parent(parent), **kwargs), done))
        done.result()


class _Subprocess:
    """`subprocess` as the server module sees it."""
    Popen = _Popen

    def __getattr__(self, name):
        return getattr(subprocess, name)


class _PatchOnImport:
    """Gives the server module our `subprocess` once it is imported (importing it here would add 2-3 s to
    every command, a failing one too)."""

    def find_spec(self, name, path=None, target=None):
        if name != _SERVER_MODULE:
            return None
        sys.meta_path.remove(self)
        import importlib.util
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.subprocess = _Subprocess()
        spec.loader.exec_module = exec_module
        return spec


def _is_mlflow_run(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return "run" in argv and any(os.path.basename(a) == "mlflow" for a in argv)


def _guard(die_with_parent):
    global _prctl
    if not sys.platform.startswith("linux") or _prctl is not None:
        return
    prctl = ctypes.CDLL(None).prctl  # looked up here: a forked child must not dlopen
    prctl.argtypes, prctl.restype = [ctypes.c_int] + [ctypes.c_ulong] * 4, ctypes.c_int
    _prctl = prctl
    parent = os.getppid()
    if die_with_parent(parent):
        _die_with_parent(parent)
    threading.Thread(target=_spawner, name="pairs-spawner", daemon=True).start()
    if _SERVER_MODULE in sys.modules:
        sys.modules[_SERVER_MODULE].subprocess = _Subprocess()
    else:
        sys.meta_path.insert(0, _PatchOnImport())


def guard_process():
    """Called once at the start of every `python -m flows` command, before Prefect starts anything."""
    _guard(lambda parent: "MLFLOW_RUN_ID" in os.environ and _is_mlflow_run(parent))
    os.environ[_GUARD] = str(os.getpid())


def guard_child():
    """Called when flows is imported: in a child of a guarded `python -m flows` (a flow run of `serve`), the
    same guard, and the child dies with its parent. Anywhere else (pytest, a notebook) it does nothing."""
    if os.environ.get(_GUARD) == str(os.getppid()):
        _guard(lambda parent: True)


@contextlib.contextmanager
def signals_held(signums=(signal.SIGINT, signal.SIGTERM)):
    """Ctrl-C and SIGTERM that arrive in the block take effect as it ends, so that a task submitted in it is also
    recorded (a stop waits for the logging it recorded). In the main thread; elsewhere signals stay as they are."""
    got, old = [], {}
    if threading.current_thread() is threading.main_thread():
        for s in signums:
            if signal.getsignal(s) not in (None, signal.SIG_IGN):  # None: a handler set outside Python
                old[s] = signal.signal(s, lambda n, frame: got.append(n))
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if got:
            signal.raise_signal(got[0])
