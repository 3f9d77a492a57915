"""python -m flows serve [--cron CRON] [--name NAME]: serve the pipeline as a Prefect deployment.

Start a server first (`prefect server start --host 127.0.0.1`) and point PREFECT_API_URL at it; the
deployment then shows in the UI, where it can be triggered with parameters and its retries watched.
"""
import argparse

from pairs.protocol import PROFILES

from .lifetime import own_server


def main(argv):
    p = argparse.ArgumentParser(prog="python -m flows serve", description=__doc__, allow_abbrev=False)
    p.add_argument("--name", default="pairs-study")
    p.add_argument("--cron", default="0 3 * * 0", help="schedule (default: Sundays 03:00)")
    p.add_argument("--profile", default="full", choices=list(PROFILES))
    args = p.parse_args(argv)
    own_server()  # without PREFECT_API_URL, a server of its own (its deployment then lives as long as serve)
    from .pipeline import pipeline
    pipeline.serve(name=args.name, cron=args.cron, parameters={"profile": args.profile})
    return 0
