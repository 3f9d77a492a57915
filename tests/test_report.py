"""The report's words follow what ran: its optimizer, the published study's claims only where they apply, the
first arm as the reference; and importing it changes nothing (no plotting backend, no file read)."""
import subprocess
import sys

import pandas as pd

from pairs import published
from pairs.protocol import FitRecord
from pairs.report import optimizer
from pairs.tables import display
from pairs.config import FitConfig


def record(**training):
    return FitRecord(stage="final", config=FitConfig("MLP", 25, 1, **training), round=0, fold=None, seed=0, pairs=10,
                     data_seed=0, train_loss=(0.5,), main_loss=(0.5,), aux_loss=(0.0,), scores=((1, 0.1, 0.2),),
                     param_count=1, s_per_epoch=0.1)


def test_the_optimizer_named_is_the_one_the_fits_used():
    assert optimizer([record()]) == "Adam"
    assert optimizer([record(weight_decay=0.01)]) == "AdamW"
    assert optimizer([record(), record(weight_decay=0.01)]) == "Adam or AdamW"  # a searched weight decay


def test_published_claims_only_where_their_variants_are():
    assert "ConvNet std" in published.procedure(["ConvNet", "MLP"])
    mlp = published.procedure(["MLP_AL"])
    assert "ConvNet" not in mlp and "final MLP used batch size 25, chosen by a comparison its text does not" in mlp
    assert "final MLP" not in published.procedure(["ConvNet_WS"])
    assert "test set" not in published.choices() + mlp  # the paper does not say on which pairs it compared


def test_the_first_arm_is_the_reference():
    nan = float("nan")
    table = pd.DataFrame({"variant": ["MLP_AL", "MLP_AL", "ConvNet_AL"], "arm": ["a", "b", "a"],
                          "batch_size": 25, "epochs": 50, "test_error_mean": 0.1, "test_error_std": 0.01,
                          "mean_ci_low": 0.09, "mean_ci_high": 0.11, "diverged": 0,
                          "diff_mean": [nan, -0.01, nan], "ci_low": [nan, -0.02, nan], "ci_high": [nan, 0.0, nan],
                          "holm_pvalue": [nan, 0.06, nan], "verdict": ["", "inconclusive", ""],
                          "published_test_error_mean": 0.1, "share_of_gap_closed": [nan, 0.5, nan],
                          "share_low": [nan, 0.2, nan], "share_high": [nan, 0.8, nan]})
    shown = display(table, "arms")
    assert list(shown["vs first arm (points, 95% CI)"]) == ["—", "-1.00 (-2.00 to +0.00)", "—"]
    assert list(shown["share of the gap closed (95% interval)"]) == ["—", "50% (20% to 80%)", "—"]
    assert list(shown["verdict"]) == ["—", "inconclusive", "—"]
    assert set(display(table, "arms", tested=False)["share of the gap closed (95% interval)"]) == {"—"}


def test_importing_the_report_sets_no_backend_and_reads_nothing():
    code = ("import sys, pairs.report, pairs.published; assert 'matplotlib.pyplot' not in sys.modules; "
            "assert pairs.published._read.cache_info().currsize == 0")
    subprocess.run([sys.executable, "-c", code], check=True)
