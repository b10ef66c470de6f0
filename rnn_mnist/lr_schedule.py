"""The learning rate as a function of the mini-batch index: nothing to save, nothing to drift on resume.

    schedule = LrSchedule("cosine", lr=1e-2, epochs=5, batches_per_epoch=430, warmup_batches=200)
    lr = schedule(batch_index)

- ``step``: ``lr`` times ``gamma`` for every milestone epoch already completed (as MultiStepLR
  stepped once per epoch, which older experiments used).
- ``cosine``: from ``lr`` down to ``lr * min_factor`` along half a cosine over all the epochs.
Both ramp up linearly over the first ``warmup_batches`` batches. ``cosine`` depends on ``epochs``:
resuming with more epochs stretches the rest of the curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LR_SCHEDULES = ("step", "cosine")


@dataclass(frozen=True)
class LrSchedule:
    kind: str
    lr: float
    epochs: int
    batches_per_epoch: int
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_batches: int = 0
    min_factor: float = 0.01

    def __post_init__(self) -> None:
        if self.kind not in LR_SCHEDULES:
            raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, not {self.kind!r}")

    def __call__(self, batch_index: int) -> float:
        if self.kind == "step":
            completed_epochs = batch_index // self.batches_per_epoch
            factor = self.gamma ** sum(completed_epochs >= m for m in self.milestones)
        else:
            progress = min(batch_index / max(self.epochs * self.batches_per_epoch, 1), 1.0)
            factor = self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
        if batch_index < self.warmup_batches:
            factor *= (batch_index + 1) / self.warmup_batches
        return self.lr * factor
