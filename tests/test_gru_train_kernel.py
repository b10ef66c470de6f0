"""The training recurrence on C (rnn_mnist/kernels/native_recurrence.py, gru_step.c's gru_forward and
gru_backward) against gru.py's torch-op path and nn.GRU: outputs and every gradient.

Tolerances: both paths are fp32; the C loops sum the recurrent products in another order and use a
polynomial exp (relative error below 2e-7) in the sigmoids. Those rounding differences of ~1e-7 pass
through up to 30 steps of the recurrence and its backward; the largest differences measured are
~1e-5 on gradients of size ~1-10, so rtol 1e-4 with atol 1e-5 leaves a margin of ~10x while a
wrong term (a missing factor, a wrong gate) would be off by far more than that.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnn_mnist import steps
from rnn_mnist.kernels import native, native_recurrence
from rnn_mnist.kernels.gru import gru_layers, gru_recurrence
from rnn_mnist.models import ModelConfig, NextPixelModel, gru_layers_of

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(autouse=True)
def _kernel():
    if native.load_kernel() is None:
        pytest.skip(native.kernel_status())


def _inputs(steps: int, batch: int, hidden: int, seed: int = 0) -> list[torch.Tensor]:
    """gates_x (T, B, 3H), h0 (B, H), W_hh (3H, H), b_hn (H,), scaled as in a trained GRU."""
    generator = torch.Generator().manual_seed(seed)
    shapes = ((steps, batch, 3 * hidden), (batch, hidden), (3 * hidden, hidden), (hidden,))
    scales = (1.5, 0.5, 2 / hidden**0.5, 0.5)
    return [
        (torch.randn(shape, generator=generator) * scale).requires_grad_()
        for shape, scale in zip(shapes, scales, strict=True)
    ]


def _outputs_and_gradients(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """gru_recurrence's outputs, final state, and the gradients of all four inputs for a fixed
    weighting of the outputs and the final state (both paths of the gradient into the last state)."""
    outputs, final = gru_recurrence(*inputs)
    generator = torch.Generator().manual_seed(99)
    weight = torch.randn(outputs.shape, generator=generator)
    loss = (outputs * weight).sum() + (final * torch.randn(final.shape, generator=generator)).sum()
    return [outputs.detach(), final.detach(), *torch.autograd.grad(loss, inputs)]


def _calls(monkeypatch) -> dict[str, int]:
    """Counts the C forward and backward calls from here on."""
    counts = {"forward": 0, "backward": 0}
    for name in counts:
        original = getattr(native_recurrence, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(native_recurrence, name, counted)
    return counts


@pytest.mark.parametrize(
    ("steps", "batch", "hidden"),
    # The last three reach the production tiling: whole panels of 24 columns (24), a last 32 as two
    # tiles of 16 (32), both (128), with digits in blocks of 4 rows and a partial last block (9, 5, 3).
    [
        (7, 1, 8),
        (30, 3, 13),
        (12, 5, 64),
        (20, 17, 8),
        (9, 17, 13),
        (25, 4, 64),
        (6, 5, 128),
        (5, 9, 24),
        (5, 3, 32),
    ],
)
def test_the_c_recurrence_equals_the_torch_ops_in_outputs_and_every_gradient(
    steps, batch, hidden, monkeypatch
):
    inputs = _inputs(steps, batch, hidden)
    calls = _calls(monkeypatch)
    ours = _outputs_and_gradients(inputs)
    assert calls == {"forward": 1, "backward": 1}  # the C path really ran
    monkeypatch.setattr(native_recurrence, "runs", lambda *args: False)
    theirs = _outputs_and_gradients(inputs)
    assert calls == {"forward": 1, "backward": 1}  # and the reference did not
    for name, a, b in zip(["outputs", "final", "gates_x", "h0", "w_hh", "b_hn"], ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **TOLERANCE, msg=name)


@pytest.mark.parametrize(("batch", "hidden"), [(1, 8), (5, 13), (17, 64), (9, 128)])
def test_the_c_recurrence_equals_nn_gru_in_outputs_and_every_gradient(batch, hidden, monkeypatch):
    torch.manual_seed(batch)
    rnn = nn.GRU(3, hidden)
    x = torch.randn(11, batch, 3, requires_grad=True)
    h0 = torch.randn(1, batch, hidden, requires_grad=True)
    calls = _calls(monkeypatch)
    (layer,) = gru_layers_of(rnn)
    gates = nn.functional.linear(x, layer.w_ih, layer.input_bias)
    outputs, final = gru_layers([layer], gates, h0, dropout=0.0, training=True)
    expected, expected_final = rnn(x, h0)
    assert calls == {"forward": 1, "backward": 0}
    torch.testing.assert_close(outputs, expected, **TOLERANCE)
    torch.testing.assert_close(final, expected_final, **TOLERANCE)
    weight = torch.randn(outputs.shape)
    wrt = [x, h0, *rnn.parameters()]
    ours = torch.autograd.grad((outputs * weight).sum() + final.sum(), wrt)
    theirs = torch.autograd.grad((expected * weight).sum() + expected_final.sum(), wrt)
    names = ["x", "h0", *(n for n, _ in rnn.named_parameters())]
    for name, a, b in zip(names, ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **TOLERANCE, msg=name)


def test_a_two_layer_gru_runs_each_layer_on_the_c_recurrence_and_equals_nn_gru(monkeypatch):
    torch.manual_seed(5)
    rnn = nn.GRU(4, 16, num_layers=2)
    x = torch.randn(13, 6, 4, requires_grad=True)
    calls = _calls(monkeypatch)
    layers = gru_layers_of(rnn)
    gates = nn.functional.linear(x, layers[0].w_ih, layers[0].input_bias)
    outputs, final = gru_layers(layers, gates, None, dropout=0.0, training=True)
    expected, expected_final = rnn(x)
    torch.testing.assert_close(outputs, expected, **TOLERANCE)
    torch.testing.assert_close(final, expected_final, **TOLERANCE)
    wrt = [x, *rnn.parameters()]
    ours = torch.autograd.grad(outputs.square().sum() + final.sum(), wrt)
    theirs = torch.autograd.grad(expected.square().sum() + expected_final.sum(), wrt)
    assert calls == {"forward": 2, "backward": 2}
    for name, a, b in zip(["x", *(n for n, _ in rnn.named_parameters())], ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **TOLERANCE, msg=name)


def test_without_a_gradient_the_c_forward_gives_the_torch_states(monkeypatch):
    inputs = [t.detach() for t in _inputs(15, 6, 13)]
    calls = _calls(monkeypatch)
    ours = gru_recurrence(*inputs)
    assert calls["forward"] == 1
    monkeypatch.setattr(native_recurrence, "runs", lambda *args: False)
    theirs = gru_recurrence(*inputs)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **TOLERANCE)


def test_the_results_do_not_depend_on_the_thread_count():
    """Each thread takes whole rows through every step: the same sums whatever the split."""
    inputs = _inputs(10, 9, 13)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _outputs_and_gradients(inputs)
        torch.set_num_threads(2)
        two = _outputs_and_gradients(inputs)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("where", ["gates_x", "w_hh"])
def test_a_nan_goes_through_as_on_the_torch_ops(where, monkeypatch):
    """A NaN in one digit's input gates spoils that digit from that step on (and its gradients),
    never the others; a NaN in W_hh spoils everything. The same NaNs as on torch ops, none hidden."""
    inputs = _inputs(9, 5, 13)
    with torch.no_grad():
        if where == "gates_x":
            inputs[0][4, 2, 20] = float("nan")
        else:
            inputs[2][7, 3] = float("nan")
    ours = _outputs_and_gradients(inputs)
    monkeypatch.setattr(native_recurrence, "runs", lambda *args: False)
    theirs = _outputs_and_gradients(inputs)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.isnan(), b.isnan())
        torch.testing.assert_close(a, b, **TOLERANCE, equal_nan=True)
    outputs = ours[0]
    assert outputs.isnan().any()
    if where == "gates_x":
        # unit 7's z gate (column H + 7) at step 4; through W_hh every unit of that digit after it
        assert not outputs[:4].isnan().any() and outputs[4, 2, 7].isnan() and outputs[5:, 2].isnan().all()
        assert not outputs[:, [0, 1, 3, 4]].isnan().any()


def test_with_the_kernel_switched_off_training_runs_on_torch_ops(monkeypatch, capsys):
    loaded = native._loaded
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setenv("RNN_MNIST_NATIVE", "0")
    inputs = _inputs(6, 3, 8)
    assert not native_recurrence.runs(*inputs)
    calls = _calls(monkeypatch)
    ours = _outputs_and_gradients(inputs)
    assert calls == {"forward": 0, "backward": 0}
    assert "RNN_MNIST_NATIVE=0" in capsys.readouterr().err  # said once, in one line
    monkeypatch.setattr(native, "_loaded", loaded)
    theirs = _outputs_and_gradients(inputs)
    assert calls == {"forward": 1, "backward": 1}
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **TOLERANCE)


def test_bf16_autocast_and_other_dtypes_keep_the_torch_ops():
    inputs = _inputs(4, 2, 8)
    assert native_recurrence.runs(*inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not native_recurrence.runs(*inputs)
    assert not native_recurrence.runs(*(t.double() for t in inputs))
    big = _inputs(1, 1, native.MAX_HIDDEN + 8)
    assert not native_recurrence.runs(*big)


def test_the_training_record_says_which_recurrence_runs(monkeypatch):
    cpu = torch.device("cpu")
    gru_model, lstm_model = (
        NextPixelModel(ModelConfig(hidden_size=8)),
        NextPixelModel(ModelConfig(cell="lstm")),
    )
    assert steps.describe_recurrence(gru_model, cpu, "fp32").startswith("fused C")
    assert (
        steps.describe_recurrence(gru_model, cpu, "bf16")
        == "torch ops (rnn_mnist/kernels/gru.py: under bf16 autocast)"
    )
    assert steps.describe_recurrence(gru_model.double(), cpu, "fp32").endswith("float64, not fp32)")
    gru_model.float()
    assert steps.describe_recurrence(lstm_model, cpu, "fp32") == "torch nn.LSTM"
    gru_model.fast_gru = False
    assert steps.describe_recurrence(gru_model, cpu, "fp32") == "torch nn.GRU"
    gru_model.fast_gru = True
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setenv("RNN_MNIST_NATIVE", "off")
    line = steps.describe_recurrence(gru_model, cpu, "fp32")
    assert line == "torch ops (rnn_mnist/kernels/gru.py: RNN_MNIST_NATIVE=off)"  # said once


def test_a_failed_allocation_in_the_c_loops_is_a_memory_error(monkeypatch):
    class Failing:  # both C functions return -1 when malloc of the packed weights fails
        def gru_forward(self, *args):
            return -1

        def gru_backward(self, *args):
            return -1

    inputs = [t.detach() for t in _inputs(steps=3, batch=2, hidden=4)]
    hs, rz, gh_n, n = native_recurrence.forward(*inputs, keep=True)
    monkeypatch.setattr(native_recurrence, "_library", Failing)
    with pytest.raises(MemoryError, match="packed weights"):
        native_recurrence.forward(*inputs, keep=True)
    with pytest.raises(MemoryError, match="packed weights"):
        native_recurrence.backward(torch.ones_like(hs), hs, rz, gh_n, n, inputs[2])
