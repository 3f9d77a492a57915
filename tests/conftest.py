import os
from pathlib import Path

import pytest

from pairs.data import MNIST_FILES


@pytest.fixture(scope="session")
def data_dir():
    """The real MNIST root; a missing one fails (never skips) with what to do."""
    root = os.environ.get("PAIRS_DATA_DIR")
    if not root or not all((Path(root) / "MNIST" / "raw" / n).is_file() for n in MNIST_FILES):
        pytest.fail("tests need real MNIST: set PAIRS_DATA_DIR to a torchvision root holding "
                    "MNIST/raw/ (e.g. export PAIRS_DATA_DIR=$PWD/../shared/data), or run `make test`")
    return root


@pytest.fixture(scope="session")
def pairs_1000(data_dir):
    from pairs.data import pair_sets
    return pair_sets(1000, seed=7, root=data_dir)
