"""The plan of an Optuna search stage: per architecture an Optuna study (TPE), asked a new trial whenever one ends.

Each trial's groups train as cached tasks (flows.stages) and log their fits under the trial's MLflow run; then the
trials are told their values (the lowest mean validation error of their rows). The Optuna studies (here `optunas`,
one per architecture: "study" is this project's word for a study file) live in
`optuna_storage()`, named by the protocol, the study file and the fits' context: after a crash the same command
finds them, reuses every finished trial (its groups come from the cache) and finishes the trials left running.
"""
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from pairs.groups import search_groups
from pairs import report as reports
from pairs.data import derive_seed
from pairs.models import architecture
from pairs.selection import search_table

from .runner import remote, workers
from .preflight import optuna_storage
from .stages import collect, submit


class OptunaSearch:
    """The search stage's plan for a study whose [search] method is optuna (flows.stages.stage consumes it).

    Each architecture keeps `slots` trials in flight (the study's `in_flight`, or more when the runner has more
    workers) and asks a new one as soon as one ends (TPE with a constant liar: the trials in flight count as their
    worst). In this process trials end in the order asked, so the sequence of asks and tells, and the results, are
    the same every time; on Dask the first trial to end is told first."""
    name = "search"

    def __init__(self, call):
        self.call, self.storage = call, optuna_storage()
        self.tags = {"pairs.optuna_storage": self.storage}

    def artifacts(self, records, out):
        return reports.search_artifacts(records, out)

    def train(self, call, run_id, progress):
        """The search's fit records, in trial order (TIE_RULE's "searched first"), each trial's fits logged under its
        trial run."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study, protocol = call.study, call.protocol
        ident = hashlib.sha256(json.dumps([asdict(protocol), asdict(study), list(call.context)], sort_keys=True,
                                          default=str).encode()).hexdigest()[:12]

        def sampler(a, number):  # seeded by the trial's number: a resumed search asks what the whole one would
            return optuna.samplers.TPESampler(  # random for the first half (at most 10)
                seed=derive_seed(protocol.seed, "optuna", a, number) % 2**32, constant_liar=True,
                n_startup_trials=min(10, max(study.in_flight, study.trials // 2)))
        optunas = {a: optuna.create_study(study_name=f"{Path(study.path).stem}-{a}-{ident}", storage=self.storage,
                                          load_if_exists=True, direction="minimize", sampler=sampler(a, 0))
                   for a in protocol.architectures}
        slots = max(study.in_flight, -(-workers(call.runner) // len(optunas)))
        typical = search_groups(protocol, [study.typical()])  # in the totals until a trial is asked
        records, flying = {}, []

        def ask(a, number, candidate, tell):
            name = f"trial {a} {number}"
            trial_run = call.tracker.trial_run(name, f"{optunas[a].study_name}/{number}", run_id, candidate)
            groups = search_groups(protocol, [candidate])
            progress.plan(groups, [g for g in typical if architecture(g.fits[0].variant) == a])
            flying.append((a, number, candidate, tell, name, trial_run, submit(groups, trial_run, call, progress)))

        for a, s in optunas.items():  # what an earlier call left: finished trials (from the cache), those in flight
            for t in s.get_trials(deepcopy=False):
                ask(a, t.number, study.suggest(optuna.trial.FixedTrial(t.params), a),
                    t.state == optuna.trial.TrialState.RUNNING)
        while True:
            for a, s in optunas.items():
                while sum(f[0] == a for f in flying) < slots and len(s.trials) < study.trials:
                    s.sampler = sampler(a, len(s.trials))
                    t = s.ask()
                    ask(a, t.number, study.suggest(t, a), True)
            if not flying:
                break
            a, number, candidate, tell, name, trial_run, parts = flying.pop(_first_to_end(flying, remote(call.runner)))
            mine = collect(parts, call, progress)
            best = min(search_table(mine), key=lambda r: r["val_error_mean"])
            if tell:
                optunas[a].tell(number, best["val_error_mean"])
            call.tracker.end_trial(trial_run, best)
            print(f"[search] {name}: {candidate} -> {100 * best['val_error_mean']:.2f}% at batch "
                  f"{best['batch_size']}, {best['epochs']} epochs", flush=True)
            records[(list(optunas).index(a), number)] = mine
        return [r for k in sorted(records) for r in records[k]]


def _first_to_end(flying, far):
    """The index of the trial to tell next: the first asked (in this process, where trials train in that order), or
    on Dask the first whose parts have all ended."""
    if not far:
        return 0
    from prefect.futures import as_completed
    done = set()
    for f in as_completed([f for *_, parts in flying for _, _, f in parts]):
        done.add(f)
        for i, (*_, parts) in enumerate(flying):
            if all(p in done for _, _, p in parts):
                return i
    return 0
