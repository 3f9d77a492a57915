import shutil

import pytest
import torch
import torch.nn.functional as F

from pairs.data import MNIST_FILES, _mnist, derive_seed, ensure_mnist, kfold, pair_sets


def test_shapes_dtypes_and_semantics(pairs_1000):
    p = pairs_1000
    assert p.train_input.shape == p.test_input.shape == (1000, 2, 14, 14)
    assert p.train_input.dtype == torch.float32 and p.train_target.dtype == torch.int64
    assert p.train_classes.shape == (1000, 2) and p.train_classes.dtype == torch.int64
    for target, classes in ((p.train_target, p.train_classes), (p.test_target, p.test_classes)):
        assert torch.equal(target, (classes[:, 0] <= classes[:, 1]).long())
        assert 0.45 < target.float().mean() < 0.65  # about 55% are 1
    assert p.train_input.min() >= 0 and p.train_input.max() > 200  # raw pixel values, not normalised


@pytest.mark.parametrize("train", [True, False])
def test_every_image_is_a_distinct_pooled_mnist_image_of_its_split(data_dir, pairs_1000, train):
    images, labels = _mnist(str(data_dir), train, False)
    pooled = F.avg_pool2d(images.float().unsqueeze(1), 2).flatten(1)  # N x 196
    inputs = (pairs_1000.train_input if train else pairs_1000.test_input).reshape(-1, 196)
    classes = (pairs_1000.train_classes if train else pairs_1000.test_classes).reshape(-1)
    # locate each pair image in its split by exact match on a pixel-sum key, then compare fully
    key = {}
    for i, s in enumerate(pooled.sum(1).tolist()):
        key.setdefault(s, []).append(i)
    found = []
    for img, cls in zip(inputs, classes):
        match = [i for i in key.get(img.sum().item(), []) if torch.equal(pooled[i], img)]
        assert match, "a pair image is not a pooled image of its MNIST split"
        assert any(labels[i] == cls for i in match)
        found.append(match[0])
    assert len(set(found)) == len(found) == 2000  # no image drawn twice


def test_seeded_draws(data_dir):
    a, b = pair_sets(50, seed=1, root=data_dir), pair_sets(50, seed=1, root=data_dir)
    torch.rand(10)  # global RNG use in between must not matter
    c = pair_sets(50, seed=1, root=data_dir)
    d = pair_sets(50, seed=2, root=data_dir)
    assert torch.equal(a.train_input, b.train_input) and torch.equal(a.test_classes, c.test_classes)
    assert not torch.equal(a.train_input, d.train_input)


def test_root_defaults_to_env(data_dir, monkeypatch):
    monkeypatch.setenv("PAIRS_DATA_DIR", str(data_dir))
    assert torch.equal(pair_sets(5, 3).train_input, pair_sets(5, 3, root=data_dir).train_input)


def test_kfold_partitions():
    folds = kfold(1000, 10, seed=3)
    assert len(folds) == 10
    vals = torch.cat([v for _, v in folds])
    assert sorted(vals.tolist()) == list(range(1000))
    for tr, va in folds:
        assert len(va) == 100 and len(tr) == 900 and not set(tr.tolist()) & set(va.tolist())
    assert all(torch.equal(a[1], b[1]) for a, b in zip(folds, kfold(1000, 10, seed=3)))
    assert not torch.equal(folds[0][1], kfold(1000, 10, seed=4)[0][1])


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "search", 1, 2) == derive_seed(0, "search", 1, 2)
    assert len({derive_seed(0, "search", r, f) for r in range(10) for f in range(10)}) == 100


def _copy_mnist(data_dir, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(f"{data_dir}/MNIST/raw/{name}", raw / name)
    return raw


def test_a_folder_holding_the_files_is_used_as_it_is(data_dir, tmp_path, monkeypatch):
    """ensure_mnist with downloads allowed (the prepare task's data step, and `make test`'s): the files there are
    checked and used as they are, nothing downloaded or added. (Bad data folders: test_bad_input.)"""
    from torchvision.datasets import MNIST
    _copy_mnist(data_dir, tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    monkeypatch.setattr(MNIST, "download", lambda self: pytest.fail("a download was tried"))
    ensure_mnist(tmp_path, download=True)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
