"""A pipeline call's report: written as artifacts of its run at the end of the call (`writer`), and rebuilt later
without training: `python -m flows report RUN_ID [RUN_ID ...] [--out DIR]` from the tracking store, `--from FOLDER`
from a published folder; with several runs or folders, their final rounds beside each other (pairs.report.beside)."""
import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from pairs import arms, tables
from pairs import report as reports
from pairs.protocol import RENAMED, Protocol, selection_of
from pairs.studies import Study

from . import ROOT
from .preflight import tracking_uri
from .tracking import download_artifacts


def writer(call, selection, write):
    """What writes the call's report into a folder: run.json (protocol, study, selection and `meta`: machine, wall
    time, versions, command, launcher, smoke), then `write(folder, meta)` (a pairs.report function)."""
    meta = run_meta(call.tracker, call.device, time.time() - call.began, call.smoke)
    run = {"protocol": asdict(call.protocol), "study": asdict(call.study)} | (
        {"selection": {a: c.as_dict() for a, c in selection.items()}} if selection else {})

    def report(out):
        (out / "run.json").write_text(json.dumps(run | {"meta": meta}))
        return write(out, meta | {"seen": seen_by(call.protocol)}) + [out / "run.json"]
    return report


PUBLISHED = ROOT / "docs" / "results"


def final_rounds(protocol):
    """What identifies a run's final rounds: (base seed, pairs per split, rounds)."""
    p = protocol if isinstance(protocol, dict) else asdict(protocol)
    base = p["seed"] if p.get("final_seed") is None else p["final_seed"]
    return base, p["pairs"], p["final_rounds"]


def confirmations(selection, protocol):
    """Published studies of arms that evaluated this selection ({architecture: settings}) on final rounds other than
    this protocol's: per such arm and variant, its mean test error with a 95% interval, on rounds that (folders) had
    shown. An arm matches when every setting both name is equal (its ensemble may differ, and is said)."""
    found = []
    for path in sorted(PUBLISHED.glob("**/run.json")):
        run = json.loads(path.read_text())
        arms_ = run.get("study", {}).get("arms") or []
        if not arms_ or final_rounds(run["protocol"])[:2] == final_rounds(protocol)[:2]:
            continue
        other, table = _protocol(run["protocol"]), None
        seen, folder = seen_by(other, path.parent), path.parent.relative_to(ROOT).as_posix()
        for name, per in arms_:
            for arch, chosen in selection.items():
                mine = per.get(arch, {}) | {"normalize": run["protocol"].get("normalize", False)}
                if not all(mine[k] == v for k, v in chosen.items() if k in mine and k != "ensemble"):
                    continue
                if table is None:
                    table = tables.arms_table(reports.load_records(records_in(path.parent, "final_fits.json")), other, arms_)
                for row in table[(table.arm == name) & (table.variant == chosen.get("variant", arch))].itertuples():
                    found.append({"folder": folder, "arm": name,
                                  "ensemble": mine.get("ensemble", 1), "variant": row.variant,
                                  "mean": row.test_error_mean, "low": row.mean_ci_low, "high": row.mean_ci_high,
                                  "rounds": row.rounds, "base": final_rounds(other)[0], "seen": seen})
    return found


def _protocol(values):
    """A Protocol from run.json's dict (written before some settings were renamed)."""
    renamed = RENAMED | {"epochs": "epoch_grid"}
    return Protocol(**{renamed.get(k, k): tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def seen_by(protocol, folder=None):
    """The published folders (docs/results/...) that evaluated on any of this protocol's final rounds, but `folder`:
    test rounds are spent once a report has shown them."""
    base, pairs, _ = final_rounds(protocol)
    seen = []
    for path in sorted(PUBLISHED.glob("**/run.json")):
        if folder is not None and path.parent.resolve() == Path(folder).resolve():
            continue
        other = json.loads(path.read_text())["protocol"]
        if final_rounds(other)[:2] == (base, pairs):
            seen.append(path.parent.relative_to(ROOT).as_posix())
    return tuple(seen)


def run_meta(tracker, device, seconds, smoke):
    """What the report says about the call: machine, wall time, versions, command, who started it, smoke."""
    import mlflow
    import prefect
    import torch
    from prefect.runtime import deployment

    from pairs.machine import describe_machine, matmul_gflops

    if not tracker.owned:
        launcher = f"started by `mlflow run` (run {tracker.run_id})"
    elif deployment.name:
        launcher = f"started by the Prefect deployment pairs/{deployment.name}"
    else:
        launcher = "started directly"
    meta = {"machine": describe_machine(device), "device": device,
            "wall_time": f"{seconds:.0f} s for this pipeline call (groups found in the cache take no time)",
            "versions": f"mlflow {mlflow.__version__}, prefect {prefect.__version__}",
            "command": "python -m flows " + shlex.join(sys.argv[1:]), "launcher": launcher, "smoke": smoke}
    # The benchmark quotes a full run's training against its own machine's float32 ceiling ("the limit"), so a full
    # run records it as it ends (a median of ten 2048^3 matmuls: 5 s on a loaded 2-core EPYC); a smoke run is quoted
    # nowhere.
    return meta | ({} if smoke else {"ceiling_gflops": round(matmul_gflops(torch.device(device)))})


class NotAPipelineRun(ValueError):
    """A run id that names another kind of run (a fit, a stage, a row) or a pipeline that wrote no report."""


def pipeline_run(run_id):
    """Checks that run_id is a pipeline run with a report, before any download; says what to give instead."""
    from mlflow.tracking import MlflowClient
    run = MlflowClient(tracking_uri()).get_run(run_id)
    kind, parent = run.data.tags.get("pairs.kind"), run.data.tags.get("pairs.pipeline_run")
    if kind and kind != "pipeline":
        raise NotAPipelineRun(f"run {run_id} is a {kind} run, not a pipeline run" + (
            f": its pipeline run is {parent}" if parent and parent != run_id else ""))
    if run.info.status != "FINISHED":
        raise NotAPipelineRun(f"run {run_id} ended {run.info.status}: only a finished pipeline run has a report "
                              "(run the same command again to resume it)")


def regenerate(run_id, out):
    """A pipeline run's report, from its run.json and fit records in the tracking store."""
    pipeline_run(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        run = json.loads(download_artifacts(run_id, ["run.json"], tmp)["run.json"].read_text())
        names = ["final_fits.json"] + ([] if run.get("study", {}).get("arms") else ["search_fits.json"])
        return rebuild(run, download_artifacts(run_id, names, tmp), out)


def from_folder(folder, out):
    """A published study folder's report, from the run.json and fit records (.json or .json.gz) it holds."""
    if not (folder / "run.json").is_file():
        raise FileNotFoundError(f"no {folder / 'run.json'}: a folder to rebuild holds run.json and the pipeline's "
                                "search_fits.json / final_fits.json")
    run = json.loads((folder / "run.json").read_text())
    names = ["final_fits.json"] + ([] if run.get("study", {}).get("arms") else ["search_fits.json"])
    files = {n: records_in(folder, n) for n in names}
    missing = [str(folder / n) for n, p in files.items() if p is None]
    if missing:
        raise FileNotFoundError(f"no fit records {', '.join(missing)} (or .gz): a folder to rebuild holds run.json "
                                "and the pipeline's search_fits.json / final_fits.json")
    paths = rebuild(run, files, out, folder)
    for path in [p for p in paths if p.name in files and files[p.name].suffix == ".gz"]:
        path.unlink()  # the records are the folder's input, kept gzipped: no second, uncompressed copy
        paths.remove(path)
    return paths


def records_in(folder, name):
    """A published folder's fit records file `name` (search_fits.json, final_fits.json), or its .gz; None if
    neither is there."""
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.exists()), None)


def rebuild(run, files, out, folder=None):
    """REPORT.md, tables and figures from run.json's settings and the fit records alone."""
    out.mkdir(parents=True, exist_ok=True)
    renamed = {"batch": "in_flight"}  # (a run.json of before the rename)
    study = Study(**{renamed.get(k, k): tuple(map(tuple, v)) if k in ("space", "arms") else v for k, v in run.get(
        "study", {"path": "", "description": "", "protocol": {}}).items()})
    final = reports.load_records(files["final_fits.json"])
    protocol = _protocol(run["protocol"])
    meta = run["meta"] | {"seen": seen_by(protocol, folder)}
    if study.arms:
        return arms.report(final, study, protocol, out, meta)
    meta["confirmed"] = confirmations(run.get("selection", {}), protocol)
    search = reports.load_records(files["search_fits.json"])
    return reports.full_report(search, final, selection_of(run["selection"]), protocol, out, meta, study)


def beside_folders(folders, out):
    """The final rounds of these published folders beside each other, each named by its study and folder."""
    out.mkdir(parents=True, exist_ok=True)
    studies, smoke = {}, []
    for folder in folders:
        run = json.loads((folder / "run.json").read_text())
        study = Path(run.get("study", {}).get("path") or "faithful").stem
        records = records_in(folder, "final_fits.json")
        where = folder.resolve()  # named as from the project's root, wherever the command runs
        where = where.relative_to(ROOT) if where.is_relative_to(ROOT) else where
        studies[f"{study} ({where.as_posix()})"] = reports.load_records(records)
        smoke += [f"{study} ({where.as_posix()})"] if run.get("meta", {}).get("smoke") else []
    return arms.beside(studies, out, smoke)


def beside(run_ids, out):
    """The final rounds of these pipeline runs beside each other, each named by its study and run."""
    for run_id in run_ids:
        pipeline_run(run_id)
    out.mkdir(parents=True, exist_ok=True)
    studies, smoke = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for i, run_id in enumerate(run_ids):
            files = download_artifacts(run_id, ["run.json", "final_fits.json"], Path(tmp) / str(i))
            run = json.loads(files["run.json"].read_text())
            name = f"{Path(run.get('study', {}).get('path') or 'faithful').stem} ({run_id[:8]})"
            studies[name] = reports.load_records(files["final_fits.json"])
            smoke += [name] if run.get("meta", {}).get("smoke") else []
    return arms.beside(studies, out, smoke)


def main(argv):
    p = argparse.ArgumentParser(prog="python -m flows report", description=__doc__, allow_abbrev=False)
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID")
    p.add_argument("--from", dest="folders", type=Path, action="append", default=[], help="rebuild a published "
                   "study folder (docs/results/...) from the run.json and fit records it holds, in place (or into "
                   "--out); given several times, put their final rounds beside each other (into --out)")
    p.add_argument("--out", type=Path, default=None, help="folder for the report (default: reports/RUN_ID, or "
                   "reports/beside for several runs)")
    args = p.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a few small files: no progress bars
    from mlflow.exceptions import MlflowException
    try:
        return _write(args)
    except (NotAPipelineRun, FileNotFoundError) as e:  # a run or a folder that holds no report's inputs
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MlflowException as e:  # no such run, or not a finished pipeline run: one line, no traceback
        first = str(e).strip().splitlines()[0]
        print(f"error: {first} (tracking store {tracking_uri()}; give the id of a finished pipeline run, the MLflow "
              "UI shows it, or set MLFLOW_TRACKING_URI to the store that holds it)", file=sys.stderr)
        return 2


def _write(args):
    if len(args.folders) == 1:
        paths = from_folder(args.folders[0], args.out or args.folders[0])
    elif args.folders:
        if not args.out:
            raise SystemExit("python -m flows report: several --from folders go beside each other into --out DIR")
        paths = beside_folders(args.folders, args.out)
    elif not args.run_ids:
        raise SystemExit("python -m flows report: give a RUN_ID (or several), or --from FOLDER")
    elif len(args.run_ids) > 1:
        paths = beside(args.run_ids, args.out or Path("reports") / "beside")
    else:
        paths = regenerate(args.run_ids[0], args.out or Path("reports") / args.run_ids[0])
    print(f"wrote {paths[-1]}")
    return 0
