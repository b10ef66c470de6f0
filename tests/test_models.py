"""The model is a next-pixel model: causal, steppable, rebuilt from its config."""

from __future__ import annotations

import pytest
import torch

from rnn_mnist.models import ModelConfig, NextPixelModel

CONFIGS = [
    ModelConfig(cell=cell, hidden_size=16, num_layers=layers)
    for cell in ("gru", "lstm", "rnn")
    for layers in (1, 2)
]


def _model(config: ModelConfig) -> NextPixelModel:
    torch.manual_seed(0)
    return NextPixelModel(config).eval()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.cell}-{c.num_layers}")
def test_changing_pixel_t_changes_no_prediction_up_to_t(config):
    model = _model(config)
    pixels = torch.bernoulli(torch.full((3, 784), 0.3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model.teacher_forced_logits(pixels)
        for t in (0, 100, 500, 782):
            flipped = pixels.clone()
            flipped[:, t] = 1 - flipped[:, t]
            after = model.teacher_forced_logits(flipped)
            assert torch.equal(after[:, : t + 1], before[:, : t + 1]), f"pixel {t} leaked backwards"
            assert not torch.allclose(after[:, t + 1], before[:, t + 1]), f"pixel {t} not used"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.cell}-{c.num_layers}")
def test_stepping_one_pixel_at_a_time_equals_the_sequence_pass(config):
    model = _model(config)
    pixels = torch.bernoulli(torch.full((2, 60), 0.4), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model.teacher_forced_logits(pixels)
        prefix = 25  # prime with a prefix, then step: the way a rollout uses the model
        logits, state = model(model.shift_right(pixels[:, :prefix]))
        read_state = model.read(model.shift_right(pixels[:, :prefix]))  # chunked, state only
        torch.testing.assert_close(read_state, state, rtol=1e-5, atol=1e-6)  # tensor or (h, c)
        stepped = [logits]
        for t in range(prefix, 60):
            logit, state = model.step(pixels[:, t - 1], state)
            stepped.append(logit.unsqueeze(1))
    torch.testing.assert_close(torch.cat(stepped, dim=1), full, rtol=1e-5, atol=1e-5)


def test_returns_logits_and_state_shapes():
    model = _model(ModelConfig(cell="lstm", hidden_size=8, num_layers=2))
    logits, (h, c) = model(torch.zeros(5, 784))
    assert logits.shape == (5, 784)
    assert h.shape == c.shape == (2, 5, 8)


def test_first_pixel_uses_the_start_value():
    model = _model(ModelConfig(hidden_size=8))
    pixels = torch.zeros(1, 784)
    before = model.teacher_forced_logits(pixels)[0, 0].item()
    with torch.no_grad():
        model.start_pixel.fill_(3.0)
    assert model.teacher_forced_logits(pixels)[0, 0].item() != before


def test_config_round_trip_rebuilds_identical_model():
    config = ModelConfig(cell="lstm", hidden_size=12, num_layers=2, dropout=0.1)
    model = _model(config)
    rebuilt = NextPixelModel(ModelConfig.from_dict(config.to_dict()))
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    pixels = torch.ones(2, 784)
    assert torch.equal(rebuilt.teacher_forced_logits(pixels), model.teacher_forced_logits(pixels))


@pytest.mark.parametrize(
    "bad", [dict(cell="transformer"), dict(hidden_size=0), dict(num_layers=0), dict(dropout=1.0)]
)
def test_impossible_configs_are_refused(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)
