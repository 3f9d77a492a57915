"""How a pipeline process starts and ends: its environment, the processes it starts ending with it, the stop path.

Nothing here runs at import: `start()` is called by `python -m flows` before Prefect is imported, `guard_child()`
as flows/pipeline.py is imported (it acts only in a flow run that `serve` spawned), `ended(tracker, logging)`
wraps the flow's body.

Processes the pipeline starts end with it, however it ends (issue 12).

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
  does (runs ended KILLED, its server with it). A flow run that `python -m flows serve` spawned likewise ends
  with `serve`, and its own temporary server with it: flows/pipeline.py calls guard_child as it is imported
  there (to unpickle the flow), before Prefect starts that server. mlflow 3.17 and Prefect 3.9 fork these
  from their main thread, which lives as long as their process.
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

from . import ROOT

_PR_SET_PDEATHSIG = 1
_SERVER_MODULE = "prefect.server.api.server"  # starts the temporary server with subprocess.Popen
_GUARD = "PAIRS_GUARD_PID"  # set to the pid of a guarded `python -m flows`, inherited by its children
_jobs = queue.SimpleQueue()
_prctl = None


# Read by Prefect and MLflow once, at import: cached results stay in the project, not in ~/.prefect; nothing phones home
# (offline machines); the temporary server gets two minutes to start on a loaded 2-core machine.
ENVIRONMENT = {"PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(ROOT / ".cache" / "prefect"),
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
               "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # not two "View run" lines per fit on a server


def environment():
    """The environment's defaults for Prefect and MLflow (a value already set wins); before Prefect is imported."""
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def start():
    """Called once at the start of every `python -m flows` command, before Prefect starts anything."""
    environment()
    guard_process()


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
            if getattr(module, "subprocess", None) is not subprocess:  # a Prefect that starts it otherwise
                print(f"warning: {name} no longer uses subprocess: the temporary Prefect server is not ended with "
                      "this process (flows.lifetime)", file=sys.stderr)
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
    """The guard of a `python -m flows` command (see start)."""
    _guard(lambda parent: "MLFLOW_RUN_ID" in os.environ and _is_mlflow_run(parent))
    os.environ[_GUARD] = str(os.getpid())


def guard_child():
    """In a child of a guarded `python -m flows` (a flow run of `serve`), the same guard, and the child dies with its
    parent. Anywhere else (the command itself, pytest, a notebook) it does nothing."""
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


def signal_behind(e):
    """The Ctrl-C or SIGTERM behind `e`, if any. A signal that lands while Prefect creates a task run comes out as
    Prefect's own error ("Task run is not set", raised by its crash handler) with the signal as its context."""
    from prefect.exceptions import TerminationSignal
    while e is not None and not isinstance(e, (KeyboardInterrupt, TerminationSignal)):
        e = e.__context__
    return e


@contextlib.contextmanager
def ended(tracker, logging):
    """The pipeline's MLflow runs ended however the body ends: FINISHED; FAILED on an error; KILLED on Ctrl-C or
    SIGTERM (Prefect's TerminationSignal), after the fits trained so far are logged (`logging`: their futures)."""
    from prefect.futures import wait
    try:
        yield
    except BaseException as e:
        stopped = signal_behind(e)
        with signals_held():  # a second signal (`mlflow run` forwards its SIGTERM, then dies: the kernel sends
            # another) must not cut the stop short: it takes effect once the runs are ended
            wait(logging, timeout=30)  # the fits trained are logged (a few seconds at most) before the runs end
            if stopped:  # Prefect re-raises SIGTERM after this, so the message cannot wait for the CLI
                print(f"stopped by {'Ctrl-C' if isinstance(stopped, KeyboardInterrupt) else 'SIGTERM'}: finished "
                      "groups are cached and logged; run the same command again to resume", file=sys.stderr,
                      flush=True)
            try:
                tracker.finish("KILLED" if stopped else "FAILED")
            except Exception as err:  # e.g. a store still locked by the write the signal interrupted
                print(f"could not end this pipeline's MLflow runs ({err}); the next pipeline on this host ends them "
                      "KILLED", file=sys.stderr, flush=True)
        if stopped and stopped is not e:
            raise stopped from None
        raise
    tracker.finish()
