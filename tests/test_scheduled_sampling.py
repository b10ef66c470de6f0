"""Scheduled sampling: the schedules' values, and what is fed at eps = 1 and eps = 0."""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import tiny_train_args

import evaluate
import train
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.models import ModelConfig, NextPixelModel
from rnn_mnist.scheduled_sampling import Schedule, parallel_mixture, resolve_mode, sequential_logits


def test_schedule_values_at_given_steps():
    linear = Schedule("linear", k=1.0, c=0.1, eps_min=0.5)
    assert [linear.teacher_forcing_prob(i) for i in (0, 3, 10)] == pytest.approx([1.0, 0.7, 0.5])
    assert Schedule("exponential", k=0.5).teacher_forcing_prob(3) == pytest.approx(0.125)
    sigmoid = Schedule("inverse-sigmoid", k=10.0)
    assert sigmoid.teacher_forcing_prob(0) == pytest.approx(10 / 11)
    assert sigmoid.teacher_forcing_prob(10) == pytest.approx(10 / (10 + math.e))
    assert Schedule("inverse-sigmoid", k=1.0).teacher_forcing_prob(10**6) == pytest.approx(0.0)
    assert Schedule("none").teacher_forcing_prob(10**6) == 1.0
    assert Schedule("exponential").k == 0.9998 and Schedule("inverse-sigmoid").k == 1000.0


@pytest.mark.parametrize(
    "bad", [dict(kind="exponential", k=1.5), dict(kind="inverse-sigmoid", k=0.5), dict(kind="x")]
)
def test_impossible_schedules_are_refused(bad):
    with pytest.raises(ValueError):
        Schedule(**bad)


def test_auto_mode_is_sequential_on_the_cpu_and_parallel_on_a_gpu():
    assert resolve_mode("auto", torch.device("cpu")) == "sequential"
    assert resolve_mode("auto", torch.device("cuda")) == "parallel"
    assert resolve_mode("parallel", torch.device("cpu")) == "parallel"


def _model() -> NextPixelModel:
    torch.manual_seed(0)
    return NextPixelModel(ModelConfig(hidden_size=8, context=True))


def _pixels(seed: int) -> torch.Tensor:
    return torch.bernoulli(torch.full((4, 784), 0.3), generator=torch.Generator().manual_seed(seed))


def test_eps_one_is_teacher_forcing():
    model, pixels = _model(), _pixels(0)
    assert parallel_mixture(model, pixels, 1.0, torch.Generator()) is pixels
    logits, fed = sequential_logits(model, pixels, 1.0, torch.Generator())
    assert torch.equal(fed, pixels)
    torch.testing.assert_close(logits, model.teacher_forced_logits(pixels), rtol=1e-5, atol=1e-5)


def test_eps_zero_parallel_feeds_only_the_models_draws():
    model, pixels = _model(), _pixels(0)
    mixed = parallel_mixture(model, pixels, 0.0, torch.Generator().manual_seed(5))
    # By hand: the coins use up one uniform per pixel, then one Bernoulli draw per pixel follows.
    generator = torch.Generator().manual_seed(5)
    torch.rand(pixels.shape, generator=generator)
    with torch.no_grad():
        draws = torch.bernoulli(torch.sigmoid(model.teacher_forced_logits(pixels)), generator=generator)
    assert torch.equal(mixed, draws) and not torch.equal(mixed, pixels)


def test_eps_zero_sequential_feeds_only_its_own_draws():
    model = _model()
    logits_a, fed_a = sequential_logits(model, _pixels(0), 0.0, torch.Generator().manual_seed(5))
    _, fed_b = sequential_logits(model, _pixels(1), 0.0, torch.Generator().manual_seed(5))
    assert torch.equal(fed_a, fed_b)  # the true pixels were never read
    assert set(fed_a.unique().tolist()) <= {0.0, 1.0}
    # The logits are those of a teacher-forced pass over exactly what was fed.
    torch.testing.assert_close(logits_a, model.teacher_forced_logits(fed_a), rtol=1e-5, atol=1e-5)
    assert logits_a.requires_grad


def test_eps_one_schedule_trains_exactly_like_teacher_forcing(tmp_path, mnist_dir, capsys):
    exp_dir = tmp_path / "experiments"
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "tf")) == 0
    never = ("--scheduled-sampling", "linear", "--ss-k", "1", "--ss-c", "0")
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "ss", *never)) == 0
    tf, ss = (load_checkpoint(exp_dir / name / "checkpoint.ckpt") for name in ("tf", "ss"))
    for a, b in zip(tf["history"], ss["history"], strict=True):
        assert a["batch_losses"] == b["batch_losses"] and a["test_nll_nats"] == b["test_nll_nats"]
        assert a["teacher_forcing_prob"] == b["teacher_forcing_prob"] == 1.0


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_decaying_schedule_is_logged_per_epoch(tmp_path, mnist_dir, capsys, mode):
    exp_dir = tmp_path / "experiments"
    args = ("--scheduled-sampling", "exponential", "--ss-k", "0.9", "--ss-mode", mode, "--epochs", "2")
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "decay", *args)) == 0
    history = load_checkpoint(exp_dir / "decay" / "checkpoint.ckpt")["history"]
    # 3 batches an epoch: epoch 1 averages 0.9^0..0.9^2, epoch 2 continues at 0.9^3..0.9^5.
    assert history[0]["teacher_forcing_prob"] == pytest.approx((1 + 0.9 + 0.81) / 3)
    assert history[1]["teacher_forcing_prob"] == pytest.approx(sum(0.9**i for i in range(3, 6)) / 3)


def test_label_conditioning_is_saved_and_restored(tmp_path, mnist_dir, capsys):
    exp_dir = tmp_path / "experiments"
    assert (
        train.main(tiny_train_args(exp_dir, mnist_dir, "cond", "--condition", "label", "--epochs", "1")) == 0
    )
    checkpoint = load_checkpoint(exp_dir / "cond" / "checkpoint.ckpt")
    assert checkpoint["model_config"]["num_classes"] == 10
    model = NextPixelModel(ModelConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model_state"])
    blank = torch.zeros(2, 784)
    with torch.no_grad():
        logits = model.teacher_forced_logits(blank, torch.tensor([2, 7]))
    assert not torch.allclose(logits[0], logits[1])
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "cond", "--resume", "--epochs", "2")) == 0

    # Generation from a blank canvas, told the class: two of every digit, a grid row per class.
    out = tmp_path / "plots"
    # fmt: off
    argv = ["--exp-name", "cond", "--exp-dir", str(exp_dir), "--data-dir", str(mnist_dir),
            "--out-dir", str(out), "--mask-pixels", "784", "--per-class", "2", "--no-gifs"]
    # fmt: on
    assert evaluate.main(argv) == 0
    with np.load(out / "completions.npz") as npz:
        assert npz["labels"].tolist() == [d for d in range(10) for _ in range(2)]
        assert npz["completed"].shape == (20, 1, 28, 28)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["conditioned_on_label"] and 0 <= metrics["target_accuracy"] <= 1
    grid = iio.imread(out / "completions.png")
    assert grid.shape[0] > grid.shape[1] * 4  # 10 rows of 2

    # Best of 3 by the model's own reading of the label: still one drawing per requested digit.
    assert (
        evaluate.main([*argv, "--sampling", "bernoulli", "--best-of", "3", "--best-by", "label-posterior"])
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_of"] == 3 and metrics["best_by"] == "label-posterior"
    with np.load(out / "completions.npz") as npz:
        assert npz["completed"].shape == (20, 1, 28, 28)
