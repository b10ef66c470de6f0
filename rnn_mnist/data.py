"""MNIST as binarised 784-pixel sequences, held as whole tensors.

The digits come through ``torchvision.datasets.MNIST``, which already reads the raw IDX files into
one uint8 tensor; we keep it that way (no per-image Python objects) and slice batches from it.

    data = load_binarized_mnist(DataConfig(data_dir="../shared/mnist"))
    data.train_pixels(generator)   # (N, 784) uint8 in {0, 1}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import torch

from rnn_mnist.errors import RnnMnistError

NUM_PIXELS = 784
IMAGE_SIDE = 28
DATA_ENV_VAR = "RNN_MNIST_DATA"
DEFAULT_DATA_DIR = "data"
BINARIZATIONS = ("threshold", "dynamic", "static")
# Offsets that give the train and test splits their own, independent static binarisations.
_TRAIN_STREAM, _TEST_STREAM = 0, 1


@dataclass
class DataConfig:
    """How the digits are read, split and binarised; saved in every checkpoint."""

    data_dir: str | None = None  # None: $RNN_MNIST_DATA, else ./data
    binarize: str = "threshold"  # threshold | dynamic | static
    threshold: float = 0.1  # pixel = grey/255 > threshold (binarize=threshold only)
    val_size: int = 5000  # digits held out of the 60k training digits
    train_subset: int | None = None  # use only the first N training digits (after the val split)
    test_subset: int | None = None  # use only the first N test digits
    data_seed: int = 0  # fixes the validation split and the static/evaluation binarisation

    @classmethod
    def from_dict(cls, values: dict) -> DataConfig:
        """Rebuild from ``asdict`` output, ignoring keys this version does not know (as
        ModelConfig.from_dict does), so a checkpoint from a newer version still loads."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def resolve_data_dir(data_dir: str | None) -> str:
    """The folder that holds ``MNIST/raw``: the flag, else $RNN_MNIST_DATA, else ./data."""
    return data_dir or os.environ.get(DATA_ENV_VAR) or DEFAULT_DATA_DIR


def load_mnist_split(data_dir: str | None, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey levels (N, 784) uint8 and labels (N,) int64 of one MNIST split.

    Reads ``<data_dir>/MNIST/raw``; downloads there only when the files are missing.
    """
    from torchvision.datasets import MNIST  # imported here: torchvision is slow to import

    root = resolve_data_dir(data_dir)
    raw = os.path.join(root, "MNIST", "raw")
    names = [os.path.splitext(os.path.basename(url))[0] for url, _ in MNIST.resources]
    if not all(os.path.isfile(os.path.join(raw, name)) for name in names):
        try:
            MNIST(root, train=train, download=True)
        except Exception as exc:  # no network, a proxy, a read-only folder...
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise RnnMnistError(
                f"MNIST is not in {raw} and could not be downloaded ({reason}). Point --data-dir "
                f"(or ${DATA_ENV_VAR}) at a folder holding MNIST/raw/{names[0]} and the other "
                "three raw files."
            ) from None
    try:
        dataset = MNIST(root, train=train, download=False)
    except Exception as exc:  # truncated or foreign files
        raise RnnMnistError(f"could not read MNIST from {raw}: {exc}") from None
    images = dataset.data.reshape(len(dataset.data), NUM_PIXELS)
    return images.contiguous(), dataset.targets.long()


def binarize(
    grey: torch.Tensor, method: str, threshold: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Binarise uint8 grey levels to {0, 1} (uint8).

    ``threshold`` keeps pixels brighter than ``threshold``; ``dynamic`` and ``static`` both draw
    Bernoulli(grey / 255) from ``generator`` (they differ in how often the caller draws).
    """
    if method == "threshold":
        return (grey > threshold * 255).to(torch.uint8)
    if method in ("dynamic", "static"):
        return torch.bernoulli(grey.float().div_(255), generator=generator).to(torch.uint8)
    raise ValueError(f"unknown binarisation {method!r}; choose from {BINARIZATIONS}")


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass
class BinarizedMNIST:
    """Train/validation/test digits as (N, 784) uint8 tensors in {0, 1}, labels beside them."""

    config: DataConfig
    train_grey: torch.Tensor  # (N, 784) uint8 grey levels, kept for dynamic binarisation
    train_fixed: torch.Tensor | None  # (N, 784) uint8, None when binarize=dynamic
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    test_indices: torch.Tensor  # positions in the 10,000-digit MNIST test set
    # Grey levels (N, 784) uint8 of the same validation and test digits: what --task classify reads.
    val_grey: torch.Tensor | None = None
    test_grey: torch.Tensor | None = None

    def train_pixels(self, generator: torch.Generator) -> torch.Tensor:
        """This epoch's training pixels: a fresh Bernoulli draw for dynamic binarisation."""
        if self.train_fixed is not None:
            return self.train_fixed
        return binarize(self.train_grey, "dynamic", self.config.threshold, generator)


def binarize_fixed(grey: torch.Tensor, config: DataConfig, stream: int) -> torch.Tensor:
    """A binarisation that never changes: dynamic evaluation data is drawn once, like static."""
    generator = _seeded(config.data_seed * 2 + stream)
    method = "threshold" if config.binarize == "threshold" else "static"
    return binarize(grey, method, config.threshold, generator)


def load_test_digits(config: DataConfig, grey: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All 10,000 test digits binarised exactly as the experiment saw them (``grey``: their grey
    levels, unbinarised), and their labels."""
    levels, labels = load_mnist_split(config.data_dir, train=False)
    return (levels if grey else binarize_fixed(levels, config, _TEST_STREAM)), labels


def load_binarized_mnist(config: DataConfig) -> BinarizedMNIST:
    """Read MNIST, split off the validation digits and binarise every split."""
    grey, labels = load_mnist_split(config.data_dir, train=True)
    if config.val_size >= len(grey):
        raise RnnMnistError(f"--val-size {config.val_size} leaves no training digits (there are {len(grey)})")
    # Binarise all 60k before splitting, so the static draw of a digit never depends on the split.
    fixed = binarize_fixed(grey, config, _TRAIN_STREAM)
    order = torch.randperm(len(grey), generator=_seeded(config.data_seed))
    val_idx, train_idx = order[: config.val_size], order[config.val_size :]
    if config.train_subset is not None:
        train_idx = train_idx[: config.train_subset]

    test_grey, test_labels = load_mnist_split(config.data_dir, train=False)
    test = binarize_fixed(test_grey, config, _TEST_STREAM)
    test_indices = torch.arange(len(test))
    if config.test_subset is not None:
        test_indices = test_indices[: config.test_subset]

    return BinarizedMNIST(
        config=config,
        train_grey=grey[train_idx],
        train_fixed=None if config.binarize == "dynamic" else fixed[train_idx],
        train_labels=labels[train_idx],
        val=fixed[val_idx],
        val_labels=labels[val_idx],
        test=test[test_indices],
        test_labels=test_labels[test_indices],
        test_indices=test_indices,
        val_grey=grey[val_idx],
        test_grey=test_grey[test_indices],
    )


def binarization_name(method: str, threshold: float) -> str:
    """A short name of a binarisation: ``threshold-0.1``, ``static`` or ``dynamic``."""
    return f"threshold-{threshold:g}" if method == "threshold" else method
