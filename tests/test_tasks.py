"""rnn_mnist/tasks.py: the classify task trained, resumed and refused end to end."""

from __future__ import annotations

import pytest
import torch
from conftest import PoisonedGradient, run_main, tiny_train_args
from helpers import classify_args as _args

import train
from rnn_mnist import tasks
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.config import TrainConfig
from rnn_mnist.data import DataConfig, is_benchmark
from rnn_mnist.models import pixel_permutation

TIMINGS = {"seconds", "train_seconds", "train_sequences_per_second"}


def test_classify_trains_and_resumes_exactly_with_one_fixed_permutation(tmp_path, mnist_dir, capsys):
    assert train.main(_args(tmp_path, mnist_dir, "straight", "--permute", "--data-seed", "4")) == 0
    assert "test acc" in capsys.readouterr().out
    assert (
        train.main(_args(tmp_path, mnist_dir, "resumed", "--permute", "--data-seed", "4", "--epochs", "1"))
        == 0
    )
    folder = tmp_path / "experiments" / "resumed"
    first = load_checkpoint(folder / "checkpoint.ckpt")["model_state"]["reading_order"]
    assert train.main(_args(tmp_path, mnist_dir, "resumed", "--resume", "--epochs", "2")) == 0

    straight = load_checkpoint(tmp_path / "experiments" / "straight" / "checkpoint.ckpt")
    resumed = load_checkpoint(folder / "checkpoint.ckpt")
    order = pixel_permutation(4)
    assert torch.equal(first, order) and torch.equal(resumed["model_state"]["reading_order"], order)
    assert resumed["model_config"]["permutation_seed"] == 4
    history = [{k: v for k, v in e.items() if k not in TIMINGS} for e in resumed["history"]]
    assert history == [{k: v for k, v in e.items() if k not in TIMINGS} for e in straight["history"]]
    for entry in history:
        assert {"train_loss", "val_accuracy", "test_accuracy", "test_loss", "val_loss"} <= set(entry)
        assert 0 <= entry["test_accuracy"] <= 1 and "test_nll_nats" not in entry
    for key in resumed["model_state"]:
        assert torch.equal(resumed["model_state"][key], straight["model_state"][key]), key


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--permute",), "--permute is for --task classify only"),
        (("--readout", "mean"), "--readout is for --task classify only"),
        (("--binarized-input",), "--binarized-input is for --task classify only"),
        (("--task", "classify", "--context"), "--context is for --task next-pixel only"),
        (("--task", "classify", "--condition", "label"), "--condition is for --task next-pixel only"),
        (("--task", "classify", "--scheduled-sampling", "linear"), "--scheduled-sampling is for"),
        # Issue 23, finding 9: typed at their defaults they were accepted; what was typed counts.
        (("--readout", "last"), "--readout is for --task classify only"),
        (("--task", "classify", "--loss", "bce"), "--loss is for --task next-pixel only"),
        (("--task", "classify", "--condition", "none"), "--condition is for --task next-pixel only"),
    ],
)
def test_flags_of_the_other_task_are_refused_in_one_line(tmp_path, mnist_dir, capsys, extra, message):
    code, err = run_main(train.main, tiny_train_args(tmp_path, mnist_dir, "bad", *extra), capsys)
    assert code != 0 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_resuming_a_next_pixel_experiment_as_a_classifier_is_refused(tmp_path, mnist_dir, capsys):
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "gen", "--epochs", "1")) == 0
    capsys.readouterr()
    args = tiny_train_args(tmp_path, mnist_dir, "gen", "--resume", "--task", "classify")
    code, err = run_main(train.main, args, capsys)
    assert code != 0 and err.startswith("error: ") and "--task classify" in err
    # Issue 23, finding 9: a classify flag typed at the saved (default) value changes nothing either.
    args = tiny_train_args(tmp_path, mnist_dir, "gen", "--resume", "--epochs", "2", "--readout", "last")
    code, err = run_main(train.main, args, capsys)
    assert code != 0 and err.startswith("error: ") and "--readout is for --task classify only" in err
    assert load_checkpoint(tmp_path / "gen" / "checkpoint.ckpt")["epoch"] == 1


# What main added to the one training loop (issue 11) holds for the classify task too.
def test_a_non_finite_gradient_never_reaches_a_classifier(tmp_path, mnist_dir, capsys, monkeypatch):
    real_loss, calls = tasks.ClassifyTask.loss, {"n": 0}

    def loss_with_poisoned_gradient(self, *args):
        value, extras = real_loss(self, *args)
        calls["n"] += 1
        return (PoisonedGradient.apply(value) if calls["n"] == 3 else value), extras

    monkeypatch.setattr(tasks.ClassifyTask, "loss", loss_with_poisoned_gradient)
    code, err = run_main(train.main, _args(tmp_path, mnist_dir, "poison"), capsys)
    assert code == 3 and "gradient" in err and "epoch 1, batch 3" in err and "Traceback" not in err
    checkpoint = load_checkpoint(tmp_path / "experiments" / "poison" / "checkpoint.ckpt")
    assert checkpoint["epoch"] == 0
    assert all(torch.isfinite(t.float()).all() for t in checkpoint["model_state"].values())


def test_a_non_finite_classifier_evaluation_is_not_saved(tmp_path, mnist_dir, capsys, monkeypatch):
    real_accuracy = tasks.ClassifyTask.accuracy

    def nan_test_loss(self, model, inputs, *args):
        result = real_accuracy(self, model, inputs, *args)
        return {**result, "loss": float("nan")} if len(inputs) == 40 else result  # the test split

    monkeypatch.setattr(tasks.ClassifyTask, "accuracy", nan_test_loss)
    code, err = run_main(train.main, _args(tmp_path, mnist_dir, "nan-eval"), capsys)
    assert code == 3 and "test loss" in err and "epoch 1" in err
    assert load_checkpoint(tmp_path / "experiments" / "nan-eval" / "checkpoint.ckpt")["epoch"] == 0


def test_the_epoch_line_shows_the_standard_error_for_the_digits_the_run_reads():
    """The task asks the resolved data config (a resumed run's: its checkpoint's), not the flags."""
    assert [is_benchmark(m) for m in ("threshold", "dynamic", "static", "larochelle")] == [
        False,
        True,
        True,
        True,
    ]
    flags = {"task": "next-pixel", "binarize": "threshold"}  # what the flags say, not what was read
    train_cfg = TrainConfig(exp_name="x")
    assert tasks.make_task(flags, train_cfg, DataConfig(binarize="larochelle")).benchmark
    assert not tasks.make_task({**flags, "binarize": "static"}, train_cfg, DataConfig()).benchmark
