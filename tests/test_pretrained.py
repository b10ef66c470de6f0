"""The shipped models in pretrained/: loadable safely, small, documented, and still the models they were."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from test_real_data import real_mnist_dir

from rnn_mnist.checkpoint import weights_sha256
from rnn_mnist.evaluation import load_model
from rnn_mnist.pretrained import CHECK_DIGITS, slice_nll

SHIPPED = sorted(path for path in (REPO / "pretrained").iterdir() if path.is_dir())


def test_the_readme_models_are_shipped():
    assert {path.name for path in SHIPPED} >= {"gru-128", "fast", "fast-label"}


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_a_shipped_model_loads_safely_and_is_small_and_documented(folder):
    model, checkpoint = load_model(folder / "checkpoint.ckpt", torch.device("cpu"))  # weights_only inside
    assert (folder / "checkpoint.ckpt").stat().st_size < 1_000_000
    assert checkpoint["optimizer_state"] == {} and "rng_state" not in checkpoint
    assert weights_sha256(checkpoint["model_state"]) == checkpoint["shipped"]["weights_sha256"]
    command = (folder / "COMMAND").read_text()
    assert command.startswith("python train.py ")  # it may name a recipe: test_options checks its flags
    metrics = json.loads((folder / "metrics.json").read_text())
    assert len(metrics["history"]) == checkpoint["epoch"] and (folder / "train.log").stat().st_size > 0
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.skipif(real_mnist_dir() is None, reason="no MNIST copy ($RNN_MNIST_DATA or ../shared/mnist)")
@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_a_shipped_model_still_scores_its_recorded_nll_on_real_test_digits(folder):
    checkpoint = torch.load(folder / "checkpoint.ckpt", weights_only=True)
    recorded = checkpoint["shipped"][f"test_nll_first_{CHECK_DIGITS}"]
    assert slice_nll(folder, str(real_mnist_dir())) == pytest.approx(recorded, abs=1e-3)


def test_a_shipped_model_is_not_resumed(tmp_path):
    folder = SHIPPED[0]
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--exp-dir",
            str(REPO / "pretrained"),
            "--exp-name",
            folder.name,
            "--resume",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "shipped model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
