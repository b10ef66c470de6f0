"""rnn_mnist/likelihood.py: exact likelihoods from a teacher-forced pass, and Bayes' rule over them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_rollout import _conditioned_model, _digits, _model

from rnn_mnist import tasks
from rnn_mnist.likelihood import bits_per_dim, label_log_posterior, standard_error, teacher_forced_nll


def test_label_log_posterior_is_bayes_rule_over_the_class_likelihoods():
    model, images = _conditioned_model(), _digits(3).float()
    by_hand = torch.stack(
        [
            -F.binary_cross_entropy_with_logits(
                model.teacher_forced_logits(images, torch.full((3,), c)), images, reduction="none"
            ).sum(dim=1)
            for c in range(10)
        ],
        dim=1,
    ).detach()
    posterior = torch.stack([label_log_posterior(model, images, torch.full((3,), c)) for c in range(10)], 1)
    assert torch.allclose(posterior, by_hand.log_softmax(dim=1), atol=1e-4)
    assert torch.allclose(posterior.exp().sum(dim=1), torch.ones(3), atol=1e-5)
    assert posterior.std() > 0.1  # the classes really differ, or the test would prove little
    assert torch.allclose(
        label_log_posterior(model, images, torch.tensor([4, 0, 9]), batch_size=2),
        posterior[torch.arange(3), torch.tensor([4, 0, 9])],
        atol=1e-5,
    )


def test_label_posterior_needs_a_conditioned_model():
    with pytest.raises(ValueError, match="label-conditioned"):
        label_log_posterior(_model(), _digits(1).float(), torch.tensor([0]))


def test_bits_per_dim_is_nats_over_784_ln_2():
    # By hand: 784 ln 2 = 543.427..., and 81.30 / 543.427 = 0.14961 (a figure of the literature's size).
    assert 784 * math.log(2) == pytest.approx(543.4274, abs=1e-4)
    assert bits_per_dim(81.30) == pytest.approx(0.14961, abs=1e-5)
    assert round(bits_per_dim(81.30), 4) == 0.1496
    assert bits_per_dim(784 * math.log(2)) == pytest.approx(1.0)  # one bit a pixel: a coin flip each


def test_standard_error_from_sums_is_the_std_over_sqrt_n():
    values = torch.tensor([80.0, 95.5, 70.25, 101.0, 88.0], dtype=torch.float64)
    expected = float(values.std() / math.sqrt(5))  # N - 1 in the denominator, as torch's std
    got = standard_error(5, float(values.sum()), float(values.square().sum()))
    assert got == pytest.approx(expected, rel=1e-12)
    assert standard_error(1, 80.0, 6400.0) is None
    assert standard_error(3, 240.0, 3 * 6400.0) == 0.0  # equal values: no spread (never a NaN)


def test_an_evaluations_standard_error_is_over_its_digits_nlls(monkeypatch):
    monkeypatch.setattr(tasks, "EVAL_BATCH_SIZE", 3)  # sums carried across batches
    model, images = _model(), _digits(7)
    each = teacher_forced_nll(model, images).double()  # (7,) nats, one pass
    figures = tasks.evaluate_nll(model, images, "bce", torch.device("cpu"))
    assert figures["nll_nats"] == pytest.approx(float(each.mean()), rel=1e-5)
    assert figures["nll_nats_standard_error"] == pytest.approx(float(each.std() / math.sqrt(7)), rel=1e-3)
    assert figures["nll_nats_standard_error"] > 0
    assert figures["bits_per_pixel"] == pytest.approx(bits_per_dim(figures["nll_nats"]))
