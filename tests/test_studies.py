"""Study files: the shipped ones load and run; bad ones fail before any work; selection never sees test pairs."""
import pytest

from pairs import protocol as P
from pairs import studies
from pairs.protocol import PROFILES


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
    groups = P.arm_groups(PROFILES["full"].with_(**study.protocol), study.arms)
    assert len(groups) == len(set(g.key() for g in groups)) == len(names) * 3  # no two arms coincide


def test_arms_equal_for_a_variant_train_once(tmp_path):
    f = tmp_path / "arms.toml"
    f.write_text('[protocol]\nvariants = ["ConvNet_AL", "MLP_AL"]\n[[arm]]\nname = "a"\n'
                 'ConvNet = {batch_size = 100, epochs = 50}\nMLP = {batch_size = 25, epochs = 50}\n'
                 '[[arm]]\nname = "b"\nMLP = {epochs = 25}\n[[arm]]\nname = "c"\naux_weight = 1\n')
    study = studies.load(f)
    groups = P.arm_groups(PROFILES["full"].with_(**study.protocol), study.arms)
    # b changes MLP only; c (aux weight 1 = the default 1.0) changes nothing: 2 + 1 groups, not 6
    assert sorted(g.label for g in groups) == ["final ConvNet_AL (a)", "final MLP_AL (a)", "final MLP_AL (b)"]


def test_a_search_space_multiplies_the_grid(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[protocol]\nbatch_sizes = [25, 50]\n[search]\nbudget = 8\n[search.space]\n'
                 'normalize = [false, true]\nhead = ["learned", "digits"]\n')
    study = studies.load(f)
    assert len(study.candidates()) == 4
    groups = P.search_groups(PROFILES["quick"], study.candidates())
    assert len(groups) == 2 * 2 * 4
    assert groups[2].label == "search ConvNet batch 25 normalize=True"


BAD = [
    ("protocol = [", "not valid TOML"),
    ("[protocl]\nfolds = 3", "protocl: unknown key; allowed: description, protocol, search, arm"),
    ("[protocol]\nfold = 3", "protocol.fold: unknown key; allowed: lr,"),
    ("[protocol]\nfolds = 0", "protocol.folds: folds must be a positive integer, got 0"),
    ("[search]\nbudget = 0", "search.budget: must be a positive integer, got 0"),
    ("[search]\nmethod = 'random'", "search.method: 'random' is not a method; allowed: grid"),
    ("[search.space]\nnormalize = []", "search.space.normalize: must be a non-empty list of values, got []"),
    ("[search.space]\nnormalize = [true]", "search.space.normalize: one value is not a search: set it in [protocol]"),
    ("[protocol]\naux_weight = true", "protocol.aux_weight: aux_weight must be float, got True"),
    ("[search.space]\ndropout = [0.1]", "search.space.dropout: unknown key; allowed: lr, aux_weight"),
    ("[search.space]\nschedule = ['constant', 'step']", "search.space.schedule: unknown schedule 'step'; choose from constant"),
    ("[search]\nbudget = 5\n[search.space]\nnormalize = [false, true]",
     "search.budget: the grid has 6 candidates per architecture, more than the budget 5"),
    ("[[arm]]\nname = 'a'\nnormalize = true", "arm[0].ConvNet: the first arm must give batch_size and epochs"),
    ("[[arm]]\nname = 'a'\nConvNet = {batch_size = 0, epochs = 2}\nMLP = {batch_size = 5, epochs = 2}",
     "arm[0].ConvNet.batch_size: must be a positive integer, got 0"),
    ("[[arm]]\nConvNet = {batch_size = 5, epochs = 2}", "arm[0].name: each arm needs a name of its own"),
    ("[search]\n[[arm]]\nname = 'a'", "arm: a study has either a [search] or arms, not both"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[b[1].split(":")[0] for b in BAD])
def test_a_bad_study_file_is_one_line_naming_file_and_key(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(studies.StudyError) as e:
        studies.load(f)
    assert str(e.value).startswith(f"{f}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_study_name_lists_the_shipped_ones():
    with pytest.raises(studies.StudyError, match="no such file; shipped studies: al_gap, faithful"):
        studies.load("al_gap_v2")


def test_shuffled_test_targets_change_no_selection(data_dir, monkeypatch):
    """Honest selection: the search reads training pairs only, so scrambling every test target changes nothing."""
    import torch
    q = PROFILES["quick"].with_(search_rounds=1, folds=2, epochs=(1, 2))
    candidates = [{"normalize": False}, {"normalize": True}]

    def search():
        P._pair_sets.cache_clear()
        records = [r for g in P.search_groups(q, candidates) for r in P.train_group(g, data_dir)]
        return P.select(P.search_table(records)), [r.to_json() for r in records]

    honest = search()
    for r in honest[1]:
        r.pop("s_per_epoch")  # wall time, not a result
    real = P.pair_sets

    def scrambled(n, seed, root):
        p = real(n, seed, root)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return type(p)(p.train_input, p.train_target, p.train_classes, p.test_input,
                       1 - p.test_target[perm], p.test_classes[perm])
    monkeypatch.setattr(P, "pair_sets", scrambled)
    scrambled_search = search()
    for r in scrambled_search[1]:
        r.pop("s_per_epoch")
    assert scrambled_search == honest
    P._pair_sets.cache_clear()
    # the test is able to fail: the final evaluation does read the scrambled targets
    final = P.train_group(P.final_groups(q, honest[0])[0], data_dir)
    monkeypatch.setattr(P, "pair_sets", real)
    P._pair_sets.cache_clear()
    assert [r.eval_error for r in final] != [r.eval_error for r in
                                             P.train_group(P.final_groups(q, honest[0])[0], data_dir)]


TINY = dict(pairs=100, folds=2, batch_sizes=[25], final_rounds=2)


@pytest.mark.parametrize("name", sorted(p.stem for p in studies.SHIPPED.glob("*.toml")))
def test_a_quick_run_of_each_shipped_study(prefect_env, data_dir, store, tmp_path, name):
    """Every shipped file runs end to end through Prefect and MLflow (tiny counts from the flags)."""
    import pandas as pd
    from flows.pipeline import pipeline
    study = studies.load(name)
    extra = {} if study.arms else dict(search_rounds=1, epochs=[1, 2], variants=["ConvNet", "MLP_WS_AL"])
    result = pipeline(study=name, data_dir=data_dir, experiment=name, **TINY, **extra)
    run = store.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["pipeline.study"].endswith(f"{name}.toml")
    report = open(store.download_artifacts(result["run_id"], "REPORT.md", str(tmp_path))).read()
    if study.arms:
        table = pd.read_csv(store.download_artifacts(result["run_id"], "arms.csv", str(tmp_path)))
        assert len(table) == len(study.arms) * len(study.protocol["variants"]) and (table.rounds == 2).all()
        assert all(arm in report for arm, _ in study.arms)
    else:
        assert "## Table 2" in report and set(result["selection"]) == {"ConvNet", "MLP"}
