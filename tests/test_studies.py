"""Study files: the shipped ones load and run; selection never sees test pairs (bad files: test_bad_input)."""
from pathlib import Path

import pytest

from pairs.groups import arm_groups, final_groups, search_groups, train_group
from pairs.data import pair_sets
import pairs.groups
from pairs.selection import choose, search_table
from pairs import studies
from pairs.protocol import PROFILES

from conftest import failing


def test_the_faithful_study_is_the_default_protocol():
    study = studies.load("faithful")
    assert PROFILES["full"].with_(**study.protocol) == PROFILES["full"]
    assert study.candidates() == [{}] and not study.arms


def test_the_al_gap_study_varies_one_cause_at_a_time_then_together():
    study = studies.load("al_gap")
    names = [name for name, _ in study.arms]
    assert names[0] == "faithful" and len(names) == len(set(names)) >= 6
    first = dict(study.arms)["faithful"]
    assert first == {"ConvNet": {"batch_size": 100, "epochs": 50}, "MLP": {"batch_size": 25, "epochs": 50}}
    assert dict(study.arms)["standardised inputs"]["MLP"] == {"batch_size": 25, "epochs": 50, "normalize": True}
    assert study.protocol["variants"] == ("ConvNet_AL", "MLP_AL", "MLP_WS_AL") and study.protocol["final_rounds"] == 20
    groups = arm_groups(PROFILES["full"].with_(**study.protocol), study.arms)
    assert len(groups) == len(set(g.key() for g in groups)) == len(names) * 3  # no two arms coincide


def test_arms_equal_for_a_variant_train_once(tmp_path):
    f = tmp_path / "arms.toml"
    f.write_text('[protocol]\nvariants = ["ConvNet_AL", "MLP_AL"]\n[[arm]]\nname = "a"\n'
                 'ConvNet = {batch_size = 100, epochs = 50}\nMLP = {batch_size = 25, epochs = 50}\n'
                 '[[arm]]\nname = "b"\nMLP = {epochs = 25}\n[[arm]]\nname = "c"\naux_weight = 1\n')
    study = studies.load(f)
    groups = arm_groups(PROFILES["full"].with_(**study.protocol), study.arms)
    # b changes MLP only; c (aux weight 1 = the default 1.0) changes nothing: 2 + 1 groups, not 6
    assert sorted(g.label for g in groups) == ["final ConvNet_AL (a)", "final MLP_AL (a)", "final MLP_AL (b)"]


def test_a_search_space_multiplies_the_grid(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[protocol]\nbatch_sizes = [25, 50]\n[search]\nbudget = 8\n[search.space]\n'
                 'normalize = [false, true]\nhead = ["learned", "digits"]\n')
    study = studies.load(f)
    assert len(study.candidates()) == 4
    groups = search_groups(PROFILES["quick"], study.candidates())
    assert len(groups) == 2 * 2 * 4
    assert groups[4].label == "search ConvNet batch 25 normalize=True"


def test_shuffled_test_targets_change_no_selection(data_dir, monkeypatch):
    """Honest selection: the search reads training pairs only, so scrambling every test target changes nothing."""
    import torch
    q = PROFILES["quick"].with_(search_rounds=1, folds=2, epoch_grid=(1, 2))
    candidates = [{"normalize": False}, {"normalize": True}]

    def search():
        pairs.groups._pair_sets.cache_clear()
        records = [r for g in search_groups(q, candidates) for r in train_group(g, data_dir)[0]]
        return choose(search_table(records)), [r.to_json() for r in records]

    honest = search()
    for r in honest[1]:
        r.pop("s_per_epoch")  # wall time, not a result
    real = pair_sets

    def scrambled(n, seed, root):
        p = real(n, seed, root)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return type(p)(p.train_input, p.train_target, p.train_classes, p.test_input,
                       1 - p.test_target[perm], p.test_classes[perm])
    monkeypatch.setattr(pairs.groups, "pair_sets", scrambled)
    scrambled_search = search()
    for r in scrambled_search[1]:
        r.pop("s_per_epoch")
    assert scrambled_search == honest
    pairs.groups._pair_sets.cache_clear()
    # the test is able to fail: the final evaluation does read the scrambled targets
    final = train_group(final_groups(q, honest[0])[0], data_dir)[0]
    monkeypatch.setattr(pairs.groups, "pair_sets", real)
    pairs.groups._pair_sets.cache_clear()
    assert [r.eval_error for r in final] != [r.eval_error for r in
                                             train_group(final_groups(q, honest[0])[0], data_dir)[0]]


TINY = dict(pairs=100, folds=2, final_rounds=2)


# (confirm has precision's shape, two arms of the extended selection, on other final rounds: its file is checked by
# test_every_shipped_study_loads_with_its_final_rounds and its records rebuild in test_published)
@pytest.mark.parametrize("name", sorted(p.stem for p in studies.SHIPPED.glob("*.toml")
                                        if p.stem not in ("extended", "confirm")))
def test_a_quick_run_of_each_shipped_study(prefect_env, data_dir, store, tmp_path, name):
    """Every shipped file runs end to end through Prefect and MLflow (tiny counts from the flags; the extended
    study's run is the next test)."""
    import pandas as pd
    from flows.pipeline import pipeline
    study = studies.load(name)
    # arms set their batch sizes and epochs: enough pairs that the profile's grid (unused) fits a fold
    extra = dict(pairs=200) if study.arms else dict(search_rounds=1, batch_sizes=[25], epoch_grid=[1, 2],
                                                    variants=["ConvNet", "MLP_WS_AL"])
    result = pipeline(study=name, data_dir=data_dir, experiment=name, **TINY | extra)
    run = store.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["pipeline.study"].endswith(f"{name}.toml")
    report = open(store.download_artifacts(result["run_id"], "REPORT.md", str(tmp_path))).read()
    if study.arms:
        table = pd.read_csv(store.download_artifacts(result["run_id"], "arms.csv", str(tmp_path)))
        assert len(table) == len(study.arms) * len(study.protocol["variants"]) and (table.rounds == 2).all()
        assert all(arm in report for arm, _ in study.arms)
    else:
        assert "## Table 2" in report and set(result["selection"]) == {"ConvNet", "MLP"}


@pytest.mark.slow
def test_the_extended_study_resumes_its_optuna_search_and_registers_on_request(prefect_env, data_dir, store,
                                                                               tmp_path, monkeypatch):
    """The shipped extended study (2 trials per architecture, 1-2 epochs): a crash in the search, then one in the
    final rounds; each rerun finishes the trials left running or reuses the finished ones (no fit trained or
    logged twice); registered on request, its version says it is a smoke run and does not take the champion."""
    import json
    import re

    import mlflow
    import optuna
    from flows.pipeline import pipeline
    from flows.registry import REGISTERED
    from flows.tracking import PARENT
    text = (studies.SHIPPED / "extended.toml").read_text()
    # epochs and batch size from the flags: a trial with a schedule is then two groups (one per epoch count)
    tiny = re.sub(r"\ntrials = \d+", "\ntrials = 2", re.sub(r"\n(epochs|batch_size) = \[[^]]*\]", "", text))
    assert tiny.count("trials = 2") == 1 and "epochs" not in tiny.split("[search.space]")[1]
    assert "batch_size" not in tiny  # (flags may not set what a study searches)
    (tmp_path / "extended.toml").write_text(tiny)
    flags = dict(study=str(tmp_path / "extended.toml"), data_dir=data_dir, experiment="extended", pairs=300, folds=2,
                 final_rounds=2, batch_sizes=[25], epoch_grid=[1, 2], register_model="yes")
    from flows import tasks
    from flows.progress import Progress
    monkeypatch.setattr(tasks, "train", tasks.train.with_options(retry_delay_seconds=0))
    for stage in ("search", "final"):  # a lasting failure of round 0 (fold 0): every retry fails
        with monkeypatch.context() as m:
            failing(m, lambda f: (f.stage, f.round, f.fold or 0) == (stage, 0, 0))
            with pytest.raises(RuntimeError, match="injected failure"):
                pipeline(**flags)
        if stage == "search":
            storage = store.get_run(store.search_runs([store.get_experiment_by_name("extended").experiment_id],
                                                      "tags.`pairs.kind` = 'stage' AND tags.`pairs.stage` = 'search'")[0].info.run_id
                                    ).data.tags["pairs.optuna_storage"]
            assert storage == f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"  # beside the MLflow store
            left = [t for s in optuna.get_all_study_summaries(storage) for t in
                    optuna.load_study(study_name=s.study_name, storage=storage).trials]
            assert left and all(t.state == optuna.trial.TrialState.RUNNING for t in left)
    said = []  # what each progress line says: (fits done, fits planned)
    monkeypatch.setattr(Progress, "_say", lambda self, group, what, real=Progress._say: said.append(
        (self.fits_done, self.fits, self.work - self.done)) or real(self, group, what))
    result = pipeline(**flags)
    counts = [(done, total) for done, total, _ in said]
    # the total is that of the groups planned (each trial's, once asked; the selections' final rounds): it ends met
    assert counts[-1][0] == counts[-1][1] and all(done <= total for done, total in counts), said
    assert counts[-1][1] == len(json.loads(Path(store.download_artifacts(result["run_id"], "search_fits.json", str(
        tmp_path))).read_text())) + 2 * 2 and all(left >= 0 for *_, left in said), said  # (the ETA's fit-epochs)

    summaries = optuna.get_all_study_summaries(storage)
    assert sorted(s.study_name.split("-")[1] for s in summaries) == ["ConvNet", "MLP"]
    for s in summaries:  # exactly the asked trials, all finished: none asked again by a rerun
        assert [t.state.name for t in optuna.load_study(study_name=s.study_name, storage=storage).trials] == \
            ["COMPLETE"] * 2
    exp = store.get_experiment_by_name("extended").experiment_id
    trials = store.search_runs([exp], "tags.`pairs.trial` != '' AND attributes.status = 'FINISHED'")
    assert len({t.data.tags["pairs.trial"] for t in trials}) == len(trials) == 4  # the crashed call's run: FAILED
    for t in trials:  # a trial's value: the lowest mean validation error of its own fits' cells
        cells = {}
        for f in store.search_runs([exp], f"tags.`{PARENT}` = '{t.info.run_id}'"):
            for m in store.get_metric_history(f.info.run_id, "val_error"):
                cells.setdefault((f.data.params["batch_size"], f.data.params["epochs"], m.step), []).append(m.value)
        assert len(cells) >= 2 and t.data.metrics["val_error"] == pytest.approx(
            min(sum(v) / len(v) for v in cells.values()), abs=1e-6)
    fits = store.search_runs([exp], "tags.`pairs.fit_key` != '' AND attributes.status = 'FINISHED'", max_results=1000)
    keys = [f.data.tags["pairs.fit_key"] for f in fits]
    assert len(keys) == len(set(keys))  # no fit logged twice
    search = [f for f in fits if f.data.params["stage"] == "search"]
    assert {f.data.tags[PARENT] for f in search} == {t.info.run_id for t in trials}  # fits nested in their trial
    final = [f for f in fits if f.data.params["stage"] == "final"]
    assert {f.data.params["ensemble"] for f in final} == {"3"} and len(final) == 2 * 2  # the two selections
    assert all("pairs.model_uri" in f.data.tags for f in final)

    # a smoke run (counts below the study's) registered on request: a version that says so, never the champion
    version = store.search_model_versions(f"name = '{REGISTERED}'")
    assert len(version) == 1 and version[0].tags["pipeline_run"] == result["run_id"], version
    tags = version[0].tags
    assert tags["smoke"] == "counts below the study's: pairs 300 < 1000, folds 2 < 4, final_rounds 2 < 20", tags
    assert (tags["study"], tags["pairs"], tags["folds"], tags["final_rounds"]) == ("extended", "300", "2", "2")
    assert float(tags["cv_error"]) < 0.5 and json.loads(tags["selection"])["epochs"] in (1, 2)
    assert "never the champion" in version[0].description and store.get_registered_model(REGISTERED).description
    assert not store.get_registered_model(REGISTERED).aliases
    info = mlflow.models.get_model_info(f"models:/{REGISTERED}/{version[0].version}")
    assert info.signature.inputs.to_dict()[0]["tensor-spec"] == {"dtype": "float32", "shape": (-1, 2, 14, 14)}
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["P(first > second)", "P(first <= second)"]


@pytest.mark.slow
def test_a_resumed_optuna_search_asks_what_an_uninterrupted_one_asks(prefect_env, data_dir, store, tmp_path,
                                                                      monkeypatch):
    """One trial in flight, three trials: the second fails, the rerun finishes it and asks the third; a fresh
    search of the same study asks the same three candidates (each ask is seeded by its trial number, not by a
    sampler's state that a crash loses)."""
    import optuna
    from flows import tasks
    from flows.pipeline import pipeline
    text = ('[protocol]\npairs = 300\nsearch_rounds = 1\nfolds = 2\nfinal_rounds = 2\narchitectures = ["MLP"]\n'
            'variants = ["MLP"]\n[search]\nmethod = "optuna"\ntrials = 3\nbatch = 1\n[search.space]\n'
            'lr = {low = 5e-4, high = 5e-3, log = true}\ndropout = [0.0, 0.25]\n')
    for name in ("crashed", "whole"):
        (tmp_path / f"{name}.toml").write_text(text)
    flags = dict(data_dir=data_dir, experiment="resume", batch_sizes=[25], epoch_grid=[1], until="search")
    monkeypatch.setattr(tasks, "train", tasks.train.with_options(retry_delay_seconds=0))
    seen = []

    def second_trial(f):
        seen.append(f.config.lr) if f.config.lr not in seen else None
        return len(seen) > 1 and f.config.lr == seen[1]
    with monkeypatch.context() as m:
        failing(m, second_trial)
        with pytest.raises(RuntimeError, match="injected failure"):
            pipeline(study=str(tmp_path / "crashed.toml"), **flags)
    pipeline(study=str(tmp_path / "crashed.toml"), **flags)
    pipeline(study=str(tmp_path / "whole.toml"), **flags)
    storage = f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    asked = {s.study_name.split("-")[0]: [t.params for t in optuna.load_study(
        study_name=s.study_name, storage=storage).trials] for s in optuna.get_all_study_summaries(storage)}
    assert len(asked["crashed"]) == 3 and len({t["lr"] for t in asked["crashed"]}) == 3
    assert asked["crashed"] == asked["whole"]


def test_the_old_name_of_trials_in_flight_is_still_read(tmp_path):
    f = tmp_path / "old.toml"
    f.write_text("[search]\nmethod = 'optuna'\ntrials = 4\nbatch = 2\n[search.space]\nlr = [0.001, 0.002]\n")
    assert studies.load(f).in_flight == 2


def test_every_shipped_study_loads_with_its_final_rounds():
    """Each shipped file loads; those beyond the faithful study name their final rounds' seed base, and only the
    confirmation takes rounds no other shipped study uses (its headline is one of its arms)."""
    loaded = {name: studies.load(name) for name in studies.shipped()}
    bases = {name: s.protocol.get("final_seed") for name, s in loaded.items() if name != "faithful"}
    assert bases == {"al_gap": 0, "confirm": 1, "extended": 0, "precision": 0}, bases
    assert loaded["confirm"].headline in [name for name, _ in loaded["confirm"].arms]
