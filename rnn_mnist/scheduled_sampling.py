"""Scheduled sampling: train on inputs where some true pixels are replaced by the model's own draws.

Trained only with teacher forcing, a model never sees its own mistakes, yet a rollout feeds it
nothing else for ~300 steps. Scheduled sampling (Bengio et al. 2015) feeds, for each pixel, the true
pixel with probability eps_i and the model's own sampled prediction otherwise, eps_i decaying with
the mini-batch index i:

    linear            eps_i = max(eps_min, k - c * i)       defaults k = 1, c = 1e-4, eps_min = 0.5
    exponential       eps_i = k ** i   (k < 1)              default  k = 0.9998  (0.5 after ~3,500 batches)
    inverse-sigmoid   eps_i = k / (k + exp(i / k))  (k >= 1) default  k = 1000    (0.5 after ~6,900 batches)

Two ways to get the model's draws:
- ``parallel`` (default; Duckworth et al. 2019): a teacher-forced pass without gradients predicts
  every pixel at once; draws are mixed with the truth by the coins, and the trained pass reads the
  mixture. More passes re-predict from the previous mixture. Keeps the fused sequence kernels.
- ``sequential``: the exact method, one pixel at a time, each draw made from the prediction of the
  same pass.
- ``auto`` (default): sequential on the CPU, parallel elsewhere. On 2 CPU cores the pixel loop
  measured 1.5x faster than the parallel approximation (248 against 163 sequences/s at GRU-128,
  batch 128; bench/scheduled_sampling_speed.py): a CPU sequence pass is bound by writing its
  (B, T, H) outputs, not by the loop. On a GPU the fused sequence kernels should win; unmeasured here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rnn_mnist.data import NUM_PIXELS
from rnn_mnist.models import NextPixelModel

SCHEDULES = ("none", "linear", "exponential", "inverse-sigmoid")
MODES = ("auto", "parallel", "sequential")
DEFAULT_K = {"none": 1.0, "linear": 1.0, "exponential": 0.9998, "inverse-sigmoid": 1000.0}


@dataclass
class Schedule:
    kind: str = "none"
    k: float | None = None  # None: DEFAULT_K[kind]
    c: float = 1e-4  # linear decay per batch
    eps_min: float = 0.5  # linear floor

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, not {self.kind!r}")
        if self.k is None:
            self.k = DEFAULT_K[self.kind]
        if self.kind == "linear" and not 0 < self.k <= 1:  # eps_0 = k is a probability
            raise ValueError("the linear schedule needs 0 < k <= 1 (k is eps at the first batch)")
        if self.kind == "exponential" and not 0 < self.k < 1:
            raise ValueError("the exponential schedule needs 0 < k < 1")
        if self.kind == "inverse-sigmoid" and self.k < 1:
            raise ValueError("the inverse-sigmoid schedule needs k >= 1")

    def teacher_forcing_prob(self, batch_index: int) -> float:
        """eps_i: the probability of feeding the true pixel at mini-batch ``batch_index``."""
        i, k = batch_index, self.k
        if self.kind == "linear":
            return max(self.eps_min, k - self.c * i)
        if self.kind == "exponential":
            return k**i
        if self.kind == "inverse-sigmoid":
            return k / (k + math.exp(min(i / k, 700.0)))  # exp overflows past ~709
        return 1.0


def resolve_mode(mode: str, device: torch.device) -> str:
    """``auto``: the mode measured faster on this kind of device."""
    if mode == "auto":
        return "sequential" if device.type == "cpu" else "parallel"
    return mode


def coin_flips(pixels: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """True where the true pixel is fed: one coin with probability eps per pixel."""
    return torch.rand(pixels.shape, generator=generator).to(pixels.device) < eps


@torch.no_grad()
def parallel_mixture(
    model: NextPixelModel,
    pixels: torch.Tensor,
    eps: float,
    generator: torch.Generator,
    labels: torch.Tensor | None = None,
    passes: int = 1,
) -> torch.Tensor:
    """The pixels to feed (B, 784): truth where the coins say so, the model's draws elsewhere."""
    if eps >= 1.0:
        return pixels
    keep = coin_flips(pixels, eps, generator)
    mixed = pixels
    for _ in range(passes):
        probs = torch.sigmoid(model.teacher_forced_logits(mixed, labels))
        draws = torch.bernoulli(probs.cpu(), generator=generator).to(pixels.device)
        mixed = torch.where(keep, pixels, draws)
    return mixed


def sequential_logits(
    model: NextPixelModel,
    pixels: torch.Tensor,
    eps: float,
    generator: torch.Generator,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, 784), with gradients, of a pass that feeds its own draws as it goes, and the
    pixels it fed (B, 784)."""
    keep = coin_flips(pixels, eps, generator)
    canvas = pixels.clone()  # overwritten pixel by pixel with what is fed
    state, logits = None, []
    for t in range(NUM_PIXELS):
        logit, state = model.step(canvas, t, state, labels)
        logits.append(logit)
        if eps < 1.0:
            draw = torch.bernoulli(torch.sigmoid(logit.detach()).cpu(), generator=generator).to(pixels.device)
            canvas[:, t] = torch.where(keep[:, t], pixels[:, t], draw)
    return torch.stack(logits, dim=1), canvas
