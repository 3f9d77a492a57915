"""The study's data: pairs of 14x14 MNIST digits, target 1 when the first digit <= the second.

A pair set holds n training pairs drawn from MNIST's training split and n test pairs from its test
split; within a split the 2n images are distinct. Seeds are explicit: `derive_seed` turns a base seed
and a fit's place (stage, round, fold) into that fit's own seed.
"""
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# torchvision's raw layout: file -> (magic, count, bytes)
MNIST_FILES = {
    "train-images-idx3-ubyte": (2051, 60000, 16 + 60000 * 784),
    "train-labels-idx1-ubyte": (2049, 60000, 8 + 60000),
    "t10k-images-idx3-ubyte": (2051, 10000, 16 + 10000 * 784),
    "t10k-labels-idx1-ubyte": (2049, 10000, 8 + 10000),
}


class DataError(RuntimeError):
    """MNIST is missing, incomplete or corrupt; the message says where and what to do."""


def derive_seed(base, *parts):
    """A 63-bit seed from a base seed and names (a fit's place: stage, round, fold), independent of any RNG state."""
    text = "/".join(str(p) for p in (base, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def data_root(root=None):
    """The torchvision root: the argument, else $PAIRS_DATA_DIR, else ./data."""
    return Path(root or os.environ.get("PAIRS_DATA_DIR") or "data").expanduser().resolve()


def check_mnist(root):
    """Raise DataError unless the four raw MNIST files under root have the right magic, counts and size."""
    raw = Path(root) / "MNIST" / "raw"
    if Path(root).exists() and not Path(root).is_dir():
        raise DataError(f"MNIST root {root} is a file, not a folder. Point PAIRS_DATA_DIR (or --data-dir) "
                        "at the folder that holds MNIST/raw/.")
    missing = [name for name in MNIST_FILES if not (raw / name).is_file()]
    if missing:
        raise DataError(
            f"MNIST files missing under {raw}: {', '.join(missing)}. Download them "
            "(torchvision.datasets.MNIST(root, download=True) on a machine with internet) or point "
            "PAIRS_DATA_DIR (or --data-dir) at a folder holding MNIST/raw/ with the four IDX files.")
    for name, (magic, count, size) in MNIST_FILES.items():
        path = raw / name
        with open(path, "rb") as f:
            header = f.read(8)
        got_magic = int.from_bytes(header[:4], "big") if len(header) >= 4 else None
        got_count = int.from_bytes(header[4:8], "big") if len(header) >= 8 else None
        got_size = path.stat().st_size
        if (got_magic, got_count, got_size) != (magic, count, size):
            raise DataError(
                f"corrupt MNIST file {path}: magic {got_magic}, count {got_count}, {got_size} bytes; "
                f"expected magic {magic}, count {count}, {size} bytes. Replace it with the published file.")


def mnist_fingerprint(root=None):
    """SHA-256 over the four raw files: what the data stage hands on, so changed data invalidates caches."""
    root = data_root(root)
    check_mnist(root)
    h = hashlib.sha256()
    for name in MNIST_FILES:
        h.update((root / "MNIST" / "raw" / name).read_bytes())
    return h.hexdigest()


def ensure_mnist(root, download=True):
    """Check the raw files under root; when they are missing and download is allowed, let torchvision fetch them."""
    from torchvision.datasets import MNIST

    root = Path(root)
    if root.exists() and not root.is_dir():
        check_mnist(root)  # raises: a file, not a folder
    if not root.exists() and root != Path("data").resolve():
        raise DataError(f"the data folder {root} does not exist. Point PAIRS_DATA_DIR (or --data-dir) at a "
                        "torchvision root holding MNIST/raw/, or leave it unset to download into ./data")
    if download and not all(
            (root / "MNIST" / "raw" / n).is_file() for n in MNIST_FILES):
        try:
            for train in (True, False):
                MNIST(str(root), train=train, download=True)
        except Exception as e:  # no network, proxy, disk full: say what to do instead
            check_mnist(root)  # raises the clear message naming the missing files
            raise DataError(f"downloading MNIST into {root} failed: {e}") from e
    check_mnist(root)


@functools.lru_cache(maxsize=2)
def _mnist(root, train, download):
    from torchvision.datasets import MNIST

    ensure_mnist(root, download)
    ds = MNIST(str(root), train=train, download=False)
    return ds.data, ds.targets


@dataclass(frozen=True)
class PairSets:
    train_input: torch.Tensor
    train_target: torch.Tensor
    train_classes: torch.Tensor
    test_input: torch.Tensor
    test_target: torch.Tensor
    test_classes: torch.Tensor


def _draw(n, images, labels, generator):
    if 2 * n > images.shape[0]:
        raise ValueError(f"cannot draw {n} pairs of distinct images from {images.shape[0]} images")
    pooled_idx = torch.randperm(images.shape[0], generator=generator)[: 2 * n].view(n, 2)
    pooled = F.avg_pool2d(images[pooled_idx.flatten()].float().unsqueeze(1), kernel_size=2)
    inputs = pooled.view(n, 2, 14, 14)
    classes = labels[pooled_idx].long()
    return inputs, (classes[:, 0] <= classes[:, 1]).long(), classes


def pair_sets(n=1000, seed=0, root=None, download=True):
    """n training pairs from MNIST train and n test pairs from MNIST test, drawn with `seed` only."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    root = str(data_root(root))
    g = torch.Generator().manual_seed(seed)
    train = _draw(n, *_mnist(root, True, download), g)
    test = _draw(n, *_mnist(root, False, download), g)
    return PairSets(*train, *test)


def kfold(n, k, seed):
    """k (train_idx, val_idx) splits of range(n) from one seeded permutation; folds differ by at most 1."""
    if not 2 <= k <= n:
        raise ValueError(f"need 2 <= folds <= {n}, got {k}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    chunks = torch.tensor_split(perm, k)
    return [(torch.cat(chunks[:i] + chunks[i + 1:]), chunks[i]) for i in range(k)]
