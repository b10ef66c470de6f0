"""rnn_mnist/training.py through train.py on the fixtures: outputs, interruptions, bad input."""

from __future__ import annotations

import math
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, PoisonedGradient, folder_files, tiny_train_args
from conftest import run_main as run_script_main
from helpers import run_train as run_main
from helpers import scripted_validation, strict_json, tiny_args

import train
from rnn_mnist import tasks, training
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.data import DataConfig, load_binarized_mnist
from rnn_mnist.models import ModelConfig, NextPixelModel

HISTORY_KEYS = {
    "epoch",
    "train_loss",
    "val_nll_nats",
    "test_loss",
    "test_nll_nats",
    "test_bits_per_pixel",
    "seconds",
    "batch_losses",
    "end_lr",
}


def test_a_refused_new_run_leaves_no_folder(tmp_path, capsys):
    code, err = run_main(tiny_train_args(tmp_path, tmp_path / "no-data", "nodata"), capsys)
    assert code == 2 and "MNIST" in err
    assert not (tmp_path / "nodata").exists()


def test_resume_into_a_read_only_folder_fails_before_training(
    tmp_path, mnist_dir, capsys, monkeypatch, make_read_only
):
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "ro", "--epochs", "1")) == 0
    folder = tmp_path / "ro"
    before = folder_files(folder)
    epochs_trained = []
    real_epoch = training._train_one_epoch
    monkeypatch.setattr(
        training, "_train_one_epoch", lambda *a, **k: epochs_trained.append(a[3]) or real_epoch(*a, **k)
    )
    make_read_only(folder)
    capsys.readouterr()
    code, err = run_main(tiny_train_args(tmp_path, mnist_dir, "ro", "--resume", "--epochs", "2"), capsys)
    assert code == 2 and str(folder) in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert epochs_trained == []  # refused before the work, not at the first save
    assert folder_files(folder) == before


def test_stale_temp_files_of_a_killed_save_are_cleaned_at_start(tmp_path, mnist_dir, capsys):
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "stale", "--epochs", "1")) == 0
    folder = tmp_path / "stale"
    stale = [
        ".checkpoint.ckpt.k1ll3d.tmp",
        ".best.ckpt.b3st.tmp",
        ".metrics.pkl.abc123.tmp",
        ".metrics.json.x_y.tmp",
    ]
    for extra in (["--resume", "--epochs", "2"], ["--overwrite", "--epochs", "1"]):
        for name in stale:
            (folder / name).write_bytes(b"half a checkpoint")
        (folder / "notes.txt").write_text("mine")
        assert train.main(tiny_train_args(tmp_path, mnist_dir, "stale", *extra)) == 0
        assert not list(folder.glob(".*.tmp")), extra
        assert (folder / "notes.txt").read_text() == "mine"  # only our own temporary files go


def test_a_non_finite_gradient_never_reaches_the_weights(tmp_path, mnist_dir, capsys, monkeypatch):
    # The loss of the last batch of epoch 1 (3 batches an epoch) is finite, its gradient NaN.
    # Before, the step applied it: epoch 1 ended with NaN weights and a NaN test NLL, and saved them.
    real_loss, calls = tasks.pixel_loss, {"n": 0}

    def loss_with_poisoned_gradient(logits, pixels, loss):
        value = real_loss(logits, pixels, loss)
        if not value.requires_grad:  # evaluation
            return value
        calls["n"] += 1
        return PoisonedGradient.apply(value) if calls["n"] == 3 else value

    monkeypatch.setattr(tasks, "pixel_loss", loss_with_poisoned_gradient)
    code, err = run_script_main(train.main, tiny_train_args(tmp_path, mnist_dir, "poison"), capsys)
    assert code == 3 and "gradient" in err and "epoch 1, batch 3" in err and "Traceback" not in err
    folder = tmp_path / "poison"
    checkpoint = load_checkpoint(folder / "checkpoint.ckpt")
    assert checkpoint["epoch"] == 0  # the checkpoint before the poisoned step, kept
    assert all(torch.isfinite(t).all() for t in checkpoint["model_state"].values())
    strict_json((folder / "metrics.json").read_text())


def test_a_non_finite_evaluation_is_not_saved(tmp_path, mnist_dir, capsys, monkeypatch):
    real_nll = tasks.evaluate_nll

    def nan_test_nll(model, pixels, *args):
        result = real_nll(model, pixels, *args)
        return {**result, "nll_nats": float("nan")} if len(pixels) == 40 else result  # the test split

    monkeypatch.setattr(tasks, "evaluate_nll", nan_test_nll)
    code, err = run_script_main(train.main, tiny_train_args(tmp_path, mnist_dir, "nan-eval"), capsys)
    assert code == 3 and "test nll" in err and "epoch 1" in err
    assert load_checkpoint(tmp_path / "nan-eval" / "checkpoint.ckpt")["epoch"] == 0


def test_an_epochs_lr_is_the_one_its_last_batch_ran_at(tmp_path, mnist_dir, capsys):
    # 3 batches an epoch; the warm-up ramps over 4: its first step (2.5e-4) is no epoch's figure.
    args = tiny_train_args(tmp_path, mnist_dir, "warm", "--lr", "1e-3", "--warmup-batches", "4")
    assert train.main(args) == 0
    checkpoint = load_checkpoint(tmp_path / "warm" / "checkpoint.ckpt")
    assert [e["end_lr"] for e in checkpoint["history"]] == pytest.approx([7.5e-4, 1e-3])
    assert checkpoint["optimizer_state"]["param_groups"][0]["lr"] == checkpoint["history"][-1]["end_lr"]
    log = (tmp_path / "warm" / "train.log").read_text()
    assert "| end lr 7.5e-04 |" in log and "| end lr 1.0e-03 |" in log


def test_cli_end_to_end_writes_pkl_and_checkpoint(tmp_path, mnist_dir):
    args = tiny_args(tmp_path, mnist_dir, "e2e")
    result = subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "| epoch   2 |" in result.stdout
    folder = tmp_path / "experiments" / "e2e"
    assert len(list(folder.glob("*.pkl"))) == 1
    assert {p.name for p in folder.glob("*.ckpt")} == {"checkpoint.ckpt", "best.ckpt"}  # the last, the best

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
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT prints every thread's stack
        # A suite started in the background (`pytest &` in a script) ignores SIGINT, and so would
        # train.py, which inherits it: Ctrl-C is what this test sends, so the child gets it back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    metrics = tmp_path / "experiments" / "stopped" / "metrics.pkl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if metrics.exists() and pickle.loads(metrics.read_bytes())["history"]:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # say where it hangs, and leave no process behind
        process.send_signal(signal.SIGABRT)
        _, err = process.communicate(timeout=30)
        pytest.fail(f"train.py did not end within 60 s of Ctrl-C; its threads:\n{err[-6000:]}")
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


@pytest.mark.parametrize(
    ("task", "key", "values"),
    [("next-pixel", "val_nll_nats", [90.0, 80.0, 85.0]), ("classify", "val_accuracy", [0.2, 0.6, 0.4])],
)
def test_best_ckpt_is_the_best_validation_epochs_checkpoint(
    tmp_path, mnist_dir, monkeypatch, task, key, values
):
    task_class = tasks.ClassifyTask if task == "classify" else tasks.NextPixelTask
    scripted_validation(monkeypatch, task_class, key, values)  # epoch 2 is the best, 3 the last
    saved, real_save = {}, training._Saver.save

    def save_and_keep(self, epoch):  # every epoch's weights, as its checkpoint.ckpt held them
        real_save(self, epoch)
        saved[epoch] = load_checkpoint(self.run.paths.checkpoint)["model_state"]

    monkeypatch.setattr(training._Saver, "save", save_and_keep)
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "best", "--task", task, "--epochs", "3")) == 0
    folder = tmp_path / "best"
    best, last = load_checkpoint(folder / "best.ckpt"), load_checkpoint(folder / "checkpoint.ckpt")
    assert (best["epoch"], last["epoch"]) == (2, 3)
    assert [entry[key] for entry in best["history"]] == values[:2]
    for name, weights in saved[2].items():
        assert torch.equal(best["model_state"][name], weights), name
    assert not all(torch.equal(best["model_state"][n], w) for n, w in last["model_state"].items())
    metrics = strict_json((folder / "metrics.json").read_text())
    assert (metrics["best_epoch"], metrics["best_by"]) == (2, key)
    assert not list(folder.glob(".*.tmp"))  # written through atomic_write, nothing left behind


def test_without_a_validation_split_there_is_no_best_ckpt(tmp_path, mnist_dir):
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "noval", "--val-size", "0", "--epochs", "1")) == 0
    assert not (tmp_path / "noval" / "best.ckpt").exists()
    assert strict_json((tmp_path / "noval" / "metrics.json").read_text())["best_epoch"] is None


def test_overwrite_removes_the_old_best_ckpt(tmp_path, mnist_dir):
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "redo", "--epochs", "1")) == 0
    assert (tmp_path / "redo" / "best.ckpt").exists()
    argv = tiny_train_args(tmp_path, mnist_dir, "redo", "--epochs", "1", "--val-size", "0", "--overwrite")
    assert train.main(argv) == 0
    assert not (tmp_path / "redo" / "best.ckpt").exists()
