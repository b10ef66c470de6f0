"""The rollout keeps the prefix, never sees hidden pixels, and carries state correctly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnn_mnist.masks import suffix_mask
from rnn_mnist.models import ModelConfig, NextPixelModel
from rnn_mnist.rollout import (
    Completion,
    complete,
    label_log_posterior,
    most_likely,
    most_recognisable,
    rollout,
)


def _model(cell="gru", layers=1, hidden=16) -> NextPixelModel:
    torch.manual_seed(0)
    return NextPixelModel(ModelConfig(cell=cell, hidden_size=hidden, num_layers=layers)).eval()


def _digits(n=6, seed=3) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 784), 0.3), generator=torch.Generator().manual_seed(seed)).to(
        torch.uint8
    )


@pytest.mark.parametrize("sampling", ["greedy", "bernoulli", "mean"])
@pytest.mark.parametrize("mask", [1, 284, 392, 784])
def test_prefix_preserved_and_shapes(sampling, mask):
    digits = _digits()
    result = complete(_model(), digits, mask, sampling, samples=3, generator=torch.Generator().manual_seed(0))
    assert result.completed.shape == (6, 3, 784) and result.completed.dtype == torch.uint8
    assert result.probs.shape == (6, 3, mask)
    visible = 784 - mask
    assert torch.equal(result.completed[:, :, :visible], digits[:, None, :visible].expand(-1, 3, -1))
    assert set(result.completed.unique().tolist()) <= {0, 1}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("sampling", ["greedy", "bernoulli", "mean"])
def test_no_leak_of_hidden_pixels(sampling, precision):
    digits = _digits()
    noisy = digits.clone()
    noisy[:, 500:] = torch.randint(0, 2, (6, 284), dtype=torch.uint8)
    runs = [
        complete(
            _model(), x, 284, sampling, 2, generator=torch.Generator().manual_seed(7), precision=precision
        )
        for x in (digits, noisy)
    ]
    assert torch.equal(runs[0].completed, runs[1].completed) and torch.equal(runs[0].probs, runs[1].probs)


def test_greedy_is_deterministic_and_bernoulli_reproducible_by_seed():
    model, digits = _model(), _digits()
    assert torch.equal(complete(model, digits, 284).completed, complete(model, digits, 284).completed)

    def draw(seed):
        return complete(
            model, digits, 284, "bernoulli", samples=2, generator=torch.Generator().manual_seed(seed)
        )

    assert torch.equal(draw(1).completed, draw(1).completed)
    assert not torch.equal(draw(1).completed, draw(2).completed)


def test_samples_of_one_digit_differ_under_bernoulli():
    result = complete(
        _model(), _digits(1), 392, "bernoulli", samples=4, generator=torch.Generator().manual_seed(0)
    )
    assert len({tuple(s.tolist()) for s in result.completed[0]}) > 1


@pytest.mark.parametrize(
    "config",
    [
        *(
            ModelConfig(cell=cell, hidden_size=16, num_layers=layers)
            for cell in ("gru", "lstm", "rnn")
            for layers in (1, 2)
        ),
        ModelConfig(hidden_size=16, context=True, position=True, num_classes=10),
    ],
    ids=lambda c: f"{c.cell}-{c.num_layers}{'-context-position-label' if c.context else ''}",
)
@pytest.mark.parametrize("visible", [0, 1, 500])
def test_fed_the_true_pixels_the_rollout_gives_teacher_forced_probabilities(config, visible):
    torch.manual_seed(0)
    model, digits = NextPixelModel(config).eval(), _digits().float()
    labels = torch.arange(6) if config.num_classes else None
    teacher = torch.sigmoid(model.teacher_forced_logits(digits, labels))
    hidden = suffix_mask(784 - visible)
    filled = rollout(model, digits, hidden, lambda p, t: digits[:, t], labels=labels)
    torch.testing.assert_close(filled.probs, teacher[:, visible:], rtol=1e-5, atol=1e-6)


def test_conditioned_completion_uses_the_label():
    torch.manual_seed(0)
    model = NextPixelModel(ModelConfig(hidden_size=16, num_classes=10)).eval()
    blank = torch.zeros(2, 784, dtype=torch.uint8)
    a = complete(model, blank, 784, "greedy", labels=torch.tensor([1, 1]))
    b = complete(model, blank, 784, "greedy", labels=torch.tensor([1, 8]))
    assert torch.equal(a.completed[0], b.completed[0]) and not torch.allclose(a.probs[1], b.probs[1])


def test_temperature_sharpens_the_draws_not_the_reported_probabilities():
    model, digits = _model(), _digits().float()
    seen = {}

    def record(temperature):
        seen[temperature] = []
        return lambda p, t: seen[temperature].append(p.clone()) or digits[:, t]

    cold = rollout(model, digits, suffix_mask(284), record(0.5), temperature=0.5).probs
    warm = rollout(model, digits, suffix_mask(284), record(1.0), temperature=1.0).probs
    assert torch.equal(cold, warm)  # the model's own p, for scoring by its likelihood
    cold_seen, warm_seen = torch.stack(seen[0.5], 1), torch.stack(seen[1.0], 1)
    assert torch.allclose(warm_seen, warm)
    assert ((cold_seen - 0.5).abs() >= (warm_seen - 0.5).abs() - 1e-6).all()
    assert ((cold_seen - 0.5).abs() > (warm_seen - 0.5).abs() + 1e-3).any()


def test_near_zero_temperature_draws_like_greedy():
    model, digits = _model(), _digits()
    generator = torch.Generator().manual_seed(0)
    greedy = complete(model, digits, 284, "greedy")
    cold = complete(model, digits, 284, "bernoulli", temperature=1e-4, generator=generator)
    assert torch.equal(greedy.completed, cold.completed)


def test_impossible_mask_is_refused():
    with pytest.raises(ValueError):
        complete(_model(), _digits(), 0)
    with pytest.raises(ValueError):
        complete(_model(), _digits(), 785)


def test_most_likely_keeps_the_sample_the_model_prefers():
    # One digit, two samples of two generated pixels; p(pixel = 1) is 0.9 then 0.2 for both.
    completed = torch.tensor([[[1, 0, 1, 1], [1, 0, 0, 0]]], dtype=torch.uint8)  # (1, 2, 4); mask 2
    probs = torch.tensor([[[0.9, 0.2], [0.9, 0.2]]])
    best = most_likely(Completion(completed, probs, hidden=torch.tensor([False, False, True, True])))
    # log 0.9 + log 0.2 for the first sample, log 0.1 + log 0.8 for the second: the first wins.
    assert best.completed.tolist() == [[[1, 0, 1, 1]]]


def test_best_of_end_to_end_on_a_random_model():
    torch.manual_seed(0)
    model = NextPixelModel(ModelConfig(hidden_size=8)).eval()
    result = complete(
        model, _digits(2), 284, "bernoulli", samples=4, generator=torch.Generator().manual_seed(0)
    )
    best = most_likely(result)
    assert best.completed.shape == (2, 1, 784)
    assert any(torch.equal(best.completed[0, 0], c) for c in result.completed[0])


def _conditioned_model() -> NextPixelModel:
    torch.manual_seed(1)
    model = NextPixelModel(ModelConfig(hidden_size=8, num_classes=10, context=True)).eval()
    with torch.no_grad():  # make the label matter: a random model's label weights are small
        model.rnn.weight_ih_l0[:, -10:].mul_(20)
    return model


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


def test_most_recognisable_keeps_the_sample_the_model_reads_as_its_label():
    model = _conditioned_model()
    labels = torch.tensor([3, 8])
    result = complete(
        model,
        _digits(2),
        784,
        "bernoulli",
        samples=5,
        generator=torch.Generator().manual_seed(0),
        labels=labels,
    )
    best = most_recognisable(model, result, labels)
    for i in range(2):
        scores = label_log_posterior(model, result.completed[i].float(), labels[i].repeat(5))
        assert torch.equal(best.completed[i, 0], result.completed[i, scores.argmax()])
        assert scores.max() > scores.min()  # a real choice was made


def test_label_posterior_needs_a_conditioned_model():
    with pytest.raises(ValueError, match="label-conditioned"):
        label_log_posterior(_model(), _digits(1).float(), torch.tensor([0]))
