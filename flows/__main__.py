"""python -m flows [run] [options] | serve | report RUN_ID | bench: the pipeline's command line.

Every option defaults to the profile's value (full: the study's protocol; quick: tiny counts).
Input is checked before the first Prefect or MLflow call, so a typo fails in a second.
"""
import argparse
import importlib
import sys

from pairs.protocol import PROFILES

from . import ROOT  # noqa: F401  (sets Prefect/MLflow environment defaults first)
from .checks import STAGES, check_inputs


def int_list(text):
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    return values


def optional(kind):
    """An option that MLproject may pass as '' (= the profile's value)."""
    def parse(text):
        if text == "":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__.replace('_', ' ')}, got {text!r}") from None
    parse.__name__ = kind.__name__
    return parse


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the whole usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_parser():
    p = Parser(prog="python -m flows", description="Run the pairs pipeline.",
               epilog="Other commands: `python -m flows serve` (a Prefect deployment), "
                      "`python -m flows report RUN_ID` (rebuild a report), `python -m flows bench`.")
    p.add_argument("--profile", default="full", choices=list(PROFILES))
    p.add_argument("--data-dir", type=optional(str), default=None,
                   help="torchvision MNIST root (default: $PAIRS_DATA_DIR, then ./data)")
    p.add_argument("--seed", type=optional(int), default=None)
    p.add_argument("--pairs", type=optional(int), default=None, help="pairs per split and round")
    p.add_argument("--search-rounds", type=optional(int), default=None)
    p.add_argument("--folds", type=optional(int), default=None)
    p.add_argument("--final-rounds", type=optional(int), default=None)
    p.add_argument("--batch-sizes", type=optional(int_list), default=None, help="e.g. 25,50,100")
    p.add_argument("--epochs", type=optional(int_list), default=None, help="e.g. 25,50")
    p.add_argument("--experiment", default="pairs")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--until", default="report", choices=STAGES,
                   help="stop after this stage")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("serve", "report", "bench"):
        return importlib.import_module(f".{argv[0]}", __package__).main(argv[1:])
    kwargs = vars(run_parser().parse_args(argv[1:] if argv[:1] == ["run"] else argv))
    try:
        check_inputs(**kwargs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from prefect.exceptions import TerminationSignal

    from .pipeline import pipeline
    try:
        result = pipeline(**{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()})
    except (KeyboardInterrupt, TerminationSignal):  # the flow has said so in one line and ended its runs
        return 130
    except Exception as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"pipeline run {result['run_id']} done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
