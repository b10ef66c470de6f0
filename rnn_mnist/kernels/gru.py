"""A GRU recurrence written for the CPU, with a hand-written backward pass.

    gates_x = x @ W_ih.T + b_ih + [b_hr, b_hz, 0]   # (T, B, 3H): every input projection at once
    outputs, h_last = gru_recurrence(gates_x, h0, W_hh, b_hn)   # (T, B, H): the state after each step

Why not ``nn.GRU``: on the CPU it records about ten autograd nodes per pixel and stacks 784 outputs,
so a training step spends more time in bookkeeping, copies and page faults than in arithmetic.
Here the forward pass writes each step's gates into preallocated buffers, the backward pass walks
the steps in reverse with a handful of in-place ops each, and the weight gradient is one GEMM over
all steps. Gate order and weights are ``nn.GRU``'s own (r, z, n), so the same parameters run on
either; tests check both against each other.

Where it can (fp32 on the CPU, the C library built: native_recurrence.runs decides), the recurrence
forward and backward runs on fused C loops instead (rnn_mnist/kernels/native_recurrence.py), which
keep and read the very buffers the torch ops below do; the torch ops run everything else (bf16,
float64, other devices, RNN_MNIST_NATIVE=0) and are what the C loops are tested against.

Numerics: the state, gates and gradients are fp32. The recurrent matmul runs in bf16 (fp32
accumulation inside the kernel) when bf16 autocast is on for the CPU, which is how
``--precision bf16`` reaches it; otherwise in fp32. tanh is computed as 2 sigmoid(2a) - 1: the
same function, and about 5x faster than torch's CPU tanh at these sizes. The backward pass is
derived step by step in gru_backward.md, beside this file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rnn_mnist.kernels import native_recurrence


@dataclass(frozen=True)
class GRULayer:
    """One GRU layer's weights in ``nn.GRU``'s layout (gates r, z, n), as the recurrence reads them."""

    w_ih: torch.Tensor  # (3H, F): the input projection (layers above the first; layer 0 gathers)
    input_bias: torch.Tensor  # (3H,): b_ih plus the r and z parts of b_hh
    w_hh: torch.Tensor  # (3H, H)
    b_hn: torch.Tensor  # (H,): the n part of b_hh, which the GRU scales by r


def matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """bf16 when autocast asks for it on x's device (as --precision bf16 does), else x's own dtype."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16:
        return torch.bfloat16
    return x.dtype


def _tanh_(x: torch.Tensor) -> torch.Tensor:
    """In-place tanh as 2 sigmoid(2x) - 1."""
    return x.mul_(2).sigmoid_().mul_(2).sub_(1)


def gru_cell(
    gates_x: torch.Tensor,
    h: torch.Tensor,
    h_matmul: torch.Tensor,
    w_hh_t: torch.Tensor,
    b_hn: torch.Tensor,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One GRU step: the new state (B, H) from the input gates (B, 3H) and the state ``h`` (B, H).

    ``h_matmul`` is ``h`` in the matmul dtype and ``w_hh_t`` is W_hh.T (H, 3H) in it. ``out``, if
    given, is where to write (rz, gh_n, n, h_new): the forward pass keeps them for the backward.
    """
    hidden = h.shape[1]
    rz, gh_n, n, h_new = out if out is not None else (None, None, None, None)
    gh = torch.mm(h_matmul, w_hh_t)  # (B, 3H)
    rz = torch.add(gates_x[:, : 2 * hidden], gh[:, : 2 * hidden], out=rz).sigmoid_()
    gh_n = torch.add(gh[:, 2 * hidden :], b_hn, out=gh_n)
    r, z = rz[:, :hidden], rz[:, hidden:]
    n = _tanh_(torch.addcmul(gates_x[:, 2 * hidden :], r, gh_n, out=n))
    return torch.lerp(n, h, z, out=h_new)  # z h + (1 - z) n


def _run(
    gates_x: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor, b_hn: torch.Tensor, keep: bool
) -> tuple[torch.Tensor, ...]:
    """Step the recurrence over all of ``gates_x``: the states hs (T + 1, B, H), h0 first; with
    ``keep``, also what the backward pass reads: the states as the matmul saw them, rz, gh_n, n."""
    steps, batch, _ = gates_x.shape
    hidden = h0.shape[1]
    dtype = matmul_dtype(gates_x)
    with torch.autocast(gates_x.device.type, enabled=False):
        hs = gates_x.new_empty(steps + 1, batch, hidden)
        hs[0] = h0
        w_hh_t = w_hh.t().to(dtype)
        if not keep:
            for t in range(steps):
                gru_cell(gates_x[t], hs[t], hs[t].to(dtype), w_hh_t, b_hn, out=(None, None, None, hs[t + 1]))
            return (hs,)
        # The states as the matmul reads them: bf16 copies under --precision bf16 (the weight
        # gradient's GEMM reuses them), the states themselves in fp32.
        hs_matmul = hs if dtype == hs.dtype else hs.new_empty(hs.shape, dtype=dtype)
        hs_matmul[0] = h0
        rz = gates_x.new_empty(steps, batch, 2 * hidden)
        gh_n = gates_x.new_empty(steps, batch, hidden)
        n = gates_x.new_empty(steps, batch, hidden)
        for t in range(steps):
            gru_cell(gates_x[t], hs[t], hs_matmul[t], w_hh_t, b_hn, out=(rz[t], gh_n[t], n[t], hs[t + 1]))
            if hs_matmul is not hs:
                hs_matmul[t + 1].copy_(hs[t + 1])
    return hs, hs_matmul, rz, gh_n, n


class _GRURecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates_x, h0, w_hh, b_hn):
        ctx.native = native_recurrence.runs(gates_x, h0, w_hh, b_hn)  # the one place that decides
        if ctx.native:
            hs, rz, gh_n, n = native_recurrence.forward(gates_x, h0, w_hh, b_hn, keep=True)
            kept = [hs, rz, gh_n, n]  # hs_matmul is hs itself in fp32
        else:
            hs, *kept = _run(gates_x, h0, w_hh, b_hn, keep=True)
        ctx.save_for_backward(hs, *kept, w_hh)
        return hs

    @staticmethod
    def backward(ctx, grad_hs):
        hs, hs_matmul, rz, gh_n, n, w_hh = ctx.saved_tensors
        hidden = n.shape[2]
        with torch.autocast(hs.device.type, enabled=False):
            if ctx.native:
                d_gates_x, d_gh, dh = native_recurrence.backward(grad_hs, hs, rz, gh_n, n, w_hh)
            else:
                d_gates_x, d_gh, dh = _backward_steps(grad_hs, hs, rz, gh_n, n, w_hh.to(hs_matmul.dtype))
            d_w_hh = d_gh.view(-1, 3 * hidden).t().mm(hs_matmul[:-1].reshape(-1, hidden)).float()
            d_b_hn = d_gh[..., 2 * hidden :].sum((0, 1), dtype=torch.float32)
        return d_gates_x, dh, d_w_hh, d_b_hn


def _backward_steps(
    grad_hs: torch.Tensor,
    hs: torch.Tensor,
    rz: torch.Tensor,
    gh_n: torch.Tensor,
    n: torch.Tensor,
    w: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward loop on torch ops (gru_backward.md): d_gates_x, d_gh (in ``w``'s dtype, the
    matmul dtype) and the gradient of h0, from the gradient of every state ``grad_hs``."""
    steps, batch, hidden = n.shape
    dtype = w.dtype
    grad_hs = grad_hs.contiguous()
    # Per step: d_gates_x, the gradient of the input gates (r and z pre-activations, and
    # the n gate's input part), and d_gh, that of gh = W_hh h + b_hh (the same for r and z,
    # r times it for n), in the matmul dtype for the two GEMMs that read it.
    d_gates_x = hs.new_empty(steps, batch, 3 * hidden)
    d_gh = hs.new_empty(steps, batch, 3 * hidden, dtype=dtype)
    one = hs.new_ones(())
    dh = grad_hs[steps].clone()  # dL/dh_t, accumulated backwards
    tmp, one_minus, d_hn = (hs.new_empty(batch, hidden) for _ in range(3))
    for t in range(steps - 1, -1, -1):
        r, z, n_t = rz[t, :, :hidden], rz[t, :, hidden:], n[t]
        d_r, d_z, d_a = (d_gates_x[t, :, i * hidden : (i + 1) * hidden] for i in range(3))
        # h = n + z (h_prev - n)
        torch.sub(one, z, out=one_minus)
        torch.sub(hs[t], n_t, out=tmp).mul_(dh)
        torch.mul(tmp, z, out=d_z).mul_(one_minus)  # through z = sigmoid(.)
        torch.addcmul(one, n_t, n_t, value=-1, out=tmp)  # 1 - n^2: through n = tanh(a)
        torch.mul(dh, one_minus, out=d_a).mul_(tmp)
        torch.mul(d_a, r, out=d_hn)  # a = x_n + r * gh_n
        torch.sub(one, r, out=tmp).mul_(gh_n[t])
        torch.mul(tmp, d_hn, out=d_r)  # d_a gh_n r (1 - r), as d_hn = d_a r
        d_gh[t, :, : 2 * hidden].copy_(d_gates_x[t, :, : 2 * hidden])
        d_gh[t, :, 2 * hidden :].copy_(d_hn)
        dh = dh.mul_(z).add_(grad_hs[t])
        dh.add_(torch.mm(d_gh[t], w))
    return d_gates_x, d_gh, dh


def gru_recurrence(
    gates_x: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor, b_hn: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (T, B, H) of a GRU layer over T steps from the state ``h0`` (B, H), and its final state.

    ``gates_x`` (T, B, 3H) holds the input projections with b_ih and the r, z parts of b_hh already
    added; ``b_hn`` (H,) is the n part of b_hh, which the GRU scales by r.
    """
    steps = gates_x.shape[0]
    if torch.is_grad_enabled() and any(x.requires_grad for x in (gates_x, h0, w_hh, b_hn)):
        hs = _GRURecurrence.apply(gates_x, h0, w_hh, b_hn)
        return hs[1:], hs[steps]
    if steps == 1:  # one step, as in a rollout: no copies at all
        dtype = matmul_dtype(gates_x)  # before autocast is switched off below
        with torch.autocast(gates_x.device.type, enabled=False):
            h = gru_cell(gates_x[0], h0, h0.to(dtype), w_hh.t().to(dtype), b_hn)
        return h.unsqueeze(0), h
    if native_recurrence.runs(gates_x, h0, w_hh, b_hn):
        (hs,) = native_recurrence.forward(gates_x, h0, w_hh, b_hn, keep=False)
    else:
        (hs,) = _run(gates_x, h0, w_hh, b_hn, keep=False)  # inference: no buffers kept
    return hs[1:], hs[steps]


def gru_layers(
    layers: Sequence[GRULayer], x: torch.Tensor, state: torch.Tensor | None, dropout: float, training: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a stack of GRU layers, given layer 0's input gates ``x`` (T, B, 3H) with its
    ``input_bias`` already added. Returns the top layer's outputs (T, B, H) and the final state
    (layers, B, H): what ``nn.GRU`` returns on the same weights, with its ``dropout`` between layers."""
    hidden = layers[0].w_hh.shape[1]
    if state is None:
        state = x.new_zeros(len(layers), x.shape[1], hidden)
    finals = []
    for index, layer in enumerate(layers):
        if index > 0:  # nn.GRU's dropout between layers, then this layer's input projection
            x = nn.functional.dropout(x, dropout, training)
            x = nn.functional.linear(x, layer.w_ih, layer.input_bias).float()
        x, final = gru_recurrence(x, state[index], layer.w_hh, layer.b_hn)
        finals.append(final)
    return x, finals[0].unsqueeze(0) if len(finals) == 1 else torch.stack(finals)
