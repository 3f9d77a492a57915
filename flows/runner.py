"""Where groups train: the task runner of a pipeline call, entered for the call and left however it ends.

- default: Prefect's ThreadPoolTaskRunner with one thread (torch's threads use the cores); a stop ends the group
  it trains at its next epoch (`check_stopping`, called from the progress hook);
- --workers N: a local Dask cluster of N one-thread worker processes (prefect_dask.DaskTaskRunner);
- --cluster tcp://HOST:PORT: a running Dask cluster.
Every group goes through the runner's `submit`; `outcome` waits for one and says whether it came from the cache.
"""
import contextlib
import sys
import threading
import time

STOPPING = threading.Event()  # set as a call's runner is left: a group training in this process stops


class Stopped(RuntimeError):
    """A group stopped at an epoch's end because its pipeline is stopping."""


def check_stopping():
    if STOPPING.is_set():
        raise Stopped("the pipeline is stopping")


def retry_unless_stopping(task, task_run, state):
    """A failed group is retried (Prefect's retries), unless its pipeline is stopping (on a Dask worker: unless the
    pipeline has set its stop Event)."""
    return not STOPPING.is_set() and not _stop_set(stop_event())


PROGRESS = "pairs-progress"  # the Dask event topic of the epochs trained on workers


def stop_event():
    """The name of the Dask Event a pipeline sets as it leaves its runner: its flow run's, so its workers find it."""
    from prefect.runtime import flow_run
    return f"pairs-stop-{flow_run.id}"


def _stop_set(name):
    """Whether, on a Dask worker, the Event `name` is set (elsewhere: no)."""
    try:
        from distributed import Event, get_worker
        get_worker()
    except (ImportError, ValueError):
        return False
    return Event(name).is_set()


class WorkerEpochs:
    """A group's per-epoch hook on a Dask worker: its epochs go to the flow as Dask events (its progress lines), and
    a pipeline that has stopped (its Event set) stops the group at an epoch's end, as in this process. Both cost a
    message to the scheduler, so they happen at most every EVERY seconds (an epoch of a small part is milliseconds);
    the epochs between are counted into the next event."""
    EVERY = 1.0

    def __init__(self, label, stop):
        self.label, self.stop, self.last, self.pending = label, stop, 0.0, 0

    def __call__(self, epoch, epochs, n):
        from distributed import get_worker
        self.pending += n
        if time.monotonic() - self.last < self.EVERY:
            return
        if _stop_set(self.stop):
            raise Stopped("the pipeline is stopping")
        get_worker().log_event(PROGRESS, {"label": self.label, "epoch": epoch, "epochs": epochs, "n": self.pending})
        self.last, self.pending = time.monotonic(), 0


def task_runner(run):
    """The runner of --cluster, --workers or, by default, one thread of this process."""
    if not (run.cluster or run.workers):
        from prefect.task_runners import ThreadPoolTaskRunner
        return ThreadPoolTaskRunner(max_workers=1)
    # Dask's INFO lines (dozens at a local cluster's start and end) say nothing a user acts on; warnings stay: in this
    # process's loggers (set once distributed is imported: its import sets them from dask's config), and in the
    # environment of the workers a local cluster spawns (their nannies' `env`), with this flow's Prefect API (else
    # each worker would start a temporary server of its own).
    import logging

    from prefect import get_client
    from prefect_dask import DaskTaskRunner
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if run.cluster:
        return DaskTaskRunner(address=run.cluster)
    with get_client(sync_client=True) as client:
        env = {"PREFECT_API_URL": str(client.api_url), "DASK_LOGGING__DISTRIBUTED": "warning"}
    return DaskTaskRunner(cluster_kwargs={"n_workers": run.workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None, "env": env})


def remote(runner):
    """Whether groups train in other processes (Dask): they get their threads and data root as parameters."""
    from prefect.task_runners import ThreadPoolTaskRunner
    return not isinstance(runner, ThreadPoolTaskRunner)


def workers(runner):
    """How many groups the runner trains at once: 1 in this process, else the Dask cluster's workers now."""
    return len(runner.client.scheduler_info()["workers"]) if remote(runner) else 1


@contextlib.contextmanager
def running(run, submitted):
    """The call's runner, entered (a local cluster started). On the way out a group training in this process stops
    at its next epoch; on an error, the `submitted` Dask task runs left open are marked Crashed once the runner
    has stopped (a task Dask gave up on never reports its end)."""
    runner = task_runner(run)
    STOPPING.clear()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(runner)
            if remote(runner):  # the parts still training on workers stop at their next epoch
                stack.callback(_stop_workers, runner, stop_event())
            stack.callback(STOPPING.set)  # (left first)
            yield runner
    except BaseException as e:
        if remote(runner):
            _crash_open_task_runs(list(submitted), e)
        raise


def _stop_workers(runner, name):
    """Set the pipeline's stop Event on the cluster. Best effort: with the scheduler gone, no worker can read it
    either, and the error that ended the call (the cluster failed) is the one to report."""
    from distributed import Event
    try:
        Event(name, client=runner.client).set()
    except Exception as e:  # noqa: BLE001  (OSError, TimeoutError, CommClosedError: the scheduler is gone)
        print(f"could not tell the Dask workers to stop ({type(e).__name__}); their parts end with their "
              "training", file=sys.stderr, flush=True)


def fast_malloc():
    """Called by a group's task on a Dask worker. Dask's nanny starts each worker with MALLOC_TRIM_THRESHOLD_=65536,
    which turns off glibc's growing mmap threshold: every large tensor torch allocates is then mapped and faulted
    in afresh, and training runs 1.6x slower (a search group on one thread: 12.3 s against 7.9 s). This sets the
    thresholds that growth would reach (mmap above 32 MiB, trim above 64 MiB); a no-op where libc is not glibc."""
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD


def outcome(future):
    """A group's result and whether it came from the cache. When Dask itself fails (the scheduler gone, a task given
    up after its workers died), the error says how to resume."""
    try:
        future.wait()  # when Dask fails, the state stays unfinished and asking for the result raises its error
        state = future.state if future.state.is_final() else future.result(raise_on_failure=False)
    except Exception as e:
        raise RuntimeError(f"the Dask cluster failed ({type(e).__name__}: {' '.join(str(e).split())}); finished "
                           "groups are cached: run the same command again once the scheduler and workers are back"
                           ) from None
    return state.result(), state.name == "Cached"


def _crash_open_task_runs(ids, error):
    """Those of these task runs still open once a failed flow's Dask runner has stopped are marked Crashed: a
    task Dask gave up on (its workers died) never reports its end, nor do those a local cluster's workers were
    running when it stopped with the flow."""
    if not ids:
        return
    from prefect import get_client
    from prefect.client.schemas import filters as F
    from prefect.states import Crashed
    try:
        with get_client(sync_client=True) as client:
            for run in client.read_task_runs(task_run_filter=F.TaskRunFilter(
                    id=F.TaskRunFilterId(any_=ids),
                    state=F.TaskRunFilterState(type=F.TaskRunFilterStateType(any_=["RUNNING", "PENDING"])))):
                client.set_task_run_state(run.id, Crashed(message=f"the flow stopped: {type(error).__name__}: "
                                                                  f"{error}"), force=True)
    except Exception as e:  # the server itself may be what failed
        print(f"could not mark this flow's open task runs Crashed ({type(e).__name__}: {e})", file=sys.stderr)
