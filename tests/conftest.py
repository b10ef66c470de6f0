"""Shared fixtures: tiny MNIST-format IDX files written by the tests themselves."""

from __future__ import annotations

import builtins
import errno
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from rnn_mnist.mnist_files import find_raw_folder

REPO = Path(__file__).resolve().parent.parent
TRAIN_DIGITS, TEST_DIGITS = 96, 40
# The devices that device-sensitive tests (those taking ``test_device``) run on, for example
# RNN_MNIST_TEST_DEVICES=cpu,cuda on a GPU machine. CPU only by default, as in CI: then any GPU is
# hidden from the tests and the scripts they start (before torch first touches CUDA), so that
# --device auto means the CPU and a GPU machine's default run is CI's run.
TEST_DEVICES = [d.strip() for d in os.environ.get("RNN_MNIST_TEST_DEVICES", "cpu").split(",") if d.strip()]
if "cuda" not in TEST_DEVICES:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
# CI points $RNN_MNIST_DATA at real MNIST (.ci/run). A test's run would read that folder wherever
# none is typed (a reloaded checkpoint's recorded folder defers to it), so it is taken out of the
# environment here, before any fixture of any scope or script runs; the tests that want real MNIST
# ask real_mnist_dir, which reads it as it was; a test that wants the variable sets it.
_DATA_ENV_AT_START = os.environ.pop("RNN_MNIST_DATA", None)


def real_mnist_dir() -> Path | None:
    """A copy of real MNIST at hand: $RNN_MNIST_DATA as the session found it, else ../shared/mnist."""
    for candidate in (_DATA_ENV_AT_START, REPO.parent / "shared" / "mnist"):
        if candidate and find_raw_folder(candidate) is not None:
            return Path(candidate).resolve()
    return None


def pytest_generate_tests(metafunc) -> None:
    if "test_device" in metafunc.fixturenames:
        metafunc.parametrize("test_device", TEST_DEVICES, indirect=True)


@pytest.fixture
def test_device(request) -> str:
    """One of RNN_MNIST_TEST_DEVICES; skipped where this machine does not have it."""
    name = request.param
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name not in available:
        raise ValueError(f"RNN_MNIST_TEST_DEVICES: unknown device {name!r} (cpu, cuda or mps)")
    if not available[name]:
        pytest.skip(f"RNN_MNIST_TEST_DEVICES names {name}, but this machine has none")
    return name


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


def with_flags(base: list[str], *extra: str) -> list[str]:
    """``base`` then ``extra``, a flag of ``extra`` replacing the same flag of ``base`` with its value
    (train.py and evaluate.py refuse a flag typed twice with two values)."""
    kept, replaced = [], False
    for item in base:
        if item.startswith("--"):
            replaced = item in extra
        if not replaced:
            kept.append(item)
    return [*kept, *extra]


def tiny_train_args(exp_dir: Path, mnist_dir: Path, name: str, *extra: str) -> list[str]:
    """train.py flags for a seconds-long run on the fixtures (3 batches an epoch, 2 epochs); a flag
    of ``extra`` replaces the same flag here."""
    # fmt: off
    base = [
        "--exp-name", name, "--exp-dir", str(exp_dir), "--data-dir", str(mnist_dir),
        "--hidden", "8", "--batch-size", "32", "--val-size", "16", "--epochs", "2", "--device", "cpu",
    ]
    # fmt: on
    return with_flags(base, *extra)


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


@pytest.fixture
def make_read_only(monkeypatch):
    """``make_read_only(folder)``: ``folder`` (and what is below it) then behaves as a read-only
    folder, as after ``chmod a-w``: nothing can be created, renamed or removed in it, while the
    files already there stay writable.

    An ordinary user gets the real chmod (undone after the test). Root ignores permissions, so
    there the file-system calls the toolkit makes are refused instead, with the same error.
    """
    restore: list[tuple[Path, int]] = []

    def make(folder: Path) -> None:
        folder = folder.resolve()
        if os.geteuid() != 0:
            restore.append((folder, folder.stat().st_mode))
            folder.chmod(0o555)
        else:
            _refuse_changes_below(folder, monkeypatch)

    yield make
    for folder, mode in restore:
        folder.chmod(mode)


def _refuse_changes_below(folder: Path, monkeypatch) -> None:
    def inside(path) -> bool:
        resolved = Path(os.path.abspath(os.fsdecode(path)))
        return resolved == folder or folder in resolved.parents

    def refuse(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

    real_os_open, real_io_open = os.open, io.open
    o_tmpfile = getattr(os, "O_TMPFILE", 0)

    def os_open(path, flags, mode=0o777, *, dir_fd=None):
        creates = bool(flags & os.O_CREAT) and not os.path.exists(path)
        if inside(path) and (creates or (o_tmpfile and (flags & o_tmpfile) == o_tmpfile)):
            refuse(path)
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    def io_open(file, mode="r", *args, **kwargs):
        creates = bool(set(mode) & set("wax+")) and isinstance(file, (str, bytes, os.PathLike))
        if creates and inside(file) and not os.path.exists(file):
            refuse(file)
        return real_io_open(file, mode, *args, **kwargs)

    def refusing(real, path_positions):
        def call(*args, **kwargs):
            for i in path_positions:
                if i < len(args) and inside(args[i]):
                    refuse(args[i])
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", io_open)
    monkeypatch.setattr(builtins, "open", io_open)
    for name, positions in (("mkdir", (0,)), ("replace", (0, 1)), ("rename", (0, 1)), ("unlink", (0,))):
        monkeypatch.setattr(os, name, refusing(getattr(os, name), positions))


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (subfolders such as samples/ included), by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()
    }


class PoisonedGradient(torch.autograd.Function):
    """The identity, whose gradient is NaN: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")
