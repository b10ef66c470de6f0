"""MNIST as binarised 784-pixel sequences, held as whole tensors: the splits, their binarisation and
where a checkpoint's digits are found.

The digits come from MNIST's raw files (rnn_mnist/mnist_files.py), or for ``--binarize larochelle``
from the benchmark's .amat files with MNIST's labels where they fit (rnn_mnist/larochelle.py).

    data = load_binarized_mnist(DataConfig(data_dir="../shared/mnist"))
    data.train_pixels(generator)   # (N, 784) uint8 in {0, 1}
    config = checkpoint_data_config(checkpoint["data_config"], experiment=folder)  # its digits, from anywhere

Training records the absolute folder it read (``data_folder``), so that a checkpoint's digits are
found again from any working directory (``checkpoint_data_folder``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from rnn_mnist.cli import SEED_MAX, fraction, non_negative_int, positive_int, rng_seed
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.larochelle import find_amat_folder, labelled_splits, splits_note
from rnn_mnist.mnist_files import DATA_ENV_VAR, find_raw_folder, load_mnist_split, resolve_data_dir

# The digits' geometry, MNIST's (mnist_files checks the files against it): the package takes it from
# here, with the digits (the kernels import nothing else of ours: tests/test_steps.py).
from rnn_mnist.mnist_files import IMAGE_SIDE as IMAGE_SIDE
from rnn_mnist.mnist_files import NUM_PIXELS as NUM_PIXELS
from rnn_mnist.options import option, unless, when

BINARIZATIONS = ("threshold", "dynamic", "static", "larochelle")
# Test digits that are one Bernoulli draw of MNIST's: they stand in for the benchmark's static set.
DRAWN = ("dynamic", "static")
# Offsets that give the train and test splits their own, independent static binarisations.
_TRAIN_STREAM, _TEST_STREAM = 0, 1
# --binarize and --threshold shape binarised pixels only: --task classify without --binarized-input
# reads grey levels (the fact "pixels" is rnn_mnist/config.py's train_facts).
BINARISED_ONLY = when(
    "pixels",
    "binarised",
    says="--task classify reads grey levels: {flags} would be ignored without --binarized-input",
)
LAROCHELLE_VALIDATION = (
    "--binarize larochelle validates on its own file (binarized_mnist_valid.amat): drop {flags}"
)


@dataclass
class DataConfig:
    """How the digits are read, split and binarised; saved in every checkpoint."""

    data_dir: str | None = option(  # None: $RNN_MNIST_DATA, else ./data
        None, "--data-dir", group="data", on_resume="may change",
        help=f"folder holding MNIST/raw; unset: ${DATA_ENV_VAR}, else ./data (downloaded if missing)",
    )  # fmt: skip
    binarize: str = option(
        "threshold", "--binarize", choices=BINARIZATIONS, group="data", only=BINARISED_ONLY,
        help="threshold: grey > --threshold; dynamic: Bernoulli(grey) redrawn every epoch; "
        "static: one Bernoulli draw per digit fixed by --data-seed; larochelle: the benchmark's static "
        "set, binarized_mnist_{train,valid,test}.amat read from --data-dir or its binarized_mnist/",
    )  # fmt: skip
    threshold: float = option(  # pixel = grey/255 > threshold (binarize=threshold only)
        0.1, "--threshold", kind=fraction, help="grey level for --binarize threshold", group="data",
        only=(BINARISED_ONLY, when("binarize", "threshold")),
    )  # fmt: skip
    val_size: int = option(  # digits held out of the 60k training digits
        5000, "--val-size", kind=non_negative_int, help="validation digits held out of the 60k", group="data",
        only=unless("binarize", "larochelle", says=LAROCHELLE_VALIDATION),
    )  # fmt: skip
    train_subset: int | None = option(  # use only the first N training digits (after the val split)
        None, "--train-subset", kind=positive_int, help="train on the first N digits only", group="data"
    )
    test_subset: int | None = option(  # use only the first N test digits
        None, "--test-subset", kind=positive_int, help="test on the first N test digits only", group="data"
    )
    data_seed: int = option(  # fixes the validation split and the static/evaluation binarisation
        0, "--data-seed", kind=rng_seed, help="fixes the validation split and Bernoulli binarisations",
        group="data",
    )  # fmt: skip
    # Not a flag: the absolute folder the training digits were read from (load_binarized_mnist
    # records it), so a checkpoint's data is found from any working directory. None: not recorded.
    data_folder: str | None = None

    def __post_init__(self) -> None:
        # The flags range-check their text first (rnn_mnist/cli.py); this catches what a checkpoint,
        # or code, hands over: a threshold of 7.0 or NaN would blank every pixel without a word.
        for name in ("data_dir", "data_folder"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str | os.PathLike):
                raise ValueError(f"{name} must be a folder name, not {value!r}")
        if self.binarize not in BINARIZATIONS:
            raise ValueError(f"binarize must be one of {', '.join(BINARIZATIONS)}, not {self.binarize!r}")
        if not (_is_number(self.threshold) and math.isfinite(self.threshold) and 0 <= self.threshold < 1):
            raise ValueError(f"threshold must be a number in [0, 1), not {self.threshold!r}")
        if not (_is_int(self.val_size) and self.val_size >= 0):
            raise ValueError(f"val_size must be an integer, at least 0, not {self.val_size!r}")
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value >= 1):
                raise ValueError(f"{name} must be unset or an integer, at least 1, not {value!r}")
        if not (_is_int(self.data_seed) and 0 <= self.data_seed <= SEED_MAX):
            raise ValueError(f"data_seed must be an integer in 0..{SEED_MAX}, not {self.data_seed!r}")

    @classmethod
    def from_dict(cls, values: dict) -> DataConfig:
        """Rebuild from ``asdict`` output, ignoring keys this version does not know (as
        ModelConfig.from_dict does), so a checkpoint from a newer version still loads."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def checkpoint_data_folder(
    saved: dict[str, Any], data_dir: str | None = None, experiment: str | Path | None = None
) -> str | None:
    """The data folder of a checkpoint's digits (its ``data_config``, ``saved``), the same from any
    working directory.

    ``data_dir`` (a flag or an argument), else $RNN_MNIST_DATA, as typed (MNIST is downloaded there
    if missing); else the first of these that holds the digits (MNIST's raw files, or for
    ``binarize`` "larochelle" the three .amat files): the absolute folder recorded in training, the
    folder typed in training, if relative, from where train.py ran for the ``experiment`` folder
    (the one above its --exp-dir, as for experiments/NAME and pretrained/NAME) and from here. None
    when the checkpoint recorded no folder (the default, ./data). A recorded folder that is nowhere
    is an RnnMnistError naming what was looked for: nothing is downloaded to a guessed place.
    """
    chosen = data_dir or os.environ.get(DATA_ENV_VAR)
    if chosen:
        return str(chosen)
    folder, typed = saved.get("data_folder"), saved.get("data_dir")
    candidates = [Path(folder)] if folder else []
    if typed and Path(typed).is_absolute():
        candidates.append(Path(typed))
    elif typed:
        bases = [Path(experiment).absolute().parent.parent] if experiment is not None else []
        candidates += [base / typed for base in [*bases, Path.cwd()]]
    for candidate in candidates:
        if _holds_digits(candidate, saved.get("binarize")):
            return str(candidate)
    if not candidates:
        return None
    looked = ", ".join(dict.fromkeys(os.path.normpath(c) for c in candidates))
    if saved.get("binarize") == "larochelle":
        what, holding = "Larochelle's .amat files are", "binarized_mnist_{train,valid,test}.amat"
    else:
        what, holding = "MNIST is", "MNIST/raw"
    raise RnnMnistError(
        f"{what} not in the folder this model was trained on (looked in {looked}): pass --data-dir "
        f"(data_dir= in Python) or set ${DATA_ENV_VAR} to a folder holding {holding}"
    )


def _holds_digits(folder: Path, method: str | None) -> bool:
    """Whether ``folder`` holds the digits of a ``method`` binarisation (the .amat files or MNIST)."""
    if method == "larochelle":
        return find_amat_folder(folder) is not None
    return find_raw_folder(folder) is not None


def checkpoint_data_config(
    saved: dict[str, Any], data_dir: str | None = None, experiment: str | Path | None = None
) -> DataConfig:
    """A checkpoint's data config (``saved``) with its data folder found (``checkpoint_data_folder``)."""
    return DataConfig.from_dict({**saved, "data_dir": checkpoint_data_folder(saved, data_dir, experiment)})


def binarize(
    grey: torch.Tensor, method: str, threshold: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Binarise uint8 grey levels to {0, 1} (uint8).

    ``threshold`` keeps pixels brighter than ``threshold``; ``dynamic`` and ``static`` both draw
    Bernoulli(grey / 255) from ``generator`` (they differ in how often the caller draws).
    """
    if method == "threshold":
        return (grey > threshold * 255).to(torch.uint8)
    if method in DRAWN:
        return torch.bernoulli(grey.float().div_(255), generator=generator).to(torch.uint8)
    raise ValueError(f"unknown binarisation {method!r}; choose from {BINARIZATIONS}")


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass
class BinarizedMNIST:
    """Train/validation/test digits as (N, 784) uint8 tensors in {0, 1}, labels beside them."""

    config: DataConfig
    train_grey: torch.Tensor | None  # (N, 784) uint8 grey levels; None for larochelle (it has none)
    train_fixed: torch.Tensor | None  # (N, 784) uint8, None when binarize=dynamic
    train_labels: torch.Tensor | None  # None: unknown (larochelle digits MNIST's labels do not fit)
    val: torch.Tensor
    val_labels: torch.Tensor | None
    test: torch.Tensor
    test_labels: torch.Tensor | None
    test_indices: torch.Tensor  # positions in the test set (MNIST's 10,000, or the .amat file's)
    # Grey levels (N, 784) uint8 of the same validation and test digits: what --task classify reads.
    val_grey: torch.Tensor | None = None
    test_grey: torch.Tensor | None = None
    notes: tuple[str, ...] = ()  # lines for the run's log: where the digits and their labels come from

    @property
    def num_train(self) -> int:
        return len(self.train_fixed if self.train_grey is None else self.train_grey)

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


def load_test_digits(config: DataConfig, grey: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All 10,000 test digits binarised exactly as the experiment saw them (``grey``: their grey
    levels, unbinarised), and their labels (None: unknown, see ``require_labels``)."""
    if config.binarize == "larochelle":
        if grey:
            raise RnnMnistError("--binarize larochelle: the .amat digits have no grey levels to read")
        _, splits = labelled_splits(resolve_data_dir(config.data_dir), ("test",))
        return splits["test"].digits, splits["test"].labels
    levels, labels = load_mnist_split(config.data_dir, train=False)
    return (levels if grey else binarize_fixed(levels, config, _TEST_STREAM)), labels


def load_binarized_mnist(config: DataConfig) -> BinarizedMNIST:
    """Read MNIST, split off the validation digits and binarise every split (or read the .amat
    files: ``--binarize larochelle``); record in ``config.data_folder`` the absolute folder read
    (what a checkpoint saves)."""
    if config.binarize == "larochelle":
        return _load_larochelle(config)
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
    # abspath, not resolve: a folder reached through a link is recorded as typed, made absolute.
    config.data_folder = os.path.abspath(resolve_data_dir(config.data_dir))

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
        notes=tuple(note for note in (larochelle_hint(config),) if note),
    )


def _load_larochelle(config: DataConfig) -> BinarizedMNIST:
    """The three .amat files as they are (their own validation split), MNIST's labels where they fit."""
    root = resolve_data_dir(config.data_dir)
    folder, splits = labelled_splits(root, ("train", "valid", "test"))
    train, val, test = splits["train"], splits["valid"], splits["test"]
    train_end = len(train.digits) if config.train_subset is None else config.train_subset
    test_indices = torch.arange(len(test.digits))[: config.test_subset]
    config.data_folder = os.path.abspath(root)
    return BinarizedMNIST(
        config=config,
        train_grey=None,
        train_fixed=train.digits[:train_end],
        train_labels=None if train.labels is None else train.labels[:train_end],
        val=val.digits,
        val_labels=val.labels,
        test=test.digits[test_indices],
        test_labels=None if test.labels is None else test.labels[test_indices],
        test_indices=test_indices,
        notes=(splits_note(folder, splits),),
    )


def require_labels(labels: torch.Tensor | None, needed_by: str) -> torch.Tensor:
    """``labels``, or the one-line refusal of ``needed_by`` when they are unknown."""
    if labels is None:
        raise RnnMnistError(
            f"{needed_by} needs the digits' labels, and these have none: Larochelle's .amat files carry "
            "no labels, and MNIST's raw files (put them in the same --data-dir) were missing or did "
            "not match them by position"
        )
    return labels


def larochelle_hint(config: DataConfig) -> str | None:
    """A note for a Bernoulli binarisation of MNIST when the benchmark's own .amat files are at hand."""
    if config.binarize not in DRAWN or find_amat_folder(resolve_data_dir(config.data_dir)) is None:
        return None
    return "the data folder holds Larochelle's binarized_mnist_*.amat files: --binarize larochelle reads them"


def is_benchmark(method: str) -> bool:
    """Whether a ``method`` binarisation's test NLL compares with the literature's: Larochelle's
    static set, or a Bernoulli draw of MNIST's test digits standing in for it (not threshold)."""
    return method == "larochelle" or method in DRAWN


def test_set_note(config: DataConfig) -> str | None:
    """What the test NLL is measured on, for a benchmark binarisation (None: threshold)."""
    if not is_benchmark(config.binarize):
        return None
    if config.binarize == "larochelle":
        return "test digits: binarized_mnist_test.amat, the benchmark's standard static test set"
    return (
        f"test digits: one Bernoulli draw of MNIST's (data seed {config.data_seed}), standing in "
        "for the benchmark's static test set; ± is the standard error over digits"
    )


def binarization_name(method: str, threshold: float) -> str:
    """A short name of a binarisation: ``threshold-0.1``, ``static``, ``dynamic`` or ``larochelle``."""
    return f"threshold-{threshold:g}" if method == "threshold" else method
