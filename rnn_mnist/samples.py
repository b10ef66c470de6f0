"""Pictures while training: after every epoch, the same test digits drawn by the model so far.

    path = write_epoch_samples(model, data.test, data.test_labels, paths.samples, epoch)
    # -> <exp>/samples/epoch-003.png, and the same picture as <exp>/samples/latest.png

Top row: one fixed test digit per class (the first of each class), its last 284 pixels completed
greedily by the one rollout routine (rollout.complete), coloured as in evaluate.py's grids (white
given, orange generated). Bottom row, for a label-conditioned model: one digit per class drawn from
a blank canvas, told its class, by Bernoulli draws from a generator seeded the same every epoch, so
that two epochs' pictures differ only by the model. Neither row touches the training's random
generators: a resumed run stays the same as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from rnn_mnist import visualise
from rnn_mnist.checkpoint import atomic_write
from rnn_mnist.config import EvalOptions
from rnn_mnist.data import NUM_PIXELS
from rnn_mnist.models import NextPixelModel
from rnn_mnist.rollout import complete

MASK_PIXELS = EvalOptions.mask_pixels  # what evaluate.py hides by default
DRAW_SEED = 0


def one_per_class(labels: torch.Tensor) -> torch.Tensor:
    """The index of the first digit of each class present in ``labels`` (N,), by class."""
    return torch.stack([torch.nonzero(labels == c)[0, 0] for c in labels.unique(sorted=True)])


@contextmanager
def one_thread() -> Iterator[None]:
    """Ten digits a step are too little work to share: on two busy cores the threads' hand-offs
    made a GRU-128's pictures several times slower than one thread does. The count is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@one_thread()
def epoch_samples(
    model: NextPixelModel, test_pixels: torch.Tensor, test_labels: torch.Tensor | None
) -> np.ndarray:
    """The picture (H, W, 3) uint8: completions of one test digit per class (labels unknown: the
    first ten digits), then (label-conditioned models) one digit per class drawn from a blank canvas."""
    chosen = torch.arange(min(10, len(test_pixels))) if test_labels is None else one_per_class(test_labels)
    conditioned = model.config.num_classes > 0
    labels = test_labels[chosen] if conditioned and test_labels is not None else None
    completed = complete(model, test_pixels[chosen], MASK_PIXELS, "greedy", labels=labels).completed
    rows = [visualise.completion_grid(completed.numpy(), MASK_PIXELS, columns=len(chosen))]
    if conditioned:
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(DRAW_SEED)
        classes = torch.arange(model.config.num_classes)
        blank = torch.zeros(len(classes), NUM_PIXELS, dtype=torch.uint8)
        drawn = complete(model, blank, NUM_PIXELS, "bernoulli", generator=generator, labels=classes).completed
        rows.append(visualise.completion_grid(drawn.numpy(), NUM_PIXELS, columns=len(classes)))
    return visualise.stack_rows(rows)


def write_epoch_samples(
    model: NextPixelModel,
    test_pixels: torch.Tensor,
    test_labels: torch.Tensor | None,
    folder: Path,
    epoch: int,
) -> Path:
    """Write ``folder``/epoch-NNN.png and latest.png (atomically); return the first."""
    png = visualise.png_bytes(epoch_samples(model, test_pixels, test_labels))
    path = Path(folder) / f"epoch-{epoch:03d}.png"
    atomic_write(path, lambda f: f.write(png))
    atomic_write(path.with_name("latest.png"), lambda f: f.write(png))
    return path
