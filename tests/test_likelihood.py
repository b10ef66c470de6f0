"""rnn_mnist/likelihood.py: exact likelihoods from a teacher-forced pass, and Bayes' rule over them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_rollout import _conditioned_model, _digits, _model

from rnn_mnist.likelihood import label_log_posterior


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
