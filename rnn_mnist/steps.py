"""Which step runs a next-pixel model: chosen here, once, for a model, a device and a gradient mode.

    backend = choose(model, device)            # NN, FAST or FUSED
    step = stepper(model, labels, batch, device)
    logit, state = step(canvas, t, state)      # a rollout's step, prepared once
    describe_step(model, device)               # the line evaluation records as ``rollout_step``
    describe_recurrence(model, device, "fp32")  # the line training records as ``training_recurrence``

Three backends run the same weights:
- NN: torch's own ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN`` over the model's features; every cell, any
  device, and the reference the other two are tested against.
- FAST: a GRU on the CPU, on rnn_mnist/kernels/gru.py (hand-written backward) and
  kernels/fast_step.py (table lookups for the one-hot inputs). ``model.fast_gru = False`` turns it off.
- FUSED: a one-layer GRU on the CPU (any head), with no gradient wanted (it has no backward)
  and no dropout to apply (it has none), on the C step of kernels/native.py where it can be built.
  ``model.fused_step = False`` or ``RNN_MNIST_NATIVE=0`` (false, off, no) turns it off; where it
  cannot run, one line on stderr says why, once (kernels/native.py).
Training (with a gradient) runs on NN or FAST. Under FAST, each GRU layer's recurrence runs on the
fused C loops of kernels/native_recurrence.py (the same library as FUSED) in fp32 where the library
is built (``RNN_MNIST_NATIVE`` as above), and on gru.py's torch ops under bf16 autocast or without
the library; ``native_recurrence.why_not`` decides, per layer call and for ``describe_recurrence``,
which says which for the training record.
The model hands its weights to FAST and FUSED as plain tensors (``model.step_weights()``); the
kernels never see the model. This is the only module that asks ``native.supports``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from rnn_mnist.errors import RnnMnistError
from rnn_mnist.kernels import native, native_recurrence
from rnn_mnist.kernels.fast_step import FastGRUStep
from rnn_mnist.kernels.gru import matmul_dtype
from rnn_mnist.kernels.weights import StepWeights

NN, FAST, FUSED = "nn", "fast", "fused"

# GRU/RNN carry a tensor (layers, B, H); LSTM carries a pair (h, c) of them.
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
# step(canvas, t, state) -> (logit (B,), state), for a fixed batch and labels (see ``stepper``)
Stepper = Callable[[torch.Tensor, int, "State | None"], tuple[torch.Tensor, State]]


class SteppedModel(Protocol):
    """What the choice reads of a model (NextPixelModel): its config, mode and runtime switches."""

    config: Any  # ModelConfig: cell, num_layers, hidden_size, dropout, num_context
    training: bool
    fast_gru: bool  # False: GRUs run on nn.GRU on the CPU too
    fused_step: bool  # False: passes without a gradient stay on torch ops

    def step_weights(self) -> StepWeights: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def step(
        self, canvas: torch.Tensor, t: int, state: State | None, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]: ...


def check_native_setting() -> None:
    """Refuse a $RNN_MNIST_NATIVE that is neither on nor off, in one line, before any work: the
    kernel is loaded lazily (in training, at the first validation pass), too late to refuse then."""
    try:
        native.native_requested()
    except ValueError as error:
        raise RnnMnistError(str(error)) from None


def uses_fast_gru(model: SteppedModel, device: torch.device) -> bool:
    """A GRU on the CPU runs on rnn_mnist/kernels/gru.py; everything else on ``nn.RNNBase``."""
    return model.fast_gru and model.config.cell == "gru" and device.type == "cpu"


def uses_fused_step(model: SteppedModel, device: torch.device) -> bool:
    """Whether the fused C step runs ``model`` now: a one-layer GRU on the CPU, with no gradient
    wanted (it has no backward pass) and no dropout to apply (it has none)."""
    config = model.config
    return (
        not torch.is_grad_enabled()
        and not (model.training and config.dropout > 0)
        and uses_fast_gru(model, device)
        and model.fused_step
        and native.supports(config.num_layers, config.hidden_size, 1 + config.num_context)
    )


def choose(model: SteppedModel, device: torch.device) -> str:
    """The backend (NN, FAST or FUSED) that runs ``model`` on ``device`` in the current gradient mode."""
    if uses_fused_step(model, device):
        return FUSED
    return FAST if uses_fast_gru(model, device) else NN


def fused_step(model: SteppedModel, labels: torch.Tensor | None) -> native.FusedGRUStep:
    """The fused C step for ``model`` and ``labels``; its GEMM in bf16 under bf16 autocast."""
    weights = model.step_weights()
    return native.FusedGRUStep(weights, labels, matmul_dtype(weights.start_pixel))


@torch.no_grad()
def stepper(model: SteppedModel, labels: torch.Tensor | None, batch: int, device: torch.device) -> Stepper:
    """``model.step`` for a rollout of ``batch`` digits: what does not change from pixel to pixel
    is prepared once. The fused C step where it runs; else, for a GRU on the CPU, the fast step's
    folded tables (kernels/fast_step.py); elsewhere ``model.step`` itself."""
    backend = choose(model, device)
    if backend == FUSED:
        return fused_step(model, labels)
    if backend == FAST:
        return FastGRUStep(model.step_weights(), labels, batch, device)
    return lambda canvas, t, state: model.step(canvas, t, state, labels)


def describe_step(model: SteppedModel, device: torch.device) -> str:
    """Which step a rollout of ``model`` on ``device`` runs, in a line for metrics and logs."""
    with torch.no_grad():
        if uses_fused_step(model, device):
            return native.kernel_status()
    if device.type == "cpu" and native.load_kernel() is None:
        return native.kernel_status()  # says why it could not be built
    return "torch ops (the fused step is for a one-layer GRU on the CPU)"


def describe_recurrence(model: SteppedModel, device: torch.device, precision: str) -> str:
    """Which recurrence a training step of ``model`` runs under ``precision``, in a line for the
    compute record: the fused C loops change the numerics a little (summation order, a polynomial
    exp; -ffast-math), so a run says whether its GRU trained on them. native_recurrence.why_not
    decides, as it does for every layer call."""
    if not uses_fast_gru(model, device):
        return f"torch nn.{model.config.cell.upper()}"
    dtype = next(model.parameters()).dtype
    why = native_recurrence.why_not(model.config.hidden_size, dtype, device, autocast=precision != "fp32")
    if why is not None:
        return f"torch ops (rnn_mnist/kernels/gru.py: {why})"
    return "fused C (gru_step.c gru_forward/gru_backward, fp32, -ffast-math, polynomial exp)"
