"""Shared fixtures: tiny MNIST-format IDX files written by the tests themselves."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
TRAIN_DIGITS, TEST_DIGITS = 96, 40


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """IDX3: magic 0x00000803, then N, rows, cols as big-endian int32, then the bytes."""
    n, rows, cols = images.shape
    path.write_bytes(struct.pack(">iiii", 0x803, n, rows, cols) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">ii", 0x801, len(labels)) + labels.astype(np.uint8).tobytes())


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey 28x28 images: a bright vertical bar whose column encodes the label, plus faint noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 40, size=(n, 28, 28))
    for image, label in zip(images, labels, strict=True):
        column = 4 + 2 * label
        image[4:24, column : column + 2] = rng.integers(120, 256, size=(20, 2))
    return images.astype(np.uint8), labels


def make_mnist_folder(root: Path) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", TRAIN_DIGITS, 1), ("t10k", TEST_DIGITS, 2)):
        images, labels = synthetic_digits(n, seed)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def tiny_train_args(exp_dir: Path, mnist_dir: Path, name: str, *extra: str) -> list[str]:
    """train.py flags for a seconds-long run on the fixtures (3 batches an epoch, 2 epochs)."""
    # fmt: off
    return [
        "--exp-name", name, "--exp-dir", str(exp_dir), "--data-dir", str(mnist_dir),
        "--hidden", "8", "--batch-size", "32", "--val-size", "16", "--epochs", "2", *extra,
    ]
    # fmt: on


def run_main(main, argv: list[str], capsys) -> tuple[int, str]:
    """A script's main() in-process, as the shell would see it: exit code and stderr."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    """A data folder in torchvision's layout (MNIST/raw/*-ubyte) holding synthetic digits."""
    return make_mnist_folder(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(autouse=True)
def _no_download(monkeypatch):
    """Never reach the internet from a test: a download attempt hits a closed local port."""
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    torch.set_num_threads(min(2, torch.get_num_threads()))
