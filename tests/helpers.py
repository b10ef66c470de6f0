"""Helpers shared by several test files: train.py runs on the fixtures, and strict JSON."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_main as run_script_main
from conftest import tiny_train_args

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
