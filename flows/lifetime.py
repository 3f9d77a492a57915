"""How a pipeline process starts and ends: its environment, the processes it starts ending with it, the stop path.

Nothing here runs at import: `start()` is called by `python -m flows` before Prefect is imported, `own_server()`
once a run's settings are checked (or by `serve`), `guard_child()` as flows/pipeline.py is imported (it acts only in
a flow run that `serve` spawned), `runs_ended(tracker, logging)` wraps the flow's body.

Processes the pipeline starts end with it, however it ends (issue 12). Without PREFECT_API_URL, Prefect would start
a temporary server of its own and stop it from an atexit hook: SIGTERM and SIGKILL skip atexit, and the server,
re-parented to PID 1, ran on. So the pipeline owns its server instead: `prefect server start` (API only, on a free
port) as its child, and points Prefect at it (PREFECT_API_URL) before Prefect is imported. On Linux the child asks
the kernel, before it execs the server, for SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG), so the server
is gone 1-4 s after the pipeline however the pipeline ends; a normal end stops it too.
- Under `mlflow run` (MLFLOW_RUN_ID set and the parent is `mlflow run`) the pipeline asks the same for itself, so a
  signal to `mlflow run` alone stops it as a SIGTERM does (runs ended KILLED, its server with it). A flow run that
  `python -m flows serve` spawned likewise ends with `serve` (flows/pipeline.py calls guard_child as it is imported
  there), and uses serve's server (it inherits PREFECT_API_URL).
Only our own children are signalled, by the kernel: nothing is looked up by name or killed by scanning, so a
`prefect server` the user started, other pipelines and other processes are never touched. Elsewhere than Linux,
Prefect's own temporary server is used.
"""
import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading


_PR_SET_PDEATHSIG = 1
_GUARD = "PAIRS_GUARD_PID"  # set to the pid of a guarded `python -m flows`, inherited by its children
_prctl = None


# Prefect's settings are in prefect.toml (the results folder, analytics off, its temporary server's start-up time).
# MLflow reads its settings from the environment alone: defaults here, once, at import; a value already set wins.
ENVIRONMENT = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",  # offline machines: nothing phones home
               "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # not two "View run" lines per fit on a server
SERVER_START_SECONDS = 120  # the server a pipeline owns may take over a minute to start on a loaded 2-core machine


def environment():
    """The environment's defaults for MLflow (a value already set wins); before MLflow is imported."""
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


def _is_mlflow_run(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return "run" in argv and any(os.path.basename(a) == "mlflow" for a in argv)


def _guard(die_with_parent, sig=signal.SIGTERM):
    global _prctl
    if not sys.platform.startswith("linux") or _prctl is not None:
        return
    prctl = ctypes.CDLL(None).prctl
    prctl.argtypes, prctl.restype = [ctypes.c_int] + [ctypes.c_ulong] * 4, ctypes.c_int
    _prctl = prctl
    parent = os.getppid()
    if die_with_parent(parent):
        _die_with_parent(parent, sig)


# The server's process, before it execs `prefect server start`: it dies with the pipeline (argv[1], its pid).
_CHILD = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0); "
          "os.getppid() == int(sys.argv[1]) or os.kill(os.getpid(), signal.SIGTERM); os.execv(sys.argv[2], sys.argv[2:])")
_server = None


def own_server():
    """Without PREFECT_API_URL, start this command's Prefect server (see the module's docstring) and point Prefect at
    it; with one set, or off Linux, nothing. Before Prefect is imported: it reads PREFECT_API_URL once."""
    global _server
    if os.environ.get("PREFECT_API_URL") or not sys.platform.startswith("linux"):
        return
    import socket
    import tempfile
    import time
    import urllib.request
    prefect = os.path.join(os.path.dirname(sys.executable), "prefect")
    deadline = time.time() + SERVER_START_SECONDS
    log = tempfile.TemporaryFile()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _server = subprocess.Popen([sys.executable, "-c", _CHILD, str(os.getpid()), prefect, "server", "start", "--host",
                                "127.0.0.1", "--port", str(port), "--analytics-off", "--log-level",
                                "WARNING"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    atexit.register(_stop_server)
    api = f"http://127.0.0.1:{port}/api"
    while time.time() < deadline and _server.poll() is None:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2):
                break
        except OSError:
            time.sleep(0.3)
    else:
        log.seek(0)
        raise RuntimeError(f"the Prefect server this run starts did not answer on {api}: "
                           + " ".join(log.read().decode(errors="replace").split()[-40:]))
    os.environ["PREFECT_API_URL"] = api
    print(f"Prefect server of this run: {api} (it ends with the run)", file=sys.stderr, flush=True)


def _stop_server():
    if _server and _server.poll() is None:
        _server.terminate()
        try:
            _server.wait(10)
        except subprocess.TimeoutExpired:
            _server.kill()


def guard_process():
    """The guard of a `python -m flows` command (see start)."""
    _guard(lambda parent: "MLFLOW_RUN_ID" in os.environ and _is_mlflow_run(parent))
    os.environ[_GUARD] = str(os.getpid())


def guard_child():
    """In a child of a guarded `python -m flows` (a flow run of `serve`), the same guard: the child dies with its
    parent, by SIGKILL: the server it reports to dies with that parent too, so a SIGTERM's orderly end would wait on
    a dead API (its MLflow runs are then ended KILLED by the next pipeline on the host, as after any kill -9).
    Anywhere else (the command itself, pytest, a notebook) it does nothing."""
    if os.environ.get(_GUARD) == str(os.getppid()):
        _guard(lambda parent: True, signal.SIGKILL)


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
def runs_ended(tracker, logging):
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
                tracker.end_all("KILLED" if stopped else "FAILED")
            except Exception as err:  # e.g. a store still locked by the write the signal interrupted
                print(f"could not end this pipeline's MLflow runs ({err}); the next pipeline on this host ends them "
                      "KILLED", file=sys.stderr, flush=True)
        if stopped and stopped is not e:
            raise stopped from None
        raise
    tracker.end_all()
