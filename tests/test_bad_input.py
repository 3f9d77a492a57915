"""Bad input, in one place: whatever a person gets wrong (a flag, a setting, a study file, a data folder, a cluster, a
run id) ends with one clear line, exit code 2 where it is a command, and nothing written. One table of cases per
entry point, every case of a table checked the same way:

- COMMAND: `python -m flows`, its own parsing and checks, in this process (70 interpreters would cost minutes); a
  few of them through a real process as well (IN_A_PROCESS);
- MLFLOW_RUN: `mlflow run .` (what `make run` calls), whose own run is also deleted;
- FLOW: the flow's parameters (a deployment, a script calling `pipeline`);
- REPORT: `python -m flows report`;
- WORKER: a part on a Dask worker that lacks the data;
- LIBRARY: the library's checks that no outer entry reaches (an outer check stops those inputs first);
- MAKE_TEST: the data step of `make test`.

A bad input is checked at the outermost layer a person meets it (the same setting through the library and the
command: the command). Elsewhere: the deployment refusing a value (test_reliability's serve test, which needs the
deployment), and still FitConfig's own checks (test_options; their messages are cases here too).
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pairs.data import MNIST_FILES

ROOT = Path(__file__).resolve().parent.parent


def tree(folder):
    """Every path under folder with its size: what "nothing written" compares."""
    return {str(p.relative_to(folder)): p.stat().st_size if p.is_file() else None for p in Path(folder).rglob("*")}


def one_line(text):
    lines = text.strip().splitlines()
    return len(lines) == 1 and "Traceback" not in text


# --- COMMAND: python -m flows -------------------------------------------------------------------------------------

class Call:
    """What a command case runs with: its folder (the store goes to store/, which must not appear), the data and the
    environment, which a case's setup may change (monkeypatch: only in this process)."""

    def __init__(self, tmp, data_dir, monkeypatch=None):
        self.tmp, self.data_dir, self.monkeypatch, self.later = tmp, data_dir, monkeypatch, []
        self.env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'store' / 'mlflow.db'}",
                        PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(tmp / "results"), PAIRS_DATA_DIR=data_dir,
                        PYTHONUNBUFFERED="1")
        self.env.pop("MLFLOW_RUN_ID", None)


def data(how, name=None):
    """--data-dir of a folder made bad: a copy of MNIST with `name` missing, truncated, with a wrong magic number
    or a wrong count; empty; a file."""
    def setup(c):
        folder = c.tmp / "mnist"
        if how == "file":
            folder.write_text("not a folder")
            return ["--data-dir", str(folder)]
        raw = folder / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for f in MNIST_FILES if how != "empty" else ():
            if f != name or how != "missing":
                shutil.copy(f"{c.data_dir}/MNIST/raw/{f}", raw / f)
        path = raw / str(name)
        if how == "truncated":
            path.write_bytes(path.read_bytes()[:1000])
        elif how == "magic":
            path.write_bytes(b"\x00\x00\x08\x01" + path.read_bytes()[4:])
        elif how == "count":
            blob = bytearray(path.read_bytes())
            blob[4:8] = (123).to_bytes(4, "big")
            path.write_bytes(bytes(blob))
        return ["--data-dir", str(folder)]
    setup.__name__ = f"data-{how}" + (f"-{name}" if name else "")
    return setup


def default_data_offline(c):
    """./data (no PAIRS_DATA_DIR, no --data-dir) without MNIST and no mirror answering (the cwd: this case's folder)."""
    from torchvision.datasets import MNIST
    c.env.pop("PAIRS_DATA_DIR")
    c.monkeypatch.chdir(c.tmp)
    c.monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    return []


def unwritable_store(c):
    (c.tmp / "blocker").write_text("a file where the store's folder should be")
    c.env["MLFLOW_TRACKING_URI"] = f"sqlite:///{c.tmp / 'blocker' / 'mlruns' / 'mlflow.db'}"
    return []


def no_store_server(c):
    c.env["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"
    return []


def cluster_without_prefect_server(c):
    """A scheduler's port answering (something listens there), and no PREFECT_API_URL."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    c.later.append(s.close)
    c.env.pop("PREFECT_API_URL", None)
    return ["--cluster", f"tcp://127.0.0.1:{s.getsockname()[1]}"]


def study(text):
    """--study of a file holding `text` ({file} in a message: its path)."""
    def setup(c):
        (c.tmp / "bad.toml").write_text(text)
        return ["--study", str(c.tmp / "bad.toml")]
    setup.__name__ = "study " + text.replace("\n", " ")[:60]
    return setup


def file_error(message):
    """What a bad study file says: its path, the key, why."""
    return f"error: {{file}}: {message}"


# (setup: flags, or a function of the Call that returns them; the message, {file} and {tmp} filled in)
COMMAND = [
    # flags (argparse, then the settings' checks); `--profile huge` and `--search-rounds 0`: MLFLOW_RUN, one layer out
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--final-rounds", "-3"], "final_rounds must be a positive integer, got -3"),
    (["--pairs", "0"], "pairs must be a positive integer"),
    (["--folds", "1"], "folds must be at least 2, got 1"),
    (["--batch-sizes", "25,500"], "batch size 500 is larger than a fold's training set (200 pairs"),
    (["--epoch-grid", ","], "expected comma-separated integers, got ','"),
    (["--batch-sizes", "0"], "batch_sizes must be positive integers, got [0]"),
    (["--seed", "abc"], "expected integer, got 'abc'"),
    (["--folds", "2.5"], "expected integer, got '2.5'"),
    (["--normalize", "maybe"], "expected true or false, got 'maybe'"),
    (["--variants", "MLP,CNN"], "invalid choice: 'CNN'"),
    (["--lr", "0"], "lr must be positive"),
    (["--shift", "9"], "weight_decay must be non-negative and shift 0..4, got 0.0 and 9"),
    (["--weight-decay", "-1"], "weight_decay must be non-negative and shift 0..4, got -1.0 and 0"),
    (["--dropout", "1.0"], "dropout must be in [0, 1) and ensemble 1..16, got 1.0 and 1"),
    (["--register-model", "maybe"], "invalid choice: 'maybe' (choose from yes, no)"),
    (["--profil", "quick"], "unrecognized arguments: --profil quick"),  # no abbreviations (`-P profil=quick`)
    (["--trials", "2"], "--trials: only a study with an Optuna search has trials"),
    # flags against a shipped study
    (["--study", "extended", "--trials", "0"], "trials must be a positive integer, got 0"),
    (["--study", "extended", "--epoch-grid", "2"], "extended.toml searches it ([search.space]); leave the flag out"),
    (["--study", "al_gap", "--batch-sizes", "50"], "al_gap.toml sets it in each arm"),
    (["--study", "al_gap_v2"], "error: study al_gap_v2: no such file; shipped studies: al_gap, confirm, extended, "
                               "faithful"),
    # data folders: a folder named is read, never downloaded into
    (["--data-dir", "/nonexistent/mnist"], "error: the data folder /nonexistent/mnist does not exist. Point "
                                           "PAIRS_DATA_DIR (or --data-dir) at"),
    (data("empty"), "MNIST files missing under {tmp}/mnist/MNIST/raw: train-images-idx3-ubyte"),
    (data("file"), "MNIST root {tmp}/mnist is a file, not a folder"),
    (data("missing", "t10k-images-idx3-ubyte"), "MNIST files missing under {tmp}/mnist/MNIST/raw: "
                                                "t10k-images-idx3-ubyte. Download them"),
    (data("truncated", "train-labels-idx1-ubyte"), "corrupt MNIST file {tmp}/mnist/MNIST/raw/train-labels-idx1-ubyte"),
    (data("magic", "train-images-idx3-ubyte"), "corrupt MNIST file {tmp}/mnist/MNIST/raw/train-images-idx3-ubyte: "
                                               "magic 2049"),
    (data("count", "t10k-labels-idx1-ubyte"), "corrupt MNIST file {tmp}/mnist/MNIST/raw/t10k-labels-idx1-ubyte: "
                                              "magic 2049, count 123"),
    (default_data_offline, "error: MNIST is not in {tmp}/data and cannot be downloaded (no mirror answers"),
    # the tracking store
    (unwritable_store, "is not writable"),
    (no_store_server, "the MLflow tracking server http://127.0.0.1:9 cannot be reached"),
    # a cluster
    (["--cluster", "tcp://127.0.0.1:1", "--workers", "2"], "--cluster and --workers exclude each other"),
    (["--workers", "0"], "workers must be a positive integer, got 0"),
    (["--chunk", "0"], "chunk must be a positive integer, got 0"),
    (["--cluster", "127.0.0.1:8786"], "give the scheduler's address, tcp://HOST:PORT"),
    (["--cluster", "tcp://127.0.0.1:1"], "the Dask scheduler tcp://127.0.0.1:1 cannot be reached"),
    (cluster_without_prefect_server, "--cluster needs a Prefect server that every worker reports to"),
    # study files (--study FILE)
    (study("protocol = ["), file_error("not valid TOML")),
    (study("[protocl]\nfolds = 3"),
     file_error("protocl: unknown key; allowed: description, history, headline, protocol, search, arm")),
    (study("[protocol]\nfold = 3"), file_error("protocol.fold: unknown key; allowed: lr,")),
    (study("[protocol]\nfolds = 0"), file_error("protocol.folds: folds must be a positive integer, got 0")),
    (study("[search]\nbudget = 0"), file_error("search.budget: must be a positive integer, got 0")),
    (study("[search]\nmethod = 'random'"), file_error("search.method: 'random' is not a method; allowed: grid, optuna")),
    (study("[search]\nmethod = 'optuna'"), file_error("search.trials: an optuna search needs the number of trials")),
    (study("[search]\ntrials = 4"), file_error("search.trials: only an optuna search has trials")),
    (study("[search]\nmethod = 'optuna'\ntrials = 0"), file_error("search.trials: must be a positive integer, got 0")),
    (study("[search]\nmethod = 'optuna'\ntrials = 2\n[search.space]\nlr = {low = 0.01, high = 0.001}"),
     file_error("search.space.lr: a range needs numbers low < high, got low=0.01, high=0.001")),
    (study("[search]\nmethod = 'optuna'\ntrials = 2\n[search.space]\nlr = {low = 0.0, high = 0.1, log = true}"),
     file_error("search.space.lr: a log range needs low > 0")),
    (study("[search]\nmethod = 'optuna'\ntrials = 2\n[search.space]\ndropout = {low = 0.1, high = 1.5}"),
     file_error("search.space.dropout: dropout must be in [0, 1)")),
    (study("[search.space]\nlr = {low = 0.001, high = 0.01}"),
     file_error("search.space.lr: must be a non-empty list of values, got")),
    (study("[search.space]\nvariant = ['ConvNet_WS', 'MLP_XL']"), file_error("search.space.variant: 'MLP_XL' is not a "
                                                                            "variant")),
    (study("[search.space]\nvariant = ['ConvNet_WS', 'ConvNet']"),
     file_error("search.space.variant: no variant of MLP, a searched")),
    (study("[search.space]\nbatch_size = [25, 5000]"),
     file_error("search.space.batch_size: batch size 5000 is larger than a fold")),
    (study("[final]\nensembel = 3"), file_error("final.ensembel: unknown key; allowed: lr,")),
    (study("[final]\nensemble = 0"), file_error("final: dropout must be in [0, 1) and ensemble 1..16, got 0.0 and 0")),
    (study("[search.space]\nnormalize = []"),
     file_error("search.space.normalize: must be a non-empty list of values, got []")),
    (study("[search.space]\nnormalize = [true]"),
     file_error("search.space.normalize: one value is not a search: set it in [protocol]")),
    (study("[protocol]\nhead = 'mlp'"), file_error("protocol: unknown head 'mlp'; choose from learned, digits")),
    (study("[protocol]\naux_weight = true"), file_error("protocol.aux_weight: aux_weight must be float, got True")),
    (study("[search.space]\ndropuot = [0.1, 0.2]"), file_error("search.space.dropuot: unknown key; allowed: lr, "
                                                               "aux_weight")),
    (study("[search.space]\nschedule = ['constant', 'step']"),
     file_error("search.space.schedule: unknown schedule 'step'; choose from constant")),
    (study("[search]\nbudget = 5\n[search.space]\nnormalize = [false, true]"),
     file_error("search.budget: the grid has 6 candidates per architecture, more than the budget 5")),
    (study("[[arm]]\nname = 'a'\nnormalize = true"),
     file_error("arm[0].ConvNet: the first arm must give batch_size and epochs")),
    (study("[[arm]]\nname = 'a'\nConvNet = {batch_size = 0, epochs = 2}\nMLP = {batch_size = 5, epochs = 2}"),
     file_error("arm[0].ConvNet.batch_size: must be a positive integer, got 0")),
    (study("[[arm]]\nConvNet = {batch_size = 5, epochs = 2}"), file_error("arm[0].name: each arm needs a name of its "
                                                                         "own")),
    (study("[search]\n[[arm]]\nname = 'a'"), file_error("arm: a study has either a [search] or arms, not both")),
    (study("headline = 'b'\n[[arm]]\nname = 'a'\nConvNet = {batch_size = 5, epochs = 2}\n"
           "MLP = {batch_size = 5, epochs = 2}"), file_error("headline: 'b' is not an arm of this study; arms: a")),
    (study("history = 3"), file_error("history: must be a string, got 3")),
    (study("[search]\nmethod = 'optuna'\ntrials = 2\nin_flight = 0"),
     file_error("search.in_flight: must be a positive integer, got 0")),
]


def command_id(setup):
    return " ".join(setup) if isinstance(setup, list) else setup.__name__


def command(case, c):
    """The command line of a case (its setup run on c) and its expected message."""
    setup, message = COMMAND[case]
    flags = setup if isinstance(setup, list) else setup(c)
    return ["--profile", "quick", *flags], message.replace("{file}", str(c.tmp / "bad.toml")).replace(
        "{tmp}", str(c.tmp))


@pytest.mark.parametrize("case", range(len(COMMAND)), ids=[command_id(s) for s, _ in COMMAND])
def test_a_bad_command_is_one_line_exit_2_and_nothing_written(case, data_dir, tmp_path, monkeypatch, capsys):
    from flows.__main__ import run_values
    c = Call(tmp_path, data_dir, monkeypatch)
    argv, message = command(case, c)
    for key in set(os.environ) | set(c.env):
        if c.env.get(key) != os.environ.get(key):
            monkeypatch.setenv(key, c.env[key]) if key in c.env else monkeypatch.delenv(key)
    before = tree(tmp_path)
    try:
        with pytest.raises(SystemExit) as stopped:
            run_values(argv)
    finally:
        for close in c.later:
            close()
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and message in err and one_line(err), err
    assert tree(tmp_path) == before  # no store, no data folder, nothing downloaded


# through `python -m flows` itself: a flag argparse refuses, a value the checks refuse, an empty data folder, a
# corrupt file, no store server
IN_A_PROCESS = ["--device tpu", "--pairs 0", "data-empty", "data-truncated-train-labels-idx1-ubyte", "no_store_server"]


@pytest.fixture(scope="module")
def bad_processes(data_dir, tmp_path_factory):
    """Those cases as processes, two at a time (one per core): {id: (returncode, stderr, CPU seconds, message, files
    before, files after)}. CPU seconds, not wall time: what the process did does not stretch with the machine's load."""
    from concurrent.futures import ThreadPoolExecutor
    ids = [command_id(s) for s, _ in COMMAND]

    def run(name):
        folder = tmp_path_factory.mktemp("bad")
        c = Call(folder, data_dir)
        argv, message = command(ids.index(name), c)
        before = tree(folder)
        with open(folder.parent / f"{folder.name}.stderr", "w+") as err:
            proc = subprocess.Popen([sys.executable, "-m", "flows", *argv], env=c.env, stdout=subprocess.DEVNULL,
                                    stderr=err, cwd=ROOT)
            timer = threading.Timer(300, proc.kill)  # a hang is a failure, not a wait for CI's limit
            timer.start()
            _, status, usage = os.wait4(proc.pid, 0)
            timer.cancel()
            err.seek(0)
            return (os.waitstatus_to_exitcode(status), err.read(), usage.ru_utime + usage.ru_stime, message, before,
                    tree(folder))
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(IN_A_PROCESS, pool.map(run, IN_A_PROCESS)))


@pytest.mark.parametrize("name", IN_A_PROCESS)
def test_a_bad_command_exits_2_before_any_work(bad_processes, name):
    code, err, cpu_seconds, message, before, after = bad_processes[name]
    assert code == 2 and message in err and one_line(err), err[-2000:]
    assert cpu_seconds < 20, cpu_seconds  # imports and checks (about 4 s); a Prefect server and training cost more
    assert after == before


# --- MLFLOW_RUN: mlflow run . (make run) --------------------------------------------------------------------------

MLFLOW_RUN = [
    (["-P", "profile=quik"], "error: argument --profile: invalid choice: 'quik'"),  # argparse refuses it
    (["-P", "profile=quick", "-P", "search_rounds=0"], "error: search_rounds must be a positive integer, got 0"),
    (["-e", "report", "-P", "run_id=deadbeef"], "error: Run with id=deadbeef not found (tracking store {store};"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args,message", MLFLOW_RUN, ids=[" ".join(a) for a, _ in MLFLOW_RUN])
def test_a_refused_mlflow_run_is_one_line_and_leaves_no_run_behind(tmp_path, data_dir, args, message):
    """One error line (mlflow run adds its own lines around it), and no run left in the runs list: the run mlflow
    run opened is ended FAILED and deleted; a run of ours that was there before stays."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PAIRS_DATA_DIR=data_dir,
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("MLFLOW_RUN_ID", None)
    client = MlflowClient(uri)
    exp = client.create_experiment("bad")
    kept = client.create_run(exp).info.run_id
    out = subprocess.run(["mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", "bad", *args],
                         env=env, capture_output=True, text=True, timeout=300)
    ours = [ln for ln in out.stderr.splitlines() if "error: " in ln]
    assert out.returncode != 0 and len(ours) == 1 and message.replace("{store}", uri) in ours[0], out.stderr[-2000:]
    assert [r.info.run_id for r in client.search_runs([exp])] == [kept], out.stderr[-2000:]
    deleted = client.search_runs([exp], run_view_type=ViewType.DELETED_ONLY)
    assert [r.info.status for r in deleted] == ["FAILED"]


# --- FLOW: the flow's parameters (a deployment, a script) ---------------------------------------------------------

FLOW = [  # the settings' checks run in the flow as well: the command's cases, less those a list or a choice settles
    ({"batch_sizes": []}, "batch_sizes must not be empty"),
    ({"epoch_grid": [25, 0]}, "epoch_grid must be positive integers"),
    ({"profile": "huge"}, "profile: Input should be 'full' or 'quick'"),  # Prefect's validation of the typed parameters
    ({"device": "tpu"}, "device: Input should be 'cpu', 'cuda' or 'auto'"),
]


@pytest.mark.parametrize("kwargs,message", FLOW, ids=[str(k) for k, _ in FLOW])
def test_bad_flow_parameters_fail_before_any_run(prefect_env, data_dir, store, tmp_path, kwargs, message):
    from prefect.exceptions import ParameterTypeError

    from flows.pipeline import pipeline
    before = tree(tmp_path)
    with pytest.raises((ValueError, ParameterTypeError), match=re.escape(message)):
        pipeline(data_dir=data_dir, experiment="bad", **kwargs)
    assert tree(tmp_path) == before  # not even the store's database


# --- REPORT: python -m flows report -------------------------------------------------------------------------------

def test_a_report_of_a_run_that_is_not_a_pipeline_is_one_line_exit_2(quick_run, tmp_path, capsys, monkeypatch):
    """A fit run's id (what the MLflow UI shows first) gets one line naming its pipeline run, and no report. (A run
    that is not there: MLFLOW_RUN, `-e report`.)"""
    from conftest import fit_runs
    from flows.report import main
    monkeypatch.setenv("MLFLOW_TRACKING_URI", quick_run["uri"])
    monkeypatch.chdir(tmp_path)  # (reports/ of the cwd: where a report would go)
    root = quick_run["first"]["run_id"]
    fit = next(r for r in fit_runs(quick_run["client"], "quick") if r.data.tags.get("pairs.pipeline_run") == root)
    assert main([fit.info.run_id]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: run {fit.info.run_id} is a fit run, not a pipeline run: its pipeline run is {root}"
    assert tree(tmp_path) == {}


@pytest.mark.parametrize("files,message", [
    ({}, "no {folder}/run.json: a folder to rebuild holds run.json"),
    ({"run.json": '{"protocol": {}, "meta": {}}'}, "no fit records {folder}/final_fits.json, {folder}/search_fits.json"),
])
def test_a_folder_to_rebuild_without_its_inputs_is_one_line_exit_2(files, message, tmp_path, capsys):
    """`report --from FOLDER` on a folder that lacks run.json or the fit records says which, and writes nothing."""
    from flows.report import main
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    before = tree(tmp_path)
    assert main(["--from", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(folder=tmp_path)) and one_line(err), err
    assert tree(tmp_path) == before


# --- WORKER: a part on a Dask worker ----------------------------------------------------------------------

def test_a_worker_without_the_data_says_which_worker_in_one_line(tmp_path):
    from flows.tasks import train
    from pairs.groups import search_groups
    from pairs.protocol import PROFILES
    group = search_groups(PROFILES["quick"])[0]
    with pytest.raises(RuntimeError) as e:
        train.fn(group, (), str(tmp_path), "cpu", threads=1)
    said = str(e.value)
    assert f"on Dask worker {socket.gethostname()} " in said and f"MNIST files missing under {tmp_path}" in said, said
    assert one_line(said)
    assert tree(tmp_path) == {}


# --- LIBRARY: checks no outer entry reaches -----------------------------------------------------------------------

def unstackable():
    from torch import nn

    from pairs.models import PairNet
    from pairs.stacked import Stacked
    model = PairNet("MLP", weight_sharing=True)
    model.branch1.insert(1, nn.Tanh())
    Stacked([model], "cpu")


def call(name, *args):
    def run():
        module, function = name.rsplit(".", 1)
        getattr(__import__(module, fromlist=[function]), function)(*args)
    return run


LIBRARY = [  # (the command refuses these inputs first: its choices, folds >= 2)
    ("build('CNN')", call("pairs.models.build", "CNN"), ValueError,
     "unknown variant 'CNN'; choose from ConvNet, ConvNet_WS, ConvNet_AL, ConvNet_WS_AL"),
    ("a layer Stacked cannot stack", unstackable, TypeError,
     "cannot stack layer 1 of the digit branch (Tanh); supported: Conv2d"),
    ("kfold(10, 1)", call("pairs.data.kfold", 10, 1, 0), ValueError, "need 2 <= folds <= 10, got 1"),
    ("paired of unequal lengths", call("pairs.stats.paired", [0.1], [0.1, 0.2]), ValueError,
     "paired samples differ in length: 1 and 2"),
]


@pytest.mark.parametrize("name,run,error,message", LIBRARY, ids=[c[0] for c in LIBRARY])
def test_a_bad_library_call_is_one_clear_error(name, run, error, message):
    with pytest.raises(error) as e:
        run()
    assert message in str(e.value) and one_line(str(e.value)), str(e.value)


# --- MAKE_TEST: the data step of make test ------------------------------------------------------------------------

def test_no_data_for_make_test_stops_the_session_with_what_to_do(tmp_path):
    """`make test` on a fresh clone: an empty data folder and downloads refused (every proxy a closed port, so on a
    machine with internet too) stop the session before any test, with the message that names the files, and leave no
    file in the folder."""
    env = dict(os.environ, PAIRS_DATA_DIR=str(tmp_path), HTTP_PROXY="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    env.pop("NO_PROXY", None), env.pop("no_proxy", None)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_data.py::test_derive_seed_is_stable_and_distinct"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-3000:]
    assert f"tests need real MNIST: MNIST files missing under {tmp_path / 'MNIST' / 'raw'}: train-images-idx3-ubyte, " \
           "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte" in text, text[-3000:]
    assert "PAIRS_DATA_DIR" in text and "passed" not in text, text[-3000:]
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
