"""python -m flows report RUN_ID [--out DIR]: rebuild REPORT.md and its tables and figures from a finished
pipeline run in the tracking store, without training."""
import argparse
import json
import tempfile
from pathlib import Path

from pairs import report as R
from pairs.protocol import Protocol
from pairs.studies import Study

from .tracking import download_artifacts


def regenerate(run_id, out):
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = json.loads(download_artifacts(run_id, ["run.json"], tmp)["run.json"].read_text())
        study = Study(**run.get("study", {"path": "", "description": "", "protocol": {}}))
        names = ["final_fits.json"] + ([] if study.arms else ["search_fits.json"])
        files = download_artifacts(run_id, names, tmp)
        final = R.load_records(files["final_fits.json"])
        search = [] if study.arms else R.load_records(files["search_fits.json"])
    protocol = Protocol(**{k: tuple(v) if isinstance(v, list) else v for k, v in run["protocol"].items()})
    if study.arms:
        return R.arms_report(final, study, protocol, out, run["meta"])
    return R.full_report(search, final, run["selection"], protocol, out, run["meta"], study)


def main(argv):
    p = argparse.ArgumentParser(prog="python -m flows report", description=__doc__)
    p.add_argument("run_id")
    p.add_argument("--out", type=Path, default=None, help="folder for the report (default: reports/RUN_ID)")
    args = p.parse_args(argv)
    paths = regenerate(args.run_id, args.out or Path("reports") / args.run_id)
    print(f"wrote {paths[-1]}")
    return 0
