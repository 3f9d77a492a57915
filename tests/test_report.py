"""The report's words follow what ran: its optimizer, the published study's claims only where they apply, the
first arm as the reference; and importing it changes nothing (no plotting backend, no file read)."""
import subprocess
import sys

import pandas as pd

from pairs import published
from pairs.protocol import FitRecord
from pairs.report import optimizer
from pairs.tables import display
from pairs.train import FitConfig


def record(**training):
    return FitRecord(stage="final", config=FitConfig("MLP", 25, 1, **training), round=0, fold=None, seed=0, pairs=10,
                     data_seed=0, train_loss=(0.5,), main_loss=(0.5,), aux_loss=(0.0,), scores=((1, 0.1, 0.2),),
                     param_count=1, s_per_epoch=0.1)


def test_the_optimizer_named_is_the_one_the_fits_used():
    assert optimizer([record()]) == "Adam"
    assert optimizer([record(weight_decay=0.01)]) == "AdamW"
    assert optimizer([record(), record(weight_decay=0.01)]) == "Adam or AdamW"  # a searched weight decay


def test_published_claims_only_where_their_variants_are():
    assert "ConvNet std" in published.known_causes(["ConvNet", "MLP"])
    mlp = published.known_causes(["MLP_AL"])
    assert "ConvNet" not in mlp and "final MLP used batch size 25 picked on the test set" in mlp
    assert "final MLP" not in published.known_causes(["ConvNet_WS"])


def test_the_first_arm_is_the_reference():
    table = pd.DataFrame({"variant": ["MLP_AL", "MLP_AL", "ConvNet_AL"], "arm": ["a", "b", "a"],
                          "batch_size": 25, "epochs": 50, "test_error_mean": 0.1, "test_error_std": 0.01,
                          "diff_mean": [0.0, -0.01, 0.0], "ci_low": [0.0, -0.02, 0.0], "ci_high": [0.0, 0.0, 0.0],
                          "published_test_error_mean": 0.1, "share_of_gap_closed": [0.0, 0.5, 0.0]})
    shown = display(table, "arms")
    assert list(shown["vs first arm (points, 95% CI)"]) == ["—", "-1.00 (-2.00 to +0.00)", "—"]
    assert list(shown["share of the gap closed"]) == ["—", "50%", "—"]
    assert set(display(table, "arms", tested=False)["share of the gap closed"]) == {"—"}


def test_importing_the_report_sets_no_backend_and_reads_nothing():
    code = ("import sys, pairs.report, pairs.published; assert 'matplotlib.pyplot' not in sys.modules; "
            "assert pairs.published._read.cache_info().currsize == 0")
    subprocess.run([sys.executable, "-c", code], check=True)
