"""The training recurrence of a GRU layer on gru_step.c's fused C loops (gru_forward, gru_backward).

    if runs(gates_x, h0, w_hh, b_hn):                        # why_not(...) is None: it decides
        hs, rz, gh_n, n = forward(gates_x, h0, w_hh, b_hn, keep=True)
        d_gates_x, d_gh, dh0 = backward(grad_hs, hs, rz, gh_n, n, w_hh)

gru.py's _GRURecurrence calls these where ``runs`` says so, and its torch ops elsewhere; the
buffers are the torch path's own (same shapes and layout), and the weight gradient stays one torch
GEMM over ``d_gh`` there. Why C: on a small CPU each of the torch path's ~20 elementwise ops per
step costs tens of microseconds, so T = 784 steps forward and back spend over a second in op
overhead. The C loops run every step of a block of rows in one call, the recurrent products
included (gru_step.c says how). Its numerics differ from the torch ops' only in summation order
and in the polynomial exp of the sigmoids (fp32 throughout); tests/test_gru_train_kernel.py checks
outputs and gradients against the torch path and ``nn.GRU``.
"""

from __future__ import annotations

import ctypes

import torch

from rnn_mnist.kernels import native
from rnn_mnist.kernels.native import pointer


def why_not(hidden: int, dtype: torch.dtype, device: torch.device, autocast: bool) -> str | None:
    """Why the C recurrence does not run a GRU layer of ``hidden`` units whose tensors are ``dtype``
    on ``device``, with CPU ``autocast`` on or off; None when it runs. The one place that decides:
    it runs on the CPU, in fp32 without autocast (bf16 autocast keeps the torch ops), at most
    native.MAX_HIDDEN units, with the library built ($RNN_MNIST_NATIVE not off)."""
    if device.type != "cpu":
        return f"on {device.type}, not the CPU"
    if dtype != torch.float32:
        return f"{str(dtype).removeprefix('torch.')}, not fp32"
    if autocast:
        return "under bf16 autocast"
    if hidden > native.MAX_HIDDEN:
        return f"over {native.MAX_HIDDEN} units"
    return native.unavailable()


def runs(gates_x: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor, b_hn: torch.Tensor) -> bool:
    """Whether the C recurrence runs this layer now (``why_not`` says no reason)."""
    tensors = (gates_x, h0, w_hh, b_hn)
    # The first tensor off the CPU or not fp32, if any, is the one that speaks for them all.
    device = next((t.device for t in tensors if t.device.type != "cpu"), gates_x.device)
    dtype = next((t.dtype for t in tensors if t.dtype != torch.float32), torch.float32)
    return why_not(h0.shape[-1], dtype, device, torch.is_autocast_enabled("cpu")) is None


def _library() -> ctypes.CDLL:
    library = native.load_kernel()
    if library is None:
        raise RuntimeError(f"the C recurrence is not available: {native.kernel_status()}")
    return library


def _check_allocated(failed: int) -> None:
    """gru_forward and gru_backward return non-zero when their one allocation, the packed weights,
    failed."""
    if failed:
        raise MemoryError("C recurrence: no memory for the packed weights")


def _padded(hidden: int) -> int:
    """Each gate's columns in the C products: H rounded up to whole 8-float vectors."""
    return -(-hidden // 8) * 8


def forward(
    gates_x: torch.Tensor, h0: torch.Tensor, w_hh: torch.Tensor, b_hn: torch.Tensor, keep: bool
) -> tuple[torch.Tensor, ...]:
    """The states hs (T + 1, B, H), h0 first; with ``keep`` also rz (T, B, 2H), gh_n and n (T, B, H)."""
    steps, batch, gates = gates_x.shape
    hidden = h0.shape[-1]
    if (gates, tuple(h0.shape), tuple(w_hh.shape), tuple(b_hn.shape)) != (
        3 * hidden,
        (batch, hidden),
        (3 * hidden, hidden),
        (hidden,),
    ):
        shapes = ", ".join(str(tuple(t.shape)) for t in (gates_x, h0, w_hh, b_hn))
        raise ValueError(f"C recurrence: shapes {shapes} do not fit (T, B, 3H), (B, H), (3H, H), (H,)")
    padded = _padded(hidden)
    with torch.no_grad():
        gates_x, b_hn = gates_x.detach().contiguous(), b_hn.detach().contiguous()
        w_t = w_hh.detach().new_zeros(hidden, 3, padded)  # w_t[k, gate, j] = W_hh[gate H + j, k]
        w_t[:, :, :hidden] = w_hh.detach().reshape(3, hidden, hidden).permute(2, 0, 1)
        hs = gates_x.new_empty(steps + 1, batch, hidden)
        hs[0] = h0
        sizes = (2 * hidden, hidden, hidden) if keep else ()
        kept = [gates_x.new_empty(steps, batch, size) for size in sizes]
        failed = _library().gru_forward(
            torch.get_num_threads(), steps, batch, hidden, padded,
            pointer(gates_x), pointer(w_t), pointer(b_hn), pointer(hs),
            *(pointer(t) for t in kept or [None] * 3),
        )  # fmt: skip
    _check_allocated(failed)
    return (hs, *kept)


def backward(
    grad_hs: torch.Tensor,
    hs: torch.Tensor,
    rz: torch.Tensor,
    gh_n: torch.Tensor,
    n: torch.Tensor,
    w_hh: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """d_gates_x (T, B, 3H), d_gh (T, B, 3H) = [d_r, d_z, d_hn] and dh0 (B, H), from the gradient
    of every state ``grad_hs`` (T + 1, B, H) and what ``forward`` kept."""
    steps, batch, hidden = n.shape
    padded = _padded(hidden)
    with torch.no_grad():
        grad_hs = grad_hs.float().contiguous()
        w_pad = w_hh.new_zeros(3 * hidden, padded)
        w_pad[:, :hidden] = w_hh
        d_gates_x = hs.new_empty(steps, batch, 3 * hidden)
        d_gh = torch.empty_like(d_gates_x)
        dh0 = hs.new_empty(batch, hidden)
        failed = _library().gru_backward(
            torch.get_num_threads(), steps, batch, hidden, padded,
            pointer(grad_hs), pointer(hs), pointer(rz), pointer(gh_n), pointer(n), pointer(w_pad),
            pointer(d_gates_x), pointer(d_gh), pointer(dh0),
        )  # fmt: skip
    _check_allocated(failed)
    return d_gates_x, d_gh, dh0
