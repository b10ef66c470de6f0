"""A smoke test on real MNIST, when a copy is at hand ($RNN_MNIST_DATA or ../shared/mnist)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import conftest
import pytest
import torch
from conftest import REPO, make_mnist_folder, real_mnist_dir

from rnn_mnist import judge
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.data import DataConfig, load_test_digits


def test_tests_run_without_the_data_variable_but_find_the_folder_it_named(tmp_path, monkeypatch):
    # CI's $RNN_MNIST_DATA would stand in for a reloaded checkpoint's folder: conftest clears it for
    # every test, and keeps the folder it named (here a stand-in) for the tests on real MNIST.
    assert "RNN_MNIST_DATA" not in os.environ
    named = make_mnist_folder(tmp_path / "named")
    monkeypatch.setattr(conftest, "_DATA_ENV_AT_START", str(named))
    assert real_mnist_dir() == named.resolve()


@pytest.mark.skipif(real_mnist_dir() is None, reason="no MNIST copy ($RNN_MNIST_DATA or ../shared/mnist)")
def test_one_epoch_on_a_few_hundred_real_digits(tmp_path):
    command = [
        sys.executable,
        "train.py",
        "--exp-name",
        "smoke",
        "--exp-dir",
        str(tmp_path),
        "--data-dir",
        str(real_mnist_dir()),
        "--epochs",
        "1",
        "--train-subset",
        "384",
        "--test-subset",
        "200",
        "--val-size",
        "200",
        "--batch-size",
        "32",
        "--hidden",
        "32",
        "--lr",
        "3e-3",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    checkpoint = load_checkpoint(tmp_path / "smoke" / "checkpoint.ckpt")
    (entry,) = checkpoint["history"]
    assert checkpoint["data_config"]["binarize"] == "threshold"
    # Real digits are mostly background: even 12 updates beat a fair coin (784 ln 2 nats) clearly.
    assert entry["test_nll_nats"] < 0.8 * 784 * math.log(2)
    assert torch.isfinite(torch.tensor(entry["batch_losses"])).all()


@pytest.mark.skipif(real_mnist_dir() is None, reason="no MNIST copy ($RNN_MNIST_DATA or ../shared/mnist)")
def test_shipped_judge_reads_real_test_digits():
    """The stored accuracy is the shipped weights': a slice of real test digits agrees with it."""
    model, info = judge.load_judge()
    for name, (method, threshold) in judge.TEST_BINARIZATIONS.items():
        config = DataConfig(data_dir=str(real_mnist_dir()), binarize=method, threshold=threshold)
        pixels, labels = load_test_digits(config)
        accuracy = judge.accuracy(model, pixels[:1000], labels[:1000])
        assert accuracy >= 0.98 and info["test_accuracy"][name] >= 0.99, (name, accuracy)
