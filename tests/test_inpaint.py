"""In-painting any mask: mask specs, and sequential Monte Carlo through the one rollout routine."""

from __future__ import annotations

import itertools

import pytest
import torch

from rnn_mnist.errors import RnnMnistError
from rnn_mnist.masks import parse_mask, runs, suffix_mask
from rnn_mnist.models import ModelConfig, NextPixelModel
from rnn_mnist.rollout import _resample, complete, teacher_forced_nll

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


def _model(**config) -> NextPixelModel:
    torch.manual_seed(0)
    return NextPixelModel(ModelConfig(**{"hidden_size": 16, **config})).eval()


def _digits(n=5, seed=3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 784), 0.3), generator=generator).to(torch.uint8)


def test_mask_kinds_hide_what_they_say():
    grid = lambda spec: parse_mask(spec).view(28, 28)  # noqa: E731
    assert parse_mask("suffix:284").nonzero().squeeze(1).tolist() == list(range(500, 784))
    assert grid("rows:10-17").sum() == 8 * 28 and grid("rows:10-17")[10:18].all()
    assert grid("cols:3-5").sum() == 3 * 28 and grid("cols:3-5")[:, 3:6].all()
    assert grid("box:2,3,9,20").sum() == 8 * 18 and grid("box:2,3,9,20")[2:10, 3:21].all()
    assert grid("center:14").sum() == 196 and grid("center:14")[7:21, 7:21].all()
    assert grid("left:5")[:, :5].all() and grid("left:5").sum() == 5 * 28
    assert grid("right:3")[:, 25:].all() and grid("right:3").sum() == 3 * 28
    assert parse_mask("random:0.5").sum() == 392
    assert torch.equal(parse_mask("random:0.5", seed=1), parse_mask("random:0.5", seed=1))
    assert not torch.equal(parse_mask("random:0.5", seed=1), parse_mask("random:0.5", seed=2))


@pytest.mark.parametrize(
    "spec",
    ["center", "blob:3", "rows:5", "rows:9-3", "rows:0-28", "box:1,2,3", "center:0", "center:29",
     "random:0", "random:1.5", "random:x", "suffix:0", "suffix:785", "cols:a-b"],
)  # fmt: skip
def test_bad_mask_specs_get_a_one_line_reason(spec):
    with pytest.raises(RnnMnistError) as error:
        parse_mask(spec)
    assert spec in str(error.value) and "\n" not in str(error.value)


def test_runs_split_a_mask_in_pixel_order():
    hidden = torch.zeros(784, dtype=torch.bool)
    hidden[3:5] = hidden[9] = True
    assert runs(hidden) == [(0, 3, False), (3, 5, True), (5, 9, False), (9, 10, True), (10, 784, False)]


@pytest.mark.parametrize("inpaint", ["sample", "best"])
@pytest.mark.parametrize("sampling", ["greedy", "bernoulli"])
def test_a_suffix_mask_through_smc_is_todays_completion(sampling, inpaint):
    model, digits = _model(context=True, position=True), _digits()
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
    model, digits = _model(context=True), _digits()
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
        complete(_model(), _digits(), hidden=parse_mask("center:4"), samples=4, inpaint="sample")


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


def test_smc_samples_the_exact_posterior_of_a_small_hole_where_blind_filling_does_not():
    torch.manual_seed(1)
    model = NextPixelModel(ModelConfig(hidden_size=8, context=True)).eval()
    with torch.no_grad():  # sharper weights, so that the pixels after the hole say a lot about it
        for parameter in model.parameters():
            parameter.mul_(2.5)
    digit = _digits(1, seed=11)[0]
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
    model = _model(cell=cell, hidden_size=8)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3)
    hidden = parse_mask("random:0.3", seed=0)
    digits = _digits(3, seed=2)
    result = complete(model, digits, hidden=hidden, sampling="bernoulli", samples=16, inpaint="sample",
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert result.resamples > 0
    completed = result.completed[:, 0].float()
    teacher = torch.sigmoid(model.teacher_forced_logits(completed))[:, hidden]
    torch.testing.assert_close(result.probs[:, 0], teacher, rtol=1e-4, atol=1e-5)
