"""The GRU kernels (rnn_mnist/kernels/gru.py, fast_step.py) against nn.GRU, and gru.py's backward
against finite differences and autograd (the derivation is in rnn_mnist/kernels/gru_backward.md)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnn_mnist.kernels.gru import GRULayer, gru_layers, gru_recurrence
from rnn_mnist.models import ModelConfig, NextPixelModel, gru_layers_of

GRU_CONFIGS = {
    "gru-1": ModelConfig(hidden_size=16),
    "gru-1-context-3x7": ModelConfig(hidden_size=16, context=True, context_rows=3, context_width=7),
    "gru-1-context-position-label": ModelConfig(hidden_size=16, context=True, position=True, num_classes=10),
    "gru-2-dropout-context-position": ModelConfig(
        hidden_size=16, num_layers=2, dropout=0.2, context=True, position=True
    ),
}


def _model(name: str) -> tuple[NextPixelModel, torch.Tensor | None]:
    """The model of GRU_CONFIGS[name] (seeded, in eval mode) and labels for 3 digits if it needs them."""
    config = GRU_CONFIGS[name]
    torch.manual_seed(0)
    return NextPixelModel(config).eval(), torch.tensor([3, 0, 9]) if config.num_classes else None


@pytest.mark.parametrize("name", GRU_CONFIGS)
def test_the_fast_cpu_gru_equals_nn_gru_in_logits_and_gradients(name):
    """The fast step (table lookups for position and label, hand-written backward) against nn.GRU
    reading the one-hot features, on the same weights."""
    model, labels = _model(name)
    pixels = torch.bernoulli(torch.full((3, 784), 0.3), generator=torch.Generator().manual_seed(4))
    results = []
    for fast in (False, True):
        model.fast_gru = fast
        model.zero_grad()
        logits = model.teacher_forced_logits(pixels, labels)
        (logits * torch.linspace(-1, 1, 784)).sum().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (reference, reference_grads), (fast_logits, fast_grads) = results
    torch.testing.assert_close(fast_logits, reference, rtol=1e-5, atol=1e-5)
    for name, grad in reference_grads.items():  # fp32 sums over 784 steps in another order
        scale = grad.abs().max().item()
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-4 * scale, msg=name)


@pytest.mark.parametrize("name", list(GRU_CONFIGS)[:2])
def test_bf16_autocast_gives_finite_logits_close_to_fp32_on_both_paths(name):
    model, labels = _model(name)
    pixels = torch.bernoulli(torch.full((3, 784), 0.3), generator=torch.Generator().manual_seed(5))
    for fast in (True, False):
        model.fast_gru = fast
        fp32 = model.teacher_forced_logits(pixels, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model.teacher_forced_logits(pixels, labels)
        assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
        assert 0 < (bf16 - fp32).abs().max() < 0.05  # bf16 really ran, and stayed close
        bf16.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_hand_written_gru_backward_passes_gradcheck():
    """gru.py's backward against finite differences, in float64 (the matmul follows the
    input's dtype unless bf16 autocast is on)."""
    generator = torch.Generator().manual_seed(8)
    inputs = [
        torch.randn(shape, dtype=torch.float64, generator=generator, requires_grad=True)
        for shape in ((5, 2, 9), (2, 3), (9, 3), (3,))
    ]  # gates_x (T, B, 3H), h0 (B, H), W_hh (3H, H), b_hn (H,)

    def states(gates_x, h0, w_hh, b_hn):
        outputs, final = gru_recurrence(gates_x, h0, w_hh, b_hn)
        return outputs, final

    assert torch.autograd.gradcheck(states, inputs)


def test_the_kernel_on_plain_tensors_equals_nn_gru_in_outputs_and_every_gradient():
    """gru_layers on an nn.GRU's weights as plain tensors: the outputs, the final state and the
    gradients of the inputs, the initial state and every weight must be nn.GRU's own."""
    torch.manual_seed(3)
    rnn = nn.GRU(5, 8, num_layers=2)
    x = torch.randn(7, 4, 5, requires_grad=True)  # (T, B, F)
    h0 = torch.randn(2, 4, 8, requires_grad=True)
    layers = gru_layers_of(rnn)
    gates = nn.functional.linear(x, layers[0].w_ih, layers[0].input_bias)  # layer 0's input gates
    outputs, final = gru_layers(layers, gates, h0, dropout=0.0, training=False)
    expected, expected_final = rnn(x, h0)
    torch.testing.assert_close(outputs, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(final, expected_final, rtol=1e-5, atol=1e-6)
    weight = torch.randn(7, 4, 8)
    ours = torch.autograd.grad((outputs * weight).sum() + final.sum(), [x, h0, *rnn.parameters()])
    theirs = torch.autograd.grad((expected * weight).sum() + expected_final.sum(), [x, h0, *rnn.parameters()])
    for name, a, b in zip(["x", "h0", *(n for n, _ in rnn.named_parameters())], ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_a_layer_holds_plain_tensors_of_the_module_it_came_from():
    rnn = nn.GRU(3, 4)
    (layer,) = gru_layers_of(rnn)
    assert isinstance(layer, GRULayer)
    assert layer.w_hh is rnn.weight_hh_l0 and layer.b_hn.data_ptr() == rnn.bias_hh_l0[8:].data_ptr()
    expected = rnn.bias_ih_l0 + torch.cat([rnn.bias_hh_l0[:8], torch.zeros(4)])  # b_ih + [b_hr, b_hz, 0]
    torch.testing.assert_close(layer.input_bias, expected)
