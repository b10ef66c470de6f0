"""Helpers shared by several test files: train.py runs on the fixtures, strict JSON, and .amat files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import run_main as run_script_main
from conftest import synthetic_digits, tiny_train_args, write_idx_images, write_idx_labels

import train


def run_train(argv: list[str], capsys) -> tuple[int, str]:
    return run_script_main(train.main, argv, capsys)


def tiny_args(tmp_path: Path, mnist_dir: Path, name: str = "exp", *extra: str) -> list[str]:
    return tiny_train_args(tmp_path / "experiments", mnist_dir, name, *extra)


def classify_args(tmp_path, mnist_dir, name, *extra):
    return tiny_train_args(tmp_path / "experiments", mnist_dir, name, "--task", "classify", *extra)


def strict_json(text: str):
    """json.loads that rejects NaN and Infinity, as strict (RFC 8259) parsers do."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def scripted_validation(monkeypatch, task_class: type, key: str, values: list[float]) -> None:
    """Make ``task_class``'s epochs report ``values`` as their validation ``key`` (val_nll_nats,
    val_accuracy), one per epoch in order: a best epoch that is not the last, on purpose."""
    real_evaluate, remaining = task_class.evaluate, iter(values)

    def evaluate(self, *args, **kwargs):
        return {**real_evaluate(self, *args, **kwargs), key: next(remaining)}

    monkeypatch.setattr(task_class, "evaluate", evaluate)


def write_amat(path: Path, digits: np.ndarray) -> None:
    """Larochelle's .amat layout: one digit (784 values in {0, 1}) a line, space-separated."""
    lines = (" ".join(map(str, row)) + "\n" for row in np.asarray(digits).reshape(len(digits), -1))
    path.write_text("".join(lines))


def make_larochelle_folder(root: Path, train: int = 48, valid: int = 16, test: int = 20) -> dict:
    """MNIST raw files (blank backgrounds, as MNIST's) and the three .amat files drawn from them as
    Larochelle's were: Bernoulli(grey) of MNIST train[:train], train[train:], and test, in order.
    Returns the .amat digits and MNIST's labels by split."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(7)
    made = {}
    for prefix, count, seed, splits in (
        ("train", train + valid, 11, (("train", 0, train), ("valid", train, train + valid))),
        ("t10k", test, 12, (("test", 0, test),)),
    ):
        images, labels = synthetic_digits(count, seed)
        images[images < 100] = 0  # MNIST's background is 0: no Bernoulli draw lights it
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
        drawn = (rng.random(images.shape) < images / 255).astype(np.uint8).reshape(count, 784)
        for split, start, end in splits:
            write_amat(root / f"binarized_mnist_{split}.amat", drawn[start:end])
            made[split] = (drawn[start:end], labels[start:end])
    return made
