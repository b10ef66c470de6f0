"""Larochelle & Murray's statically binarised MNIST: the benchmark's own digits, read from .amat files.

    folder, splits = labelled_splits("data", ("train", "test"))   # data/ or data/binarized_mnist/
    splits["train"].digits                                 # (50000, 784) uint8 in {0, 1}
    splits["train"].labels                                 # MNIST's (50000,), or None: unknown

The three files (binarized_mnist_{train,valid,test}.amat, 50,000 / 10,000 / 10,000 digits; Larochelle
& Murray 2011) hold one digit a line: 784 whitespace-separated 0/1 integers. They carry no labels.
They were drawn as Bernoulli(grey) from MNIST (train = MNIST train[:50000], valid = train[50000:],
test = MNIST test, in order), so MNIST's labels are attached by position only where every digit of a
split fits the MNIST digit at its position (``matching_labels``); otherwise the labels are unknown.
rnn_mnist/data.py makes the splits a data set (``--binarize larochelle``).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from rnn_mnist.errors import RnnMnistError
from rnn_mnist.mnist_files import find_raw_folder, load_mnist_split

AMAT_FILES = {
    "train": "binarized_mnist_train.amat",
    "valid": "binarized_mnist_valid.amat",
    "test": "binarized_mnist_test.amat",
}
# Digits a split's file holds: fewer or more is a broken download, refused (tests shrink these).
AMAT_COUNTS = {"train": 50_000, "valid": 10_000, "test": 10_000}
AMAT_SUBFOLDER = "binarized_mnist"  # looked for inside the data folder too
AMAT_WIDTH = 784
# A Bernoulli(grey) draw never turns on a pixel whose grey level is 0, so a digit drawn from the MNIST
# digit at its position has no on pixel where that digit is blank; another digit has dozens (a digit
# lights ~100 pixels, mostly outside another's strokes). One stray pixel a digit is forgiven.
MAX_STRAY_PIXELS = 1
_SPACE, _NEWLINE, _ZERO, _ONE = 32, 10, 48, 49


def amat_folders(root: str | Path) -> tuple[Path, Path]:
    """Where the .amat files are looked for: the data folder itself, then its binarized_mnist/."""
    return Path(root), Path(root) / AMAT_SUBFOLDER


def find_amat_folder(root: str | Path) -> Path | None:
    """The first of ``amat_folders(root)`` holding all three files; None when neither does."""
    for folder in amat_folders(root):
        if all((folder / name).is_file() for name in AMAT_FILES.values()):
            return folder
    return None


def amat_folder(root: str | Path) -> Path:
    """The folder of the three .amat files, or an RnnMnistError naming what is missing where."""
    found = find_amat_folder(root)
    if found is not None:
        return found
    for folder in amat_folders(root):
        missing = [name for name in AMAT_FILES.values() if not (folder / name).is_file()]
        if len(missing) < len(AMAT_FILES):  # some are here: the others are missing
            raise RnnMnistError(
                f"--binarize larochelle: {folder / missing[0]} is missing (the three "
                f"binarized_mnist_{{train,valid,test}}.amat files must sit in one folder)"
            )
    first, second = amat_folders(root)
    raise RnnMnistError(
        f"--binarize larochelle reads binarized_mnist_{{train,valid,test}}.amat from {first} or "
        f"{second}: there is no {first / AMAT_FILES['train']} (download Larochelle & Murray's files there)"
    )


def read_split(folder: Path, split: str) -> torch.Tensor:
    """The digits (AMAT_COUNTS[split], 784) of one split's file in ``folder``; another count is an
    RnnMnistError in one line."""
    path = folder / AMAT_FILES[split]
    digits = read_amat(path)
    if len(digits) != AMAT_COUNTS[split]:
        raise RnnMnistError(
            f"{path} holds {len(digits):,} digits, not {AMAT_COUNTS[split]:,} (a truncated download?)"
        )
    return digits


def mnist_position(split: str) -> tuple[str, int]:
    """Where a split's digits were drawn from: the MNIST split ("train" or "test") and the position
    of its first digit there (valid follows the train file's digits in MNIST's train set)."""
    if split == "test":
        return "test", 0
    return "train", AMAT_COUNTS["train"] if split == "valid" else 0


def read_amat(path: Path, width: int = AMAT_WIDTH) -> torch.Tensor:
    """The digits (N, ``width``) uint8 in {0, 1} of an .amat file; a file that is not one digit of
    ``width`` 0/1 values a line is an RnnMnistError naming the file and the line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RnnMnistError(f"could not read {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise RnnMnistError(f"{path} is empty: an .amat file holds one digit a line")
    fast = _canonical_digits(data, width)
    if fast is not None:
        return torch.from_numpy(fast)
    lines = data.split(b"\n")
    while lines and not lines[-1].strip():  # blank lines at the end only
        lines.pop()
    digits = np.empty((len(lines), width), dtype=np.uint8)
    for number, line in enumerate(lines, start=1):
        digits[number - 1] = _parse_line(line, width, path, number)
    return torch.from_numpy(digits)


def _canonical_digits(data: bytes, width: int) -> np.ndarray | None:
    """The digits of a file written as "0 1 ... 0\\n" a line (the published files' layout), read at
    once; None for any other layout, left to the line-by-line reader (which names a fault)."""
    line = 2 * width  # width characters, width - 1 spaces, one newline
    raw = np.frombuffer(data, dtype=np.uint8)
    if len(raw) % line:
        return None
    rows = raw.reshape(-1, line)
    values, separators = rows[:, 0::2], rows[:, 1::2]
    if not (
        ((values == _ZERO) | (values == _ONE)).all()
        and (separators[:, :-1] == _SPACE).all()
        and (separators[:, -1] == _NEWLINE).all()
    ):
        return None
    return values - _ZERO


def _parse_line(line: bytes, width: int, path: Path, number: int) -> np.ndarray:
    """One line's ``width`` 0/1 values; an RnnMnistError names the file and line otherwise."""
    tokens = line.split()
    if len(tokens) != width:
        raise RnnMnistError(f"{path}: line {number} has {len(tokens)} values, not {width}")
    chars = np.frombuffer(b"".join(tokens), dtype=np.uint8)
    if len(chars) != width or not ((chars == _ZERO) | (chars == _ONE)).all():
        bad = next(t for t in tokens if t not in (b"0", b"1"))
        text = bad.decode(errors="replace")[:20]
        raise RnnMnistError(f"{path}: line {number} holds {text!r}, not 0 or 1")
    return chars - _ZERO


def matching_labels(digits: torch.Tensor, grey: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """``labels`` for ``digits`` (N, 784) when each is a Bernoulli draw of the MNIST digit of the same
    position in ``grey`` (N, 784): at most MAX_STRAY_PIXELS on pixels where that digit is blank; None
    when any digit is not (or the counts differ)."""
    if digits.shape != grey.shape or len(labels) != len(grey):
        return None
    stray = ((digits != 0) & (grey == 0)).sum(dim=1)
    return labels.clone() if bool((stray <= MAX_STRAY_PIXELS).all()) else None


class LabelledSplit(NamedTuple):
    """One split's digits (N, 784) uint8 in {0, 1}, MNIST's labels for them (None: unknown) and why
    they are unknown ("" when they are not)."""

    digits: torch.Tensor
    labels: torch.Tensor | None
    unlabelled_because: str


def labelled_splits(root: str, splits: tuple[str, ...]) -> tuple[Path, dict[str, LabelledSplit]]:
    """The folder of the .amat files in the data folder ``root`` (``amat_folder``), and each of its
    ``splits`` with MNIST's labels when they fit them (``matching_labels``, at the split's
    ``mnist_position``; the raw files read from ``root``); each MNIST split is read once."""
    folder = amat_folder(root)
    has_mnist = find_raw_folder(root) is not None
    mnist: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    found = {}
    for split in splits:
        digits = read_split(folder, split)
        if not has_mnist:
            found[split] = LabelledSplit(digits, None, f"no MNIST raw files in {root} to take them from")
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
        found[split] = LabelledSplit(digits, matched, why)
    return folder, found


def splits_note(folder: Path, splits: dict[str, LabelledSplit]) -> str:
    """A line for the run's log: where the digits (in ``folder``) and their labels come from."""
    unknown = [why for why in dict.fromkeys(split.unlabelled_because for split in splits.values()) if why]
    if not unknown:
        labels = "labels: MNIST's, matched by position (every .amat digit fits the MNIST digit there)"
    else:
        labels = "labels unknown (" + "; ".join(unknown) + ")"
    return f"digits: {folder}/binarized_mnist_*.amat; {labels}"
