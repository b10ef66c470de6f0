"""train.py end to end on the IDX fixtures: outputs, resume, refusals and bad input."""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_train_args
from conftest import run_main as run_script_main

import train
from rnn_mnist import tasks, training
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.data import DataConfig, load_binarized_mnist
from rnn_mnist.models import ModelConfig, NextPixelModel

TIMING_KEYS = {"seconds", "train_seconds", "train_sequences_per_second"}
HISTORY_KEYS = {
    "epoch",
    "train_loss",
    "val_nll_nats",
    "test_loss",
    "test_nll_nats",
    "test_bits_per_pixel",
    "seconds",
    "batch_losses",
    "lr",
}


def tiny_args(tmp_path: Path, mnist_dir: Path, name: str = "exp", *extra: str) -> list[str]:
    return tiny_train_args(tmp_path / "experiments", mnist_dir, name, *extra)


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    return run_script_main(train.main, argv, capsys)


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k not in TIMING_KEYS} for entry in history]


@pytest.mark.parametrize("config", [training.TrainConfig, ModelConfig, DataConfig])
def test_flag_defaults_match_the_config_defaults(config):
    # train.py's flags and the config dataclasses each state a default; they must agree, or a run
    # from the shell and one from Python would train different things.
    flags = vars(train.build_parser().parse_args(["--exp-name", "x"]))
    for field in dataclasses.fields(config):
        if field.name in flags and field.default is not dataclasses.MISSING:
            assert flags[field.name] == field.default, field.name


def test_cli_end_to_end_writes_pkl_and_checkpoint(tmp_path, mnist_dir):
    args = tiny_args(tmp_path, mnist_dir, "e2e")
    result = subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "| epoch   2 |" in result.stdout
    folder = tmp_path / "experiments" / "e2e"
    assert len(list(folder.glob("*.pkl"))) == 1 and len(list(folder.glob("*.ckpt"))) == 1

    with open(folder / "metrics.pkl", "rb") as f:
        metrics = pickle.load(f)
    flags = {a.dest for a in train.build_parser()._actions if a.dest != "help"}
    assert set(metrics["config"]) == flags and metrics["config"]["hidden_size"] == 8
    history = metrics["history"]
    assert [e["epoch"] for e in history] == [1, 2]
    for entry in history:
        assert set(entry) >= HISTORY_KEYS
        assert len(entry["batch_losses"]) == math.ceil(80 / 32)
        assert entry["test_bits_per_pixel"] == pytest.approx(entry["test_nll_nats"] / (784 * math.log(2)))

    checkpoint = torch.load(folder / "checkpoint.ckpt", weights_only=True)
    for key in ("model_config", "model_state", "optimizer_state", "scheduler_state", "epoch", "rng_state"):
        assert key in checkpoint
    assert checkpoint["epoch"] == 2 and checkpoint["history"] == history
    assert all(t.device.type == "cpu" for t in checkpoint["model_state"].values())

    # The checkpoint alone rebuilds the model, and it reproduces the reported test NLL.
    model = NextPixelModel(ModelConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model_state"])
    data = load_binarized_mnist(DataConfig(**checkpoint["data_config"]))
    nll = tasks.evaluate_nll(model, data.test, "bce", torch.device("cpu"))["nll_nats"]
    assert nll == pytest.approx(history[-1]["test_nll_nats"], rel=1e-5)


def test_resume_equals_uninterrupted_run(tmp_path, mnist_dir, capsys):
    # Dropout and dynamic binarisation make every RNG matter; the milestone tests the scheduler.
    # fmt: off
    settings = ("--binarize", "dynamic", "--dropout", "0.3", "--layers", "2", "--lr", "1e-3",
                "--lr-milestones", "2", "--lr-gamma", "0.5")
    # fmt: on
    assert train.main(tiny_args(tmp_path, mnist_dir, "straight", *settings, "--epochs", "3")) == 0
    assert train.main(tiny_args(tmp_path, mnist_dir, "resumed", *settings, "--epochs", "1")) == 0
    torch.manual_seed(12345)  # scramble the global RNG: the resume must restore its own
    assert train.main(tiny_args(tmp_path, mnist_dir, "resumed", "--resume", "--epochs", "3")) == 0

    straight = load_checkpoint(tmp_path / "experiments" / "straight" / "checkpoint.ckpt")
    resumed = load_checkpoint(tmp_path / "experiments" / "resumed" / "checkpoint.ckpt")
    assert [e["lr"] for e in straight["history"]] == [1e-3, 1e-3, 5e-4]  # milestone 2: after epoch 2
    assert without_timings(resumed["history"]) == without_timings(straight["history"])
    for key, value in straight["model_state"].items():
        assert torch.equal(value, resumed["model_state"][key]), key


def test_existing_experiment_is_refused_and_left_intact(tmp_path, mnist_dir, capsys):
    args = tiny_args(tmp_path, mnist_dir, "taken", "--epochs", "1")
    assert train.main(args) == 0
    folder = tmp_path / "experiments" / "taken"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}  # samples/ included
    code, err = run_main(args, capsys)
    assert code == 2 and "already exists" in err and "--resume" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_overwrite_starts_again(tmp_path, mnist_dir, capsys):
    assert train.main(tiny_args(tmp_path, mnist_dir, "again", "--epochs", "2")) == 0
    assert train.main(tiny_args(tmp_path, mnist_dir, "again", "--epochs", "1", "--overwrite")) == 0
    checkpoint = load_checkpoint(tmp_path / "experiments" / "again" / "checkpoint.ckpt")
    assert checkpoint["epoch"] == 1 and len(checkpoint["history"]) == 1


@pytest.mark.parametrize(
    "bad",
    [
        ["--hidden", "0"],
        ["--epochs", "-1"],
        ["--lr", "0"],
        ["--lr", "nan"],
        ["--batch-size", "0"],
        ["--threshold", "1.5"],
        ["--dropout", "1"],
        ["--layers", "0"],
        ["--lr-milestones", "3,2"],
        ["--val-size", "-5"],
        ["--cell", "transformer"],
        ["--exp-name", "../escape"],
        ["--val-size", "1000"],
    ],
    ids=lambda bad: " ".join(bad),
)
def test_impossible_values_give_a_short_error(tmp_path, mnist_dir, capsys, bad):
    code, err = run_main(tiny_args(tmp_path, mnist_dir, "bad", *bad), capsys)
    assert code == 2
    assert "error" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3
    assert not (tmp_path / "experiments" / "bad" / "checkpoint.ckpt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_short_error(tmp_path, mnist_dir, capsys):
    code, err = run_main(tiny_args(tmp_path, mnist_dir, "gpu", "--device", "cuda"), capsys)
    assert code == 2 and "no CUDA" in err


def test_missing_dataset_offline_says_how_to_fix(tmp_path, capsys):
    code, err = run_main(tiny_args(tmp_path, tmp_path / "empty", "nodata"), capsys)
    assert code == 2 and "--data-dir" in err and "RNN_MNIST_DATA" in err and "Traceback" not in err


def _corrupt(path: Path, how: str, marker: Path) -> None:
    if how == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 10)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif how == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif how == "code":  # a pickle that would run a command if unpickled without restriction

        class Exploit:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        torch.save({"model_state": Exploit()}, path)


@pytest.mark.parametrize("how", ["garbage", "truncated", "foreign", "code"])
def test_corrupt_or_foreign_checkpoint_on_resume(tmp_path, mnist_dir, capsys, how):
    assert train.main(tiny_args(tmp_path, mnist_dir, "hurt", "--epochs", "1")) == 0
    marker = tmp_path / "pwned"
    _corrupt(tmp_path / "experiments" / "hurt" / "checkpoint.ckpt", how, marker)
    code, err = run_main(tiny_args(tmp_path, mnist_dir, "hurt", "--resume"), capsys)
    assert code == 2 and "checkpoint" in err and "Traceback" not in err
    assert not marker.exists()


def test_resume_without_checkpoint_is_refused(tmp_path, mnist_dir, capsys):
    code, err = run_main(tiny_args(tmp_path, mnist_dir, "never", "--resume"), capsys)
    assert code == 2 and "no checkpoint" in err


def test_resume_refuses_flags_that_clash_with_the_experiment(tmp_path, mnist_dir, capsys):
    assert train.main(tiny_args(tmp_path, mnist_dir, "fixed", "--epochs", "1")) == 0
    code, err = run_main(tiny_args(tmp_path, mnist_dir, "fixed", "--resume", "--hidden", "16"), capsys)
    assert code == 2 and "--hidden-size 16" in err
    # Flags that may change on resume (how far to train) are accepted.
    assert train.main(tiny_args(tmp_path, mnist_dir, "fixed", "--resume", "--epochs", "2")) == 0


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, mnist_dir, capsys, monkeypatch):
    real_step, calls = training.optimize, {"n": 0}

    def step_that_explodes_in_epoch_two(*args):
        calls["n"] += 1
        value = real_step(*args)
        return value * float("nan") if calls["n"] == 5 else value  # 3 batches per epoch

    monkeypatch.setattr(training, "optimize", step_that_explodes_in_epoch_two)
    code, err = run_main(tiny_args(tmp_path, mnist_dir, "nan", "--epochs", "3"), capsys)
    assert code == 3 and "nan" in err and "epoch 2" in err
    checkpoint = load_checkpoint(tmp_path / "experiments" / "nan" / "checkpoint.ckpt")
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in checkpoint["model_state"].values())


def test_ctrl_c_keeps_the_last_epoch_and_says_how_to_resume(tmp_path, mnist_dir):
    args = tiny_args(tmp_path, mnist_dir, "stopped", "--epochs", "100000")
    process = subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "experiments" / "stopped" / "metrics.pkl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if metrics.exists() and pickle.loads(metrics.read_bytes())["history"]:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    checkpoint = load_checkpoint(tmp_path / "experiments" / "stopped" / "checkpoint.ckpt")
    assert checkpoint["epoch"] >= 1 and len(checkpoint["history"]) == checkpoint["epoch"]
    assert not list(metrics.parent.glob(".*.tmp"))  # no half-written files left behind


def test_mse_training_still_reports_nll(tmp_path, mnist_dir, capsys):
    assert train.main(tiny_args(tmp_path, mnist_dir, "mse", "--loss", "mse", "--epochs", "1")) == 0
    entry = load_checkpoint(tmp_path / "experiments" / "mse" / "checkpoint.ckpt")["history"][0]
    assert 0 < entry["test_loss"] < 1  # mean squared error of probabilities
    assert entry["test_nll_nats"] > 784 * entry["test_loss"]  # NLL, not MSE, in nats per image
