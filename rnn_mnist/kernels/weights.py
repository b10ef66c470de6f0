"""A next-pixel GRU's weights as plain tensors: what the model hands to the fast and fused steps.

    weights = model.step_weights()                 # NextPixelModel builds it from its parameters
    gates = weights.static_gates(0, 784)           # (784, 3H): what the input gates hold whatever the pixels
    pixels = weights.pixel_inputs(canvas, 0, 784)  # (B, 784, 1 + C): the pixels each pixel reads

Layer 0 of the model reads, at pixel t, the pixel inputs (the previous pixel and C context pixels
above, each 0 where off the image), a one-hot row and column (``--position``) and a one-hot label
(``--condition label``). The one-hot inputs pick columns of W_ih, so the steps gather those columns
instead of multiplying by the one-hot vectors: the columns are kept apart here. The tensors are
views of the model's parameters: with a gradient wanted, gradients flow back into them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rnn_mnist.data import IMAGE_SIDE
from rnn_mnist.kernels.gru import GRULayer


def gather_pixels(
    pixel_index: torch.Tensor, pixel_exists: torch.Tensor, canvas: torch.Tensor, start: int, end: int
) -> torch.Tensor:
    """The pixel inputs (B, end - start, P) of pixels start..end-1: ``canvas`` (B, >= end - 1) at
    ``pixel_index`` (784, P), times ``pixel_exists`` (784, P) (0 where a pixel is off the image)."""
    index = pixel_index[start:end]  # (T, P)
    # index_select, not canvas[:, index]: advanced indexing measured 3.5x slower on the CPU.
    pixels = canvas.index_select(1, index.reshape(-1)).view(len(canvas), *index.shape)
    return pixels * pixel_exists[start:end]


def apply_head(head: tuple[tuple[torch.Tensor, torch.Tensor], ...], x: torch.Tensor) -> torch.Tensor:
    """The output head on states ``x`` (..., H): its linear layers ``(weight, bias)`` with a ReLU
    between them, as the model's ``nn.Linear`` / ``nn.Sequential`` head computes it."""
    for index, (weight, bias) in enumerate(head):
        if index > 0:
            x = nn.functional.relu(x)
        x = nn.functional.linear(x, weight, bias)
    return x


@dataclass(frozen=True)
class StepWeights:
    """A GRU next-pixel model's weights, split as the steps read them (H hidden units, P pixel inputs)."""

    pixel_index: torch.Tensor  # (784, P) int64: where pixel t's inputs are, as pixel numbers
    pixel_exists: torch.Tensor  # (784, P): 0 where such a pixel is off the image
    input_columns: torch.Tensor  # (3H, P): W_ih's columns of the pixel inputs, the previous pixel first
    position_columns: torch.Tensor | None  # (3H, 2 * 28): W_ih's one-hot row then column columns
    label_columns: torch.Tensor | None  # (3H, classes): W_ih's one-hot label columns
    start_pixel: torch.Tensor  # (1,): the learned input before pixel 0
    layers: tuple[GRULayer, ...]  # layer 0's w_ih is unused: its columns are the three above
    head: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # (weight, bias) of each linear layer

    @property
    def hidden_size(self) -> int:
        return self.layers[0].w_hh.shape[1]

    @property
    def num_pixel_inputs(self) -> int:
        return self.pixel_index.shape[1]

    @property
    def num_classes(self) -> int:
        return 0 if self.label_columns is None else self.label_columns.shape[1]

    def pixel_inputs(self, canvas: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """The pixel inputs (B, end - start, P) of pixels start..end-1 (``gather_pixels``)."""
        return gather_pixels(self.pixel_index, self.pixel_exists, canvas, start, end)

    def label_one_hot(self, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """The labels (B,) one-hot (B, classes) on ``device``; an error when they are missing."""
        if labels is None:
            raise ValueError("this model is conditioned on the digit's label: pass labels")
        return nn.functional.one_hot(labels.to(device).long(), self.num_classes)

    def static_gates(self, start: int, end: int) -> torch.Tensor:
        """What layer 0's input gates (T, 3H) hold whatever the pixels: b_ih, the r and z parts of
        b_hh, the row and column columns of W_ih (``--position``), and the start value at pixel 0."""
        bias = self.layers[0].input_bias.expand(end - start, -1)
        if self.position_columns is not None:
            t = torch.arange(start, end, device=bias.device)
            rows, cols = t // IMAGE_SIDE, t % IMAGE_SIDE
            position = self.position_columns
            bias = bias + position[:, rows].t() + position[:, IMAGE_SIDE + cols].t()
        if start == 0:  # pixel 0 reads the learned start value
            bias = torch.cat([bias[:1] + self.start_pixel * self.input_columns[:, 0], bias[1:]])
        return bias
