"""The one rollout routine: complete digits pixel by pixel, carrying the recurrent state.

    result = complete(model, pixels, mask_pixels=284, sampling="greedy", samples=1)
    result.completed   # (N, K, 784) uint8: the visible prefix, then the generated pixels
    result.probs       # (N, K, mask_pixels): p(pixel = 1) the model gave at each generated step
                       # (at temperature 1: --temperature changes the draws, not this)

The visible prefix is fed once, batched, to prime the state; then every digit and sample steps
together, one pixel at a time, on a canvas that holds the prefix and what was drawn so far.
The hidden pixels of ``pixels`` are never read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rnn_mnist.compute import autocast
from rnn_mnist.data import NUM_PIXELS
from rnn_mnist.models import NextPixelModel

SAMPLINGS = ("greedy", "bernoulli", "mean")
# How --best-of K picks one of K samples: the model's likelihood of it, or (label-conditioned
# models) how surely the model reads the requested class back from it.
BEST_BY = ("likelihood", "label-posterior")

# choose(probs (B,), step index t) -> the value fed back as pixel t (B,), float.
Chooser = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass
class Completion:
    completed: torch.Tensor  # (N, K, 784) uint8 in {0, 1}
    probs: torch.Tensor  # (N, K, M) float: p(pixel = 1) at each generated step


def chooser(sampling: str, generator: torch.Generator | None = None) -> Chooser:
    """The feedback rule for ``sampling``: greedy (p > 0.5), bernoulli (draw), or mean (feed p)."""
    if sampling == "greedy":
        return lambda probs, t: (probs > 0.5).to(probs.dtype)
    if sampling == "bernoulli":
        return lambda probs, t: torch.bernoulli(probs, generator=generator)
    if sampling == "mean":
        return lambda probs, t: probs
    raise ValueError(f"sampling must be one of {SAMPLINGS}, not {sampling!r}")


@torch.no_grad()
def rollout(
    model: NextPixelModel,
    visible: torch.Tensor,
    num_steps: int,
    choose: Chooser,
    temperature: float = 1.0,
    labels: torch.Tensor | None = None,
    precision: str = "fp32",
    on_step: Callable[[], object] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``num_steps`` pixels after ``visible`` (B, V) floats. ``choose`` sees the
    probabilities with the logits divided by ``temperature``; ``labels`` (B,) are for
    label-conditioned models; ``precision`` bf16 runs the GEMMs in bf16 (rnn_mnist/compute.py);
    ``on_step`` is called after every pixel step (progress).

    Returns the fed-back values (B, num_steps) and the model's own probabilities (B, num_steps),
    at temperature 1 whatever ``temperature`` is, so that they score a completion by the model's
    likelihood (``most_likely``).
    """
    batch, num_visible = visible.shape
    canvas = visible.new_zeros(batch, num_visible + num_steps)  # what the model has seen or drawn
    canvas[:, :num_visible] = visible
    probs = visible.new_empty(batch, num_steps)
    with autocast(visible.device, precision):
        # One batched pass over the prefix; a blank canvas starts from no state.
        state = model.read(canvas, num_visible, labels) if num_visible else None
        step_model = model.stepper(labels, batch, visible.device)
        for step in range(num_steps):
            t = num_visible + step
            logit, state = step_model(canvas, t, state)
            probs[:, step] = torch.sigmoid(logit)
            tempered = probs[:, step] if temperature == 1 else torch.sigmoid(logit / temperature)
            canvas[:, t] = choose(tempered, t)
            if on_step is not None:
                on_step()
    return canvas[:, num_visible:], probs


def complete(
    model: NextPixelModel,
    pixels: torch.Tensor,
    mask_pixels: int,
    sampling: str = "greedy",
    samples: int = 1,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    labels: torch.Tensor | None = None,
    precision: str = "fp32",
    on_step: Callable[[], object] | None = None,
) -> Completion:
    """Hide the last ``mask_pixels`` of each digit (N, 784) and complete it ``samples`` times.

    ``labels`` (N,) tell a label-conditioned model which digit to draw; ``on_step`` is called
    after every pixel step.
    """
    if not 1 <= mask_pixels <= NUM_PIXELS:
        raise ValueError(f"mask_pixels must be in 1..{NUM_PIXELS}, not {mask_pixels}")
    device = next(model.parameters()).device
    num_visible = NUM_PIXELS - mask_pixels
    visible = pixels[:, :num_visible].to(device).float()  # the only part of pixels we read
    visible = visible.repeat_interleave(samples, dim=0)  # (N*K, V): digit-major, samples together
    if labels is not None:
        labels = labels.to(device).repeat_interleave(samples)
    was_training = model.training
    model.eval()
    try:
        fed, probs = rollout(
            model, visible, mask_pixels, chooser(sampling, generator), temperature, labels, precision, on_step
        )
    finally:
        model.train(was_training)
    # Mean feedback feeds p itself; the completed image shows p > 0.5.
    generated = fed if sampling != "mean" else (probs > 0.5).to(fed.dtype)
    completed = torch.cat([visible, generated], dim=1).to(torch.uint8).cpu()
    n = len(pixels)
    return Completion(
        completed=completed.reshape(n, samples, NUM_PIXELS),
        probs=probs.cpu().reshape(n, samples, mask_pixels),
    )


def keep_best(result: Completion, score: torch.Tensor) -> Completion:
    """Keep, for each digit, the sample with the highest ``score`` (N, K)."""
    best = score.argmax(dim=1)
    rows = torch.arange(len(best))
    return Completion(result.completed[rows, best].unsqueeze(1), result.probs[rows, best].unsqueeze(1))


def log_likelihood(result: Completion) -> torch.Tensor:
    """The log-likelihood (N, K) of each sample's generated pixels under the probabilities the
    model gave while drawing them: sum of log p where a pixel is 1 and log(1 - p) where it is 0."""
    mask_pixels = result.probs.shape[2]
    generated = result.completed[:, :, -mask_pixels:].float()  # the generated tail
    probs = result.probs.clamp(1e-7, 1 - 1e-7)
    return (generated * probs.log() + (1 - generated) * (1 - probs).log()).sum(dim=2)


def most_likely(result: Completion) -> Completion:
    """Keep, for each digit, the sample the model itself finds most likely."""
    return keep_best(result, log_likelihood(result))


@torch.no_grad()
def teacher_forced_nll(
    model: NextPixelModel,
    pixels: torch.Tensor,
    labels: torch.Tensor | None = None,
    first_pixel: int = 0,
    batch_size: int = 500,
) -> torch.Tensor:
    """NLL (nats, (N,)) of pixels ``first_pixel``.. of each image (N, 784), each given all the
    true pixels before it. ``labels`` (N,) are for label-conditioned models."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(pixels), batch_size):
            x = pixels[start : start + batch_size].to(device).float()
            batch_labels = None if labels is None else labels[start : start + batch_size]
            logits = model.teacher_forced_logits(x, batch_labels)[:, first_pixel:]
            nll = F.binary_cross_entropy_with_logits(logits, x[:, first_pixel:], reduction="none")
            out.append(nll.sum(dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def label_log_posterior(
    model: NextPixelModel, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500
) -> torch.Tensor:
    """log p(label | image) (B,) under a label-conditioned model, for whole images (B, 784).

    Bayes' rule over the model's own class-conditional likelihoods p(image | class), one
    teacher-forced pass per class, with a uniform prior: the model read as a classifier.
    """
    num_classes = model.config.num_classes
    if num_classes == 0:
        raise ValueError("label_log_posterior needs a label-conditioned model (--condition label)")
    log_likelihood = -torch.stack(
        [
            teacher_forced_nll(model, images, torch.full((len(images),), c), batch_size=batch_size)
            for c in range(num_classes)
        ],
        dim=1,
    )  # (B, num_classes)
    return log_likelihood.gather(1, labels.long().view(-1, 1)).squeeze(1) - log_likelihood.logsumexp(dim=1)


def most_recognisable(model: NextPixelModel, result: Completion, labels: torch.Tensor) -> Completion:
    """Keep, for each digit, the sample from which the model itself most surely reads back
    ``labels`` (N,): the highest ``label_log_posterior``. Uses the model only, never the judge."""
    n, k = result.completed.shape[:2]
    score = label_log_posterior(
        model, result.completed.reshape(n * k, NUM_PIXELS), labels.repeat_interleave(k)
    )
    return keep_best(result, score.reshape(n, k))
