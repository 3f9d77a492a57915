"""A study's Optuna search: a TPE study per architecture, asked a batch of trials at a time.

Each trial's groups train as cached tasks (flows.stages) and log their fits under the trial's MLflow run; then the
trials are told their values (the lowest mean validation error of their rows). The Optuna studies live in
`optuna_storage()`, named by the protocol, the study file and the fits' context: after a crash the same command
finds them, reuses every finished trial (its groups come from the cache) and finishes the trials left running.
"""
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from pairs import protocol as P
from pairs import report as R
from pairs.data import derive_seed

from .settings import optuna_storage
from .stages import train_groups
from .tasks import write_artifacts


def optuna_search(study, protocol, w, progress):
    """The search's fit records, trial by trial, under a `search` stage run."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna_storage()
    ident = hashlib.sha256(json.dumps([asdict(protocol), asdict(study), list(w.context)], sort_keys=True,
                                      default=str).encode()).hexdigest()[:12]
    studies = {a: optuna.create_study(
        study_name=f"{Path(study.path).stem}-{a}-{ident}", storage=storage, load_if_exists=True, direction="minimize",
        sampler=optuna.samplers.TPESampler(  # random for the first half (at most 10), a batch at a time
            seed=derive_seed(protocol.seed, "optuna", a) % 2**32, constant_liar=True,
            n_startup_trials=min(10, max(study.batch, study.trials // 2)))) for a in protocol.architectures}
    typical = P.search_groups(protocol, [study.typical()], w.chunk)  # in the totals until a batch is asked
    run_id = w.tracker.child("search", {"pairs.stage": "search", "pairs.optuna_storage": storage})
    records, seen = [], set()
    while batch := _next_batch(studies, study, seen):
        trials, groups, parents = [], [], []  # the batch's groups train together (in parallel on Dask)
        for a, number, candidate, tell in batch:
            seen.add((a, number))
            name = f"trial {a} {number}"
            trial_run = w.tracker.trial_run(name, f"{studies[a].study_name}/{number}", run_id, candidate)
            mine = P.search_groups(protocol, [candidate], w.chunk)
            trials.append((a, number, candidate, tell, name, trial_run, len(mine)))
            groups += mine
            parents += [trial_run] * len(mine)
        progress.plan(groups, [g for a, *_ in batch for g in typical if P.parse(g.fits[0].variant)[0] == a])
        got = train_groups(groups, parents, w, progress)
        for a, number, candidate, tell, name, trial_run, n in trials:
            k = sum(len(g.fits) for g in groups[:n])  # this trial's records: its groups' fits, in order
            mine, got, groups = got[:k], got[k:], groups[n:]
            best = min(P.search_table(mine), key=lambda r: r["val_error_mean"])
            if tell:
                studies[a].tell(number, best["val_error_mean"])
            w.tracker.end_trial(trial_run, best)
            print(f"[search] {name}: {candidate} -> {100 * best['val_error_mean']:.2f}% at batch "
                  f"{best['batch_size']}, {best['epochs']} epochs", flush=True)
            records += mine
    write_artifacts(w.tracker, run_id, "search", lambda out: R.search_artifacts(records, out))
    w.tracker.end(run_id)
    return records


def _next_batch(studies, study, seen):
    """(architecture, trial number, candidate, whether to tell it) of the trials to train next: those an earlier
    call left (finished ones come from the cache, running ones are told this time), then up to `study.batch` new
    ones per architecture."""
    import optuna

    batch = []
    for a, s in studies.items():
        for t in s.get_trials(deepcopy=False):
            if (a, t.number) not in seen:
                running = t.state == optuna.trial.TrialState.RUNNING
                batch.append((a, t.number, study.suggest(optuna.trial.FixedTrial(t.params), a), running))
        for _ in range(min(study.batch, study.trials - len(s.trials))):
            t = s.ask()
            batch.append((a, t.number, study.suggest(t, a), True))
    return batch
