"""MNIST's raw IDX files: found in the data folder, checked, read whole, downloaded only when missing.

    grey, labels = load_mnist_split("../shared/mnist", train=True)   # (60000, 784) uint8, (60000,) int64
    folder = find_raw_folder("../shared/mnist")                       # its MNIST/raw, or None

The four files (RAW_FILES, as torchvision names them; gzipped or not) are read straight into one uint8
tensor per split (no per-image Python objects), checked against their headers and each other;
torchvision only downloads them when no folder holds them. The data folder is the flag, else
$RNN_MNIST_DATA, else ./data (``resolve_data_dir``). rnn_mnist/data.py binarises and splits them.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch

from rnn_mnist.errors import RnnMnistError

IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE
DATA_ENV_VAR = "RNN_MNIST_DATA"
DEFAULT_DATA_DIR = "data"

# The raw files, as torchvision names them: train images and labels, then test images and labels.
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def resolve_data_dir(data_dir: str | None) -> str:
    """The folder that holds ``MNIST/raw``: the flag, else $RNN_MNIST_DATA, else ./data."""
    return data_dir or os.environ.get(DATA_ENV_VAR) or DEFAULT_DATA_DIR


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
