"""The fused C rollout step (rnn_mnist/kernels/native.py, gru_step.c) against the torch-op step."""

from __future__ import annotations

import pytest
import torch

from rnn_mnist import steps
from rnn_mnist.kernels import native
from rnn_mnist.masks import parse_mask
from rnn_mnist.models import ModelConfig, NextPixelModel
from rnn_mnist.rollout import complete
from rnn_mnist.runtime import autocast

CONFIGS = {
    "plain": ModelConfig(hidden_size=16),
    "context-position": ModelConfig(hidden_size=16, context=True, position=True),
    "context-2x5-label": ModelConfig(
        hidden_size=24, context=True, context_rows=2, context_width=5, position=True, num_classes=10
    ),
}
LABELS = torch.tensor([3, 0, 9, 3, 7])


def _model(config: ModelConfig) -> NextPixelModel:
    torch.manual_seed(0)
    model = NextPixelModel(config).eval()
    with torch.no_grad():  # sharper than at initialisation, so that the state carries the digit
        for parameter in model.parameters():
            parameter.mul_(3)
    return model


def _canvas(n: int = 5, seed: int = 1) -> torch.Tensor:
    canvas = torch.bernoulli(torch.full((n, 784), 0.3), generator=torch.Generator().manual_seed(seed))
    canvas[0, :200] = 0  # a blank start: joins the shared read late
    canvas[1, :] = 0  # blank throughout
    return canvas


def _torch_logits(model, canvas, labels) -> torch.Tensor:
    """The reference: teacher-forced logits on torch ops (a pass with a gradient never runs on the
    fused step, which has no backward)."""
    with torch.enable_grad():
        return model.teacher_forced_logits(canvas, labels).detach()


def _require_kernel() -> None:
    if native.load_kernel() is None:
        pytest.skip(native.kernel_status())


def _steps(model, canvas, labels, start: int, precision: str = "fp32") -> tuple[torch.Tensor, object]:
    """Logits of pixels start..783 from read(start) and then the rollout's stepper, teacher-forced."""
    with torch.no_grad(), autocast(canvas.device, precision):
        state = model.read(canvas, start, labels) if start else None
        step = model.stepper(labels, len(canvas), canvas.device)
        logits = []
        for t in range(start, 784):
            logit, state = step(canvas, t, state)
            logits.append(logit)
    return torch.stack(logits, dim=1), step


@pytest.mark.parametrize("start", [0, 37, 500])
@pytest.mark.parametrize("name", CONFIGS)
def test_the_fused_step_gives_the_teacher_forced_logits(name, start):
    _require_kernel()
    config = CONFIGS[name]
    model, canvas = _model(config), _canvas()
    labels = LABELS if config.num_classes else None
    expected = _torch_logits(model, canvas, labels)[:, start:]
    logits, step = _steps(model, canvas, labels, start)
    assert isinstance(step, native.FusedGRUStep)  # the path under test really ran
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("start", "end"), [(0, 784), (37, 300)])
@pytest.mark.parametrize("name", CONFIGS)
def test_a_teacher_forced_pass_without_gradient_equals_the_torch_pass(name, start, end):
    """NextPixelModel.forward under no_grad runs on the fused step; with a gradient (training) it
    cannot, and the two must give the same logits and state."""
    _require_kernel()
    config = CONFIGS[name]
    model, canvas = _model(config), _canvas()
    labels = LABELS if config.num_classes else None
    with torch.no_grad():
        state = model.read(canvas, start, labels) if start else None
        assert steps.uses_fused_step(model, canvas.device)
        fused_logits, fused_state = model(canvas, start, end, labels, state)
    logits, final = model(canvas, start, end, labels, state)  # with a gradient: the torch ops
    assert logits.requires_grad
    torch.testing.assert_close(fused_logits, logits.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused_state, final.detach(), rtol=1e-5, atol=1e-5)


def test_a_model_with_dropout_in_training_mode_keeps_the_torch_ops():
    model = _model(ModelConfig(hidden_size=16, dropout=0.5)).train()
    with torch.no_grad():
        assert not steps.uses_fused_step(model, torch.device("cpu"))
        assert steps.uses_fused_step(model.eval(), torch.device("cpu")) == (native.load_kernel() is not None)


@pytest.mark.parametrize("name", CONFIGS)
def test_under_bf16_the_fused_step_follows_the_torch_step(name):
    """Both round the state to bf16 for the recurrent GEMM; they differ only where a state's last
    fp32 bit moves a bf16 rounding."""
    _require_kernel()
    config = CONFIGS[name]
    model, canvas = _model(config), _canvas()
    labels = LABELS if config.num_classes else None
    fused, step = _steps(model, canvas, labels, 300, "bf16")
    assert isinstance(step, native.FusedGRUStep)
    model.fused_step = False
    reference, step = _steps(model, canvas, labels, 300, "bf16")
    assert not isinstance(step, native.FusedGRUStep)
    torch.testing.assert_close(fused, reference, rtol=0, atol=2e-2)
    fp32 = _torch_logits(model, canvas, labels)[:, 300:]
    assert (fused - fp32).abs().max() > 1e-4  # bf16 did run: it is not the fp32 result


def test_a_state_changed_between_steps_is_read_afresh():
    """The step keeps the bf16 copy of the state it returned; a caller that changes that state
    (in place) must get a step on the changed state, not on the stale copy."""
    _require_kernel()
    model, canvas = _model(CONFIGS["context-position"]), _canvas()
    with torch.no_grad(), autocast(canvas.device, "bf16"):
        state = model.read(canvas, 400)
        step = model.stepper(None, len(canvas), canvas.device)
        _, state = step(canvas, 400, state)
        state.mul_(-1)
        logit, _ = step(canvas, 401, state)
        model.fused_step = False
        expected, _ = model.stepper(None, len(canvas), canvas.device)(canvas, 401, state)
    torch.testing.assert_close(logit, expected, rtol=0, atol=2e-2)


def test_greedy_completions_match_the_torch_step():
    _require_kernel()
    model = _model(CONFIGS["context-position"])
    digits = _canvas(20, seed=3).to(torch.uint8)
    fused = complete(model, digits, 284).completed[..., 500:]  # the generated pixels
    model.fused_step = False
    reference = complete(model, digits, 284).completed[..., 500:]
    assert (fused == reference).float().mean() >= 0.99


def test_in_painting_with_resampling_matches_the_torch_step():
    """Sequential Monte Carlo replaces the canvas when it resamples and feeds visible runs between
    holes; the fused step's pixel mirror must follow both."""
    _require_kernel()
    model = _model(CONFIGS["context-position"])
    digits = _canvas(6, seed=4).to(torch.uint8)
    hidden = parse_mask("rows:10-13") | parse_mask("rows:18-20")
    results = []
    for fused in (True, False):
        model.fused_step = fused
        generator = torch.Generator().manual_seed(5)
        options = dict(hidden=hidden, sampling="bernoulli", samples=8, inpaint="sample", generator=generator)
        results.append(complete(model, digits, **options))
    (fused, reference) = results
    assert fused.resamples > 0  # resampling happened
    assert fused.resamples == reference.resamples
    assert (fused.completed == reference.completed).float().mean() >= 0.99
    torch.testing.assert_close(fused.probs, reference.probs, rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    ("environment", "reason"),
    [
        ({"RNN_MNIST_NATIVE": "0"}, "RNN_MNIST_NATIVE=0"),
        ({"CC": "no-such-compiler-here"}, "no C compiler found"),
        ({"CC": "false"}, "building gru_step.c failed"),
    ],
)
def test_without_the_kernel_the_rollout_keeps_the_torch_step(environment, reason, monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setenv("RNN_MNIST_CACHE", str(tmp_path))  # nothing built there yet
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    assert native.load_kernel() is None
    assert reason in native.kernel_status()
    model = _model(CONFIGS["context-position"])
    assert reason in steps.describe_step(model, torch.device("cpu"))
    _, step = _steps(model, _canvas(), None, 700)
    assert not isinstance(step, native.FusedGRUStep)
    completed = complete(model, _canvas(3).to(torch.uint8), 10).completed
    assert completed.shape == (3, 1, 784)


def test_models_the_kernel_does_not_cover_keep_the_torch_step():
    for config in (
        ModelConfig(hidden_size=16, num_layers=2),
        ModelConfig(cell="lstm", hidden_size=16),
        ModelConfig(hidden_size=16, head_hidden=8),
        ModelConfig(hidden_size=native.MAX_HIDDEN + 1),  # the C step's buffers are fixed-size
        ModelConfig(hidden_size=16, context=True, context_rows=10, context_width=27),  # 271 inputs
    ):
        model = _model(config)
        assert "torch ops" in steps.describe_step(model, torch.device("cpu"))
        with torch.no_grad():
            assert not isinstance(model.stepper(None, 2, torch.device("cpu")), native.FusedGRUStep)


def test_bad_inputs_are_refused_before_the_c_step_reads_them():
    """The C step indexes raw memory: mismatched shapes and labels must be errors, not overflows."""
    _require_kernel()
    model, canvas = _model(CONFIGS["context-position"]), _canvas(4)
    with torch.no_grad():
        step = model.stepper(None, 4, canvas.device)
        with pytest.raises(ValueError, match="bad input"):
            step(canvas, 300, torch.zeros(1, 6, 16))  # six states for four digits
        labelled = _model(CONFIGS["context-2x5-label"])
        with pytest.raises(ValueError, match="labels"):
            labelled.stepper(torch.tensor([1, 2]), 4, canvas.device)(canvas, 300, None)
        with pytest.raises(ValueError, match="labels must be in"):
            labelled.stepper(torch.tensor([1, 2, 3, 10]), 4, canvas.device)
        with pytest.raises(ValueError, match="pixels"):
            native.FusedGRUStep(model.step_weights(), None, torch.float32).read(canvas[:, :100], 200)


@pytest.mark.parametrize("batch", [0, 1])
def test_empty_and_single_digit_batches(batch):
    _require_kernel()
    model, canvas = _model(CONFIGS["context-position"]), _canvas(5)[:batch]
    with torch.no_grad():
        state = model.read(canvas, 300)
        assert state.shape == (1, batch, 16)
        logits, _ = model(canvas, 300, 784, None, state)
    assert logits.shape == (batch, 484)
    torch.testing.assert_close(logits, _torch_logits(model, canvas, None)[:, 300:], rtol=1e-4, atol=1e-4)


def test_the_fused_step_runs_under_inference_mode():
    _require_kernel()
    model, canvas = _model(CONFIGS["context-position"]), _canvas()
    with torch.inference_mode():
        completed = complete(model, canvas.to(torch.uint8), 100, precision="bf16").completed
    with torch.no_grad():
        again = complete(model, canvas.to(torch.uint8), 100, precision="bf16").completed
    assert torch.equal(completed, again)


def test_a_new_build_replaces_the_stale_ones_in_the_cache(monkeypatch, tmp_path):
    _require_kernel()  # a compiler works here
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setenv("RNN_MNIST_CACHE", str(tmp_path))
    stale = tmp_path / "gru_step-0123456789abcdef.so"
    stale.write_bytes(b"an old build")
    assert native.load_kernel() is not None
    assert not stale.exists()
    assert len(list(tmp_path.glob("gru_step-*.so"))) == 1  # the new build
