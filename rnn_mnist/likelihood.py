"""Exact likelihoods under a next-pixel model, from one teacher-forced pass, and Bayes' rule over them.

    nll = teacher_forced_nll(model, pixels)                  # (N,) nats: -log p(image)
    log_probs = teacher_forced_log_probs(model, pixels)      # (N, 784): log p(x_t | x_<t)
    posterior = class_log_posterior(model, pixels)           # (N, 10): log p(class | image)

Every pixel is predicted from the true pixels before it, so the sum of the 784 terms is the
image's exact log-likelihood; for a label-conditioned model, one pass per class gives
log p(image | class), and Bayes' rule with a uniform prior reads the model as a classifier.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from rnn_mnist.data import NUM_PIXELS
from rnn_mnist.models import NextPixelModel

# Digits a teacher-forced pass takes at a time (evaluation NLLs, class likelihoods): on torch ops
# a pass holds (784, B, 3H) input gates, about 600 MB at 500 digits for GRU-128.
TEACHER_FORCED_BATCH = 500


def bits_per_dim(nats: float) -> float:
    """Nats per digit as bits per dimension (pixel), the benchmark literature's unit: / (784 ln 2)."""
    return nats / (NUM_PIXELS * math.log(2))


def standard_error(count: int, total: float, total_of_squares: float) -> float | None:
    """The standard error of a mean over ``count`` values from their sum and sum of squares: their
    standard deviation (N - 1 in the denominator) / sqrt(N); None for fewer than two values."""
    if count < 2:
        return None
    variance = max(total_of_squares - total * total / count, 0.0) / (count - 1)  # rounding: never < 0
    return math.sqrt(variance / count)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout) for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def teacher_forced_log_probs(
    model: NextPixelModel,
    pixels: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = TEACHER_FORCED_BATCH,
) -> torch.Tensor:
    """log p(x_t | x_<t) (N, 784) of every pixel of each image (N, 784), each given all the true
    pixels before it: one teacher-forced pass. ``labels`` (N,) are for label-conditioned models."""
    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for start in range(0, len(pixels), batch_size):
            x = pixels[start : start + batch_size].to(device).float()
            batch_labels = None if labels is None else labels[start : start + batch_size]
            logits = model.teacher_forced_logits(x, batch_labels)
            out.append(-F.binary_cross_entropy_with_logits(logits, x, reduction="none").cpu())
    return torch.cat(out)


def teacher_forced_nll(
    model: NextPixelModel,
    pixels: torch.Tensor,
    labels: torch.Tensor | None = None,
    counted: torch.Tensor | None = None,
    batch_size: int = TEACHER_FORCED_BATCH,
) -> torch.Tensor:
    """NLL (nats, (N,)) of the ``counted`` pixels (784,) bool (None: all) of each image (N, 784),
    each given all the true pixels before it. ``labels`` (N,) are for label-conditioned models."""
    log_probs = teacher_forced_log_probs(model, pixels, labels, batch_size)
    if counted is not None:
        log_probs = log_probs[:, counted.cpu()]
    return -log_probs.sum(dim=1)


def class_log_likelihoods(
    model: NextPixelModel,
    images: torch.Tensor,
    batch_size: int = TEACHER_FORCED_BATCH,
    per_pixel: bool = False,
) -> torch.Tensor:
    """log p(image | class) (B, classes) under a label-conditioned model, one teacher-forced pass
    per class; ``per_pixel``: the (B, classes, 784) terms log p(x_t | x_<t, class) whose sum that
    is (their cumulative sum over t is log p(x_<=t | class): the model's reading after t pixels).
    float64: summed over 784 pixels, fp32 would blur likelihoods a few hundredths of a nat apart."""
    num_classes = model.config.num_classes
    if num_classes == 0:
        raise ValueError("reading a class needs a label-conditioned model (--condition label)")
    terms = torch.stack(
        [
            teacher_forced_log_probs(model, images, torch.full((len(images),), c), batch_size)
            for c in range(num_classes)
        ],
        dim=1,
    ).double()  # (B, classes, 784)
    return terms if per_pixel else terms.sum(dim=2)


def class_log_posterior(
    model: NextPixelModel, images: torch.Tensor, batch_size: int = TEACHER_FORCED_BATCH
) -> torch.Tensor:
    """log p(class | image) (B, classes), float64: Bayes' rule over ``class_log_likelihoods`` with a
    uniform prior, the generative model read as a classifier."""
    log_likelihood = class_log_likelihoods(model, images, batch_size)
    return log_likelihood - log_likelihood.logsumexp(dim=1, keepdim=True)


def label_log_posterior(
    model: NextPixelModel, images: torch.Tensor, labels: torch.Tensor, batch_size: int = TEACHER_FORCED_BATCH
) -> torch.Tensor:
    """log p(label | image) (B,) under a label-conditioned model, for whole images (B, 784):
    ``class_log_posterior`` at each image's ``labels``."""
    posterior = class_log_posterior(model, images, batch_size)
    return posterior.gather(1, labels.long().view(-1, 1)).squeeze(1).float()
