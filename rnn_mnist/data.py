"""MNIST as binarised 784-pixel sequences, held as whole tensors.

The raw IDX files are read straight into one uint8 tensor per split (no per-image Python objects),
checked against their headers and each other; torchvision only downloads them when they are missing.

    data = load_binarized_mnist(DataConfig(data_dir="../shared/mnist"))
    data.train_pixels(generator)   # (N, 784) uint8 in {0, 1}
    config = checkpoint_data_config(checkpoint["data_config"], experiment=folder)  # its digits, from anywhere

Training records the absolute folder it read (``data_folder``), so that a checkpoint's digits are
found again from any working directory (``checkpoint_data_folder``).
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from rnn_mnist.cli import SEED_MAX, fraction, non_negative_int, positive_int, rng_seed
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.larochelle import amat_folder, find_amat_folder, matching_labels, mnist_position, read_split
from rnn_mnist.options import option, unless, when

NUM_PIXELS = 784
IMAGE_SIDE = 28
DATA_ENV_VAR = "RNN_MNIST_DATA"
DEFAULT_DATA_DIR = "data"
BINARIZATIONS = ("threshold", "dynamic", "static", "larochelle")
# Test digits that are one Bernoulli draw of MNIST's: they stand in for the benchmark's static set.
DRAWN = ("dynamic", "static")
# The raw files, as torchvision names them: train images and labels, then test images and labels.
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
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


def resolve_data_dir(data_dir: str | None) -> str:
    """The folder that holds ``MNIST/raw``: the flag, else $RNN_MNIST_DATA, else ./data."""
    return data_dir or os.environ.get(DATA_ENV_VAR) or DEFAULT_DATA_DIR


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


def find_raw_folder(root: str | Path) -> Path | None:
    """The folder holding the four raw files: ``<root>/MNIST/raw`` (torchvision's layout), or
    ``root`` itself given as the MNIST folder or the raw folder (an easy mistake, accepted)."""
    root = Path(root)
    for folder in (root / "MNIST" / "raw", root / "raw", root):
        if all(_raw_file(folder, name) is not None for name in RAW_FILES):
            return folder
    return None


def _raw_file(folder: Path, name: str) -> Path | None:
    """``name`` in ``folder``, as it is or gzipped as downloaded; None when neither is there."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def load_mnist_split(data_dir: str | None, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey levels (N, 784) uint8 and labels (N,) int64 of one MNIST split.

    Reads the raw IDX files (``find_raw_folder``), checking that they are what they claim to be;
    downloads them to ``<data_dir>/MNIST/raw`` only when no folder holds them.
    """
    root = resolve_data_dir(data_dir)
    folder = find_raw_folder(root)
    if folder is None:
        folder = _download(Path(root))
    images_name, labels_name = RAW_FILES[:2] if train else RAW_FILES[2:]
    try:
        images = read_idx(_raw_file(folder, images_name), IDX_IMAGES)
        labels = read_idx(_raw_file(folder, labels_name), IDX_LABELS)
    except (OSError, EOFError, ValueError) as exc:  # unreadable, a broken .gz, not what it claims
        raise RnnMnistError(f"could not read MNIST from {folder}: {exc}") from None
    if len(images) != len(labels):
        raise RnnMnistError(
            f"could not read MNIST from {folder}: {images_name} holds {len(images):,} images but "
            f"{labels_name} holds {len(labels):,} labels; they do not belong together (is one of them "
            "from the other split?)"
        )
    if len(labels) and int(labels.max()) > 9:
        raise RnnMnistError(f"could not read MNIST from {folder}: {labels_name} has labels above 9")
    return images.reshape(len(images), NUM_PIXELS).contiguous(), labels.long()


# IDX headers: magic 0x000008NN (unsigned bytes, NN dimensions), then NN big-endian int32 sizes.
IDX_IMAGES = ("images", 0x803, (IMAGE_SIDE, IMAGE_SIDE))
IDX_LABELS = ("labels", 0x801, ())


def read_idx(path: Path, kind: tuple[str, int, tuple[int, ...]]) -> torch.Tensor:
    """The uint8 items (N, *item_shape) of an IDX file of MNIST ``kind`` (IDX_IMAGES or IDX_LABELS).

    A file of the other kind, of another shape, or whose length does not match its header is a
    ValueError that says which.
    """
    what, magic, item_shape = kind
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    header = 4 * (2 + len(item_shape))
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        other = {k[1]: k[0] for k in (IDX_IMAGES, IDX_LABELS)}.get(found)
        if other is not None:
            raise ValueError(f"{path.name} holds {other}, not {what}: are the files swapped?")
        raise ValueError(f"{path.name} is not an MNIST {what} file (no IDX {what} header)")
    if len(data) < header:
        raise ValueError(f"{path.name} is truncated: its header is incomplete")
    count, *shape = struct.unpack(f">{1 + len(item_shape)}i", data[4:header])
    if tuple(shape) != item_shape:
        sizes = "x".join(map(str, shape))
        raise ValueError(f"{path.name} holds {sizes} {what}; MNIST's are {IMAGE_SIDE}x{IMAGE_SIDE}")
    expected = header + count * math.prod(item_shape)
    if len(data) != expected:
        raise ValueError(
            f"{path.name} has {len(data):,} bytes where its header ({count:,} {what}) needs {expected:,}: "
            + ("truncated" if len(data) < expected else "it is not one MNIST file")
        )
    items = torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8)
    return items.reshape(count, *item_shape)


def _download(root: Path) -> Path:
    """Download MNIST to ``<root>/MNIST/raw`` and return that folder.

    The download goes to a temporary folder first and moves into place only once complete, so a
    download that fails (offline) creates nothing. If ``root`` looks like a raw folder of its own
    (it holds some of the files), nothing is downloaded: the others are missing there.
    """
    for folder in (root / "raw", root):
        present = [name for name in RAW_FILES if _raw_file(folder, name) is not None]
        if present:
            missing = [name for name in RAW_FILES if name not in present]
            raise RnnMnistError(
                f"{folder} holds {', '.join(present)} but not {', '.join(missing)}: put all four MNIST "
                "raw files there"
            )
    from torchvision.datasets import MNIST  # imported here: torchvision is slow to import

    raw = root / "MNIST" / "raw"
    with tempfile.TemporaryDirectory(prefix="rnn-mnist-download-") as tmp:
        try:
            MNIST(tmp, train=True, download=True)
        except Exception as exc:  # no network, a proxy, a checksum...
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise RnnMnistError(
                f"MNIST is not in {raw} and could not be downloaded ({reason}). Point --data-dir "
                f"(or ${DATA_ENV_VAR}) at a folder holding MNIST/raw/{RAW_FILES[0]} and the other "
                "three raw files (the raw folder itself will do)."
            ) from None
        raw.mkdir(parents=True, exist_ok=True)
        for name in RAW_FILES:
            shutil.move(os.path.join(tmp, "MNIST", "raw", name), raw / name)
    return raw


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
        digits, labels, _ = _larochelle_splits(config, ("test",))["test"]
        return digits, labels
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
    splits = _larochelle_splits(config, ("train", "valid", "test"))
    (train, train_labels, _), (val, val_labels, _), (test, test_labels, _) = splits.values()
    train_end = len(train) if config.train_subset is None else config.train_subset
    test_indices = torch.arange(len(test))[: config.test_subset]
    config.data_folder = os.path.abspath(resolve_data_dir(config.data_dir))
    return BinarizedMNIST(
        config=config,
        train_grey=None,
        train_fixed=train[:train_end],
        train_labels=None if train_labels is None else train_labels[:train_end],
        val=val,
        val_labels=val_labels,
        test=test[test_indices],
        test_labels=None if test_labels is None else test_labels[test_indices],
        test_indices=test_indices,
        notes=(
            f"digits: {amat_folder(resolve_data_dir(config.data_dir))}/binarized_mnist_*.amat; "
            + _labels_note(tuple(reason for _, _, reason in splits.values())),
        ),
    )


def _labels_note(reasons: tuple[str, ...]) -> str:
    """Where the splits' labels come from, given each split's reason it has none ("": it has)."""
    unknown = [reason for reason in dict.fromkeys(reasons) if reason]
    if not unknown:
        return "labels: MNIST's, matched by position (every .amat digit fits the MNIST digit there)"
    return "labels unknown (" + "; ".join(unknown) + ")"


def _larochelle_splits(
    config: DataConfig, splits: tuple[str, ...]
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None, str]]:
    """Each .amat split's digits, MNIST's labels when they fit them (``matching_labels``, at the
    split's ``mnist_position``), and why they are None; each MNIST split is read once."""
    root = resolve_data_dir(config.data_dir)
    folder = amat_folder(root)
    has_mnist = find_raw_folder(root) is not None
    mnist: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    found = {}
    for split in splits:
        digits = read_split(folder, split)
        if not has_mnist:
            found[split] = (digits, None, f"no MNIST raw files in {root} to take them from")
            continue
        source, start = mnist_position(split)
        if source not in mnist:
            mnist[source] = load_mnist_split(root, train=source == "train")
        grey, labels = (t[start : start + len(digits)] for t in mnist[source])
        matched = matching_labels(digits, grey, labels)
        why = (
            ""
            if matched is not None
            else f"{split}: MNIST's digits there do not match the .amat ones by position"
        )
        found[split] = (digits, matched, why)
    return found


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
