"""rnn_mnist/rollout.py: prefix kept, no hidden pixel seen, state carried; in-painting by SMC."""

from __future__ import annotations

import itertools

import pytest
import torch

from rnn_mnist.likelihood import label_log_posterior, teacher_forced_nll
from rnn_mnist.masks import parse_mask, suffix_mask
from rnn_mnist.models import ModelConfig, NextPixelModel
from rnn_mnist.rollout import (
    Completion,
    _resample,
    complete,
    most_likely,
    most_recognisable,
    rollout,
)

SPECS = [
    "suffix:284",
    "rows:10-17",
    "cols:3-5",
    "box:2,3,9,20",
    "center:14",
    "left:5",
    "right:3",
    "random:0.5",
]


def _inpaint_model(**config) -> NextPixelModel:
    torch.manual_seed(0)
    return NextPixelModel(ModelConfig(**{"hidden_size": 16, **config})).eval()


def _inpaint_digits(n=5, seed=3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 784), 0.3), generator=generator).to(torch.uint8)


def _posterior_and_frequencies(model, digit, hole, particles, inpaint, rows=1500):
    """The exact posterior over the 2^len(hole) fills of one digit, and the fills drawn."""
    candidates = torch.tensor(list(itertools.product([0, 1], repeat=len(hole))), dtype=torch.uint8)
    images = digit.repeat(len(candidates), 1)
    images[:, hole] = candidates
    posterior = torch.softmax(-teacher_forced_nll(model, images), dim=0)
    hidden = torch.zeros(784, dtype=torch.bool)
    hidden[hole] = True
    result = complete(
        model, digit.repeat(rows, 1), hidden=hidden, sampling="bernoulli", samples=particles,
        inpaint=inpaint, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    drawn = result.completed[:, 0, hole].long()  # (rows, len(hole)), the first kept particle
    code = (drawn * (2 ** torch.arange(len(hole) - 1, -1, -1))).sum(1)
    frequencies = torch.bincount(code, minlength=len(candidates)).float() / rows
    return posterior, frequencies


def _model(cell="gru", layers=1, hidden=16) -> NextPixelModel:
    torch.manual_seed(0)
    return NextPixelModel(ModelConfig(cell=cell, hidden_size=hidden, num_layers=layers)).eval()


def _digits(n=6, seed=3) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 784), 0.3), generator=torch.Generator().manual_seed(seed)).to(
        torch.uint8
    )


def _conditioned_model() -> NextPixelModel:
    torch.manual_seed(1)
    model = NextPixelModel(ModelConfig(hidden_size=8, num_classes=10, context=True)).eval()
    with torch.no_grad():  # make the label matter: a random model's label weights are small
        model.rnn.weight_ih_l0[:, -10:].mul_(20)
    return model


@pytest.mark.parametrize("inpaint", ["sample", "best"])
@pytest.mark.parametrize("sampling", ["greedy", "bernoulli"])
def test_a_suffix_mask_through_smc_is_todays_completion(sampling, inpaint):
    model, digits = _inpaint_model(context=True, position=True), _inpaint_digits()
    seeded = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    today = complete(model, digits, 284, sampling, generator=seeded())
    smc = complete(
        model, digits, hidden=suffix_mask(284), sampling=sampling, generator=seeded(), inpaint=inpaint
    )
    assert torch.equal(smc.completed, today.completed) and torch.equal(smc.probs, today.probs)
    if sampling == "bernoulli":  # K particles: no evidence follows the hole, so they are the K blind draws
        blind = complete(model, digits, 284, sampling, samples=4, generator=seeded())
        kept = complete(model, digits, 284, sampling, samples=4, generator=seeded(), inpaint=inpaint)
        assert kept.resamples == 0 and kept.mean_ess == 4
        assert all(any(torch.equal(kept.completed[i, 0], b) for b in blind.completed[i]) for i in range(5))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("inpaint", ["blind", "sample"])
def test_no_leak_and_visible_pixels_kept_for_every_mask(spec, inpaint):
    model, digits = _inpaint_model(context=True), _inpaint_digits()
    hidden = parse_mask(spec, seed=0)
    noisy = digits.clone()
    noisy[:, hidden] = torch.randint(0, 2, (5, int(hidden.sum())), dtype=torch.uint8)
    results = [
        complete(model, x, hidden=hidden, sampling="bernoulli", samples=4, inpaint=inpaint,
                 generator=torch.Generator().manual_seed(7))
        for x in (digits, noisy)
    ]  # fmt: skip
    assert torch.equal(results[0].completed, results[1].completed)
    assert torch.equal(results[0].probs, results[1].probs)
    k = results[0].completed.shape[1]
    assert torch.equal(results[0].completed[:, :, ~hidden], digits[:, None, ~hidden].expand(-1, k, -1))
    assert results[0].probs.shape == (5, k, int(hidden.sum()))


def test_greedy_with_many_particles_is_refused():
    with pytest.raises(ValueError, match="bernoulli"):
        complete(
            _inpaint_model(), _inpaint_digits(), hidden=parse_mask("center:4"), samples=4, inpaint="sample"
        )


def test_smc_samples_the_exact_posterior_of_a_small_hole_where_blind_filling_does_not():
    torch.manual_seed(1)
    model = NextPixelModel(ModelConfig(hidden_size=8, context=True)).eval()
    with torch.no_grad():  # sharper weights, so that the pixels after the hole say a lot about it
        for parameter in model.parameters():
            parameter.mul_(2.5)
    digit = _inpaint_digits(1, seed=11)[0]
    hole = [600, 601, 602]
    posterior, smc = _posterior_and_frequencies(model, digit, hole, particles=64, inpaint="sample")
    _, blind = _posterior_and_frequencies(model, digit, hole, particles=1, inpaint="blind")
    total_variation = lambda p, q: 0.5 * (p - q).abs().sum().item()  # noqa: E731
    assert total_variation(blind, posterior) > 0.2, (
        "the later pixels must matter for this test to mean anything"
    )
    assert total_variation(smc, posterior) < 0.06


def test_resampling_draws_by_weight_only_where_the_weights_degenerate():
    log_weight = torch.full((2, 4), -1e9)
    log_weight[0, 2] = 0  # digit 0: all weight on particle 2
    log_weight[1] = 0  # digit 1: equal weights, left alone
    ess = []
    index, new_weight, count = _resample(log_weight, ess, None)
    assert count == 1 and ess == [pytest.approx((1 + 4) / 2)]
    assert index.tolist() == [2, 2, 2, 2, 4, 5, 6, 7]
    assert torch.allclose(new_weight[0], torch.full((4,), -torch.log(torch.tensor(4.0))))
    assert torch.equal(new_weight[1], log_weight[1])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_resampled_particles_carry_their_recurrent_state(cell):
    # Holes with visible pixels between them, so particles are resampled between holes. If a
    # particle's state (an LSTM's h and c) did not travel with its canvas, the probabilities it
    # reports for the later holes would not be those of its own pixels.
    model = _inpaint_model(cell=cell, hidden_size=8)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3)
    hidden = parse_mask("random:0.3", seed=0)
    digits = _inpaint_digits(3, seed=2)
    result = complete(model, digits, hidden=hidden, sampling="bernoulli", samples=16, inpaint="sample",
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert result.resamples > 0
    completed = result.completed[:, 0].float()
    teacher = torch.sigmoid(model.teacher_forced_logits(completed))[:, hidden]
    torch.testing.assert_close(result.probs[:, 0], teacher, rtol=1e-4, atol=1e-5)


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
