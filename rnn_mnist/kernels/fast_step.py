"""The fast torch step: a GRU next-pixel model on rnn_mnist/kernels/gru.py, from its StepWeights.

    gates = input_gates(weights, canvas, 0, 784, labels)     # (T, B, 3H): layer 0's input gates
    outputs, state = sequence(weights, canvas, 0, 784, labels, None, dropout=0.0, training=False)
    step = FastGRUStep(weights, labels, batch, device)        # a rollout's step, tables built once
    logit, state = step(canvas, t, state)

The one-hot row, column and label inputs are not multiplied: their columns of W_ih are gathered
(a table lookup), and the learned start value enters as a bias at pixel 0, so no gradient flows
into (T, B, F) inputs. Used on the CPU, where ``nn.GRU``'s per-step bookkeeping costs more than
its arithmetic; the torch ops run with or without a gradient.
"""

from __future__ import annotations

import torch

from rnn_mnist.data import NUM_PIXELS
from rnn_mnist.kernels.gru import gru_cell, gru_layers, matmul_dtype
from rnn_mnist.kernels.weights import StepWeights, apply_head


def input_gates(
    weights: StepWeights, canvas: torch.Tensor, start: int, end: int, labels: torch.Tensor | None
) -> torch.Tensor:
    """Layer 0's input projection (T, B, 3H) plus biases for pixels start..end-1 of ``canvas``."""
    x = weights.pixel_inputs(canvas, start, end).transpose(0, 1)  # (T, B, P)
    columns = weights.input_columns
    bias = weights.static_gates(start, end)
    if weights.label_columns is not None:
        one_hot = weights.label_one_hot(labels, canvas.device)
        x = torch.cat([x, one_hot.to(x.dtype).expand(end - start, -1, -1)], dim=2)
        columns = torch.cat([columns, weights.label_columns], dim=1)
    # (T, B, K) @ (K, 3H) + (T, 1, 3H): one pass over the output
    return torch.baddbmm(bias.unsqueeze(1), x, columns.t().expand(end - start, -1, -1)).float()


def sequence(
    weights: StepWeights,
    canvas: torch.Tensor,
    start: int,
    end: int,
    labels: torch.Tensor | None,
    state: torch.Tensor | None,
    dropout: float,
    training: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (T, B, H) of the top layer for pixels start..end-1 and the state (layers, B, H)
    after them, from ``state`` after pixel start-1 (None at pixel 0); ``dropout`` between layers."""
    x = input_gates(weights, canvas, start, end, labels)  # (T, B, 3H)
    return gru_layers(weights.layers, x, state, dropout, training)


class FastGRUStep:
    """A rollout's step on torch ops, for a fixed batch and labels: the biases, the position table
    and the label columns are folded once into one (784, 3H) table and a (B, K) input buffer, so a
    step is one gather, one addmm, the GRU cell of each layer and the head. Build it without a
    gradient (its tables are constants)."""

    def __init__(
        self, weights: StepWeights, labels: torch.Tensor | None, batch: int, device: torch.device
    ) -> None:
        num_pixel_inputs = weights.num_pixel_inputs
        self.weights = weights
        self.static = weights.static_gates(0, NUM_PIXELS)  # (784, 3H)
        dtype = matmul_dtype(self.static)  # of the recurrent GEMM: bf16 under --precision bf16
        columns = [weights.input_columns]
        self.inputs = torch.zeros(batch, num_pixel_inputs + weights.num_classes, device=device)  # (B, K)
        if weights.label_columns is not None:  # the label's one-hot: filled once, multiplied every step
            columns.append(weights.label_columns)
            self.inputs[:, num_pixel_inputs:] = weights.label_one_hot(labels, device)
        self.columns_t = torch.cat(columns, dim=1).t().contiguous()  # (K, 3H)
        self.layers = [  # (W_ih.T, input bias) of the layers above the first, W_hh.T and b_hn of each
            (
                layer.w_ih.t() if index else None,
                layer.input_bias if index else None,
                layer.w_hh.t().to(dtype),
                layer.b_hn,
            )
            for index, layer in enumerate(weights.layers)
        ]
        self.dtype = dtype
        self.device = device

    def __call__(
        self, canvas: torch.Tensor, t: int, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The logit (B,) of pixel t of ``canvas`` (B, 784) and the state (layers, B, H) after it."""
        weights, num_pixel_inputs = self.weights, self.weights.num_pixel_inputs
        with torch.autocast(self.device.type, enabled=False):
            torch.mul(
                canvas.index_select(1, weights.pixel_index[t]),
                weights.pixel_exists[t],
                out=self.inputs[:, :num_pixel_inputs],
            )
            x = torch.addmm(self.static[t], self.inputs, self.columns_t)  # (B, 3H): layer 0's input gates
            if state is None:
                state = canvas.new_zeros(len(self.layers), len(canvas), weights.hidden_size)
            finals = []
            for index, (w_ih_t, b_ih, w_hh_t, b_hn) in enumerate(self.layers):
                if index > 0:
                    x = torch.addmm(b_ih, finals[-1], w_ih_t)
                h = state[index]
                finals.append(gru_cell(x, h, h.to(self.dtype), w_hh_t, b_hn))
            logit = apply_head(weights.head, finals[-1]).squeeze(1)
        return logit, finals[0].unsqueeze(0) if len(finals) == 1 else torch.stack(finals)
