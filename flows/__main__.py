"""python -m flows [run] [options] | serve | report RUN_ID | bench | mlproject: the pipeline's command line.

The run options are the settings of flows.settings, one flag each; a protocol setting left out takes the
profile's value (full: the study's protocol; quick: tiny counts). Input is checked before the first
Prefect or MLflow call, so a typo fails in a second.
"""
import argparse
import importlib
import os
import sys

from . import ROOT
from .lifetime import own_server, start
from .preflight import preflight
from .settings import SETTINGS, flow_values, mlproject, validate


class Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)  # `-P profil=quick` must not run as --profile quick

    def error(self, message):  # one line, not the whole usage block
        drop_mlflow_run("FAILED")
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def drop_mlflow_run(status):
    """Under `mlflow run`: the run it opened for this command, when the command leaves it unused (input refused, a
    report rebuilt into reports/), is ended and deleted, so that no empty run is left in the runs list. Only a run
    that `mlflow run` opened and nothing of ours was logged to (no pairs.kind tag)."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    from mlflow.tracking import MlflowClient

    from .preflight import tracking_uri
    try:
        client = MlflowClient(tracking_uri())
        tags = client.get_run(run_id).data.tags
        if "mlflow.project.entryPoint" in tags and "pairs.kind" not in tags:
            client.set_terminated(run_id, status)  # (`mlflow run` then leaves its status alone)
            client.delete_run(run_id)
    except Exception as e:  # the command's own message matters more
        print(f"note: the run {run_id} that mlflow run opened is left as it is ({e})", file=sys.stderr)


def _argument_type(setting):
    def parse(text):
        try:
            return setting.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = setting.name
    return parse


def run_parser():
    p = Parser(prog="python -m flows", description="Run the pairs pipeline.",
               epilog="Other commands: `python -m flows serve` (a Prefect deployment), "
                      "`python -m flows report RUN_ID [RUN_ID ...]` (rebuild a report, or put runs beside each other), "
                      "`python -m flows mlproject` (rewrite MLproject from the settings).")
    for s in SETTINGS:
        shown = " (default: the profile's)" if s.from_profile else f" (default: {s.default})" * (s.default is not None)
        choices = f"; one{' or more' if s.many else ''} of {', '.join(map(str, s.choices))}" if s.choices else ""
        alias = [f"--{s.name}"] if "_" in s.name else []  # as `mlflow run -P batch_sizes=...` passes it on
        p.add_argument(s.flag, *alias, dest=s.name, type=_argument_type(s), default=s.default,
                       metavar=s.name.upper(), help=s.help + choices + shown)
    return p


def run_values(argv):
    """The run's settings from its command line, checked before any Prefect or MLflow call: a bad one exits 2
    with one line."""
    values = vars(run_parser().parse_args(argv))
    try:
        preflight(validate(**values)[0])
    except ValueError as e:
        drop_mlflow_run("FAILED")
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return values


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    start()
    if argv[:1] == ["mlproject"]:
        (ROOT / "MLproject").write_text(mlproject())
        print(f"wrote {ROOT / 'MLproject'}")
        return 0
    if argv[:1] == ["bench"]:  # the benchmark lives beside the packages (benchmarks/), not in them
        import runpy
        sys.argv = [str(ROOT / "benchmarks" / "bench.py"), *argv[1:]]
        runpy.run_path(sys.argv[0], run_name="__main__")
        return 0
    if argv and argv[0] in ("serve", "report"):
        code = 1
        try:
            code = importlib.import_module(f".{argv[0]}", __package__).main(argv[1:])
            return code
        finally:
            if argv[0] == "report":  # (`mlflow run . -e report`: the report goes to reports/, not to that run)
                drop_mlflow_run("FINISHED" if code == 0 else "FAILED")
    values = run_values(argv[1:] if argv[:1] == ["run"] else argv)
    own_server()  # (after the checks: a mistake is one line, before any server)
    from prefect.exceptions import TerminationSignal

    from .pipeline import pipeline
    try:
        pipeline(**flow_values(values))
    except (KeyboardInterrupt, TerminationSignal):  # the flow has said so in one line and ended its runs
        return 130
    except Exception as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0  # (the flow's last line said where to look)


if __name__ == "__main__":
    sys.exit(main())
