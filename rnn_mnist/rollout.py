"""The one rollout routine: fill the hidden pixels of digits pixel by pixel, carrying the state.

    result = complete(model, pixels, mask_pixels=284, sampling="greedy", samples=1)
    result = complete(model, pixels, hidden=parse_mask("center:14"), sampling="bernoulli",
                      samples=32, inpaint="sample")        # in-painting by sequential Monte Carlo
    result.completed   # (N, K, 784) uint8: the visible pixels, and the generated ones in the holes
    result.probs       # (N, K, M): p(pixel = 1) the model gave at each of the M hidden pixels, in
                       # pixel order (at temperature 1: --temperature changes the draws, not this)

The visible pixels before the first hole are read once, batched, and shared by all K particles
of a digit; then every digit and particle walks on together: a hidden pixel is drawn from the
model, a visible one is fed as it is. The hidden pixels of ``pixels`` are never read.

In-painting (``inpaint="sample"`` or ``"best"``) weighs each particle by how likely the model finds
the visible pixels after the holes given the particle's fill, and resamples particles (with their
states) when the weights degenerate: sequential Monte Carlo, which samples the model's posterior
p(hidden | visible) as K grows. ``"blind"`` ignores that evidence and keeps all K draws. For a suffix
mask nothing visible follows the hole, so the weights stay equal and all three are the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from rnn_mnist.data import NUM_PIXELS
from rnn_mnist.likelihood import eval_mode, label_log_posterior
from rnn_mnist.masks import runs, suffix_mask
from rnn_mnist.models import NextPixelModel, select_state
from rnn_mnist.runtime import autocast
from rnn_mnist.steps import State, Stepper

SAMPLINGS = ("greedy", "bernoulli", "mean")
# How --best-of K picks one of K samples: the model's likelihood of it, or (label-conditioned
# models) how surely the model reads the requested class back from it.
BEST_BY = ("likelihood", "label-posterior")
# blind: each particle draws the holes from the pixels before them; sample / best: sequential Monte
# Carlo, one particle per digit drawn by weight / the heaviest.
INPAINTS = ("blind", "sample", "best")

# choose(probs (B,), step index t) -> the value fed back as pixel t (B,), float.
Chooser = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass
class Completion:
    completed: torch.Tensor  # (N, K, 784) uint8 in {0, 1}
    probs: torch.Tensor  # (N, K, M) float: p(pixel = 1) at each hidden pixel
    hidden: torch.Tensor  # (784,) bool: the mask
    mean_ess: float = float("nan")  # in-painting: mean effective sample size at the weighings
    resamples: int = 0  # in-painting: how many times a digit's particles were resampled


@dataclass
class Particles:
    canvas: torch.Tensor  # (N * K, 784) float: the visible pixels and the filled holes
    probs: torch.Tensor  # (N * K, M) float: p(pixel = 1) at each hidden pixel, at temperature 1
    log_weight: torch.Tensor  # (N, K): log p(visible after the holes | fill), since resampling
    log_joint: torch.Tensor  # (N, K): log p(fill, visible after the first hole | visible before)
    ess: list[float]  # the mean effective sample size over digits at each weighing
    resamples: int  # how many times a digit's particles were resampled, summed over digits


def chooser(sampling: str, generator: torch.Generator | None = None) -> Chooser:
    """The feedback rule for ``sampling``: greedy (p > 0.5), bernoulli (draw), or mean (feed p)."""
    if sampling == "greedy":
        return lambda probs, t: (probs > 0.5).to(probs.dtype)
    if sampling == "bernoulli":
        return lambda probs, t: torch.bernoulli(probs, generator=generator)
    if sampling == "mean":
        return lambda probs, t: probs
    raise ValueError(f"sampling must be one of {SAMPLINGS}, not {sampling!r}")


def _log_prob(logits: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """log p(pixels) (B,) under Bernoulli ``logits`` (B, T)."""
    return -F.binary_cross_entropy_with_logits(logits, pixels, reduction="none").sum(dim=1)


@dataclass
class _Walk:
    """A rollout in progress: N digits times K particles (rows) walking over the pixels together."""

    step: Stepper  # the model's step for these rows (rnn_mnist/steps.py)
    choose: Chooser
    temperature: float
    weigh: bool
    generator: torch.Generator | None
    on_step: Callable[[], object] | None
    canvas: torch.Tensor  # (N * K, 784) float: the visible pixels and the filled holes
    state: State | None  # after the pixels walked so far
    probs: torch.Tensor  # (N * K, M) float: p(pixel = 1) at each hidden pixel, at temperature 1
    log_weight: torch.Tensor  # (N, K): log p(visible after the holes | fill), since resampling
    log_joint: torch.Tensor  # (N * K,): travels with its particle through resampling
    ess: list[float] = field(default_factory=list)  # the mean effective sample size at each weighing
    resamples: int = 0  # how many times a digit's particles were resampled, summed over digits
    done: int = 0  # hidden pixels drawn so far

    def draw(self, start: int, end: int) -> None:
        """Draw the hidden pixels start..end-1 from the model, one at a time, feeding each back."""
        n, k = self.log_weight.shape
        for t in range(start, end):
            logit, self.state = self.step(self.canvas, t, self.state)
            self.probs[:, self.done] = p = torch.sigmoid(logit)
            q = p if self.temperature == 1 else torch.sigmoid(logit / self.temperature)
            self.canvas[:, t] = self.choose(q, t)
            self.done += 1
            if self.on_step is not None:
                self.on_step()
            if self.weigh:
                drawn, logit = self.canvas[:, t : t + 1], logit[:, None]
                log_p = _log_prob(logit, drawn)
                self.log_joint += log_p
                if self.temperature != 1:  # drawn from q: weighed towards the model's p
                    self.log_weight += (log_p - _log_prob(logit / self.temperature, drawn)).view(n, k)

    def weigh_visible(self, logits: torch.Tensor, start: int, end: int) -> None:
        """Weigh each particle by the likelihood of the visible pixels start..end-1 (their
        ``logits`` (N * K, end - start)), then resample the digits whose weights degenerated."""
        n, k = self.log_weight.shape
        evidence = _log_prob(logits.float(), self.canvas[:, start:end])
        self.log_weight += evidence.view(n, k)
        self.log_joint += evidence
        index, self.log_weight, count = _resample(self.log_weight, self.ess, self.generator)
        if count:  # each particle's canvas, probabilities and state go with it
            self.canvas, self.probs = self.canvas[index], self.probs[index]
            self.log_joint = self.log_joint[index]
            self.state = select_state(self.state, index)
            self.resamples += count


@torch.no_grad()
def rollout(
    model: NextPixelModel,
    canvas: torch.Tensor,
    hidden: torch.Tensor,
    choose: Chooser,
    temperature: float = 1.0,
    labels: torch.Tensor | None = None,
    precision: str = "fp32",
    particles: int = 1,
    weigh: bool = False,
    generator: torch.Generator | None = None,
    on_step: Callable[[], object] | None = None,
) -> Particles:
    """Fill the ``hidden`` pixels (784,) bool of ``canvas`` (N, 784) floats, ``particles`` times each.

    ``choose`` sees the probabilities with the logits divided by ``temperature``; ``labels`` (N,)
    are for label-conditioned models; ``precision`` bf16 runs the GEMMs in bf16
    (rnn_mnist/runtime.py). With ``weigh``, the visible pixels after the first hole weigh the
    particles (with the importance correction for a tempered draw) and a digit's particles are
    resampled with ``generator`` whenever their effective sample size falls below half of them.
    Without it, nothing after the last hole is read. ``on_step`` is called after every hidden
    pixel drawn (progress).
    """
    n, k, device = len(canvas), particles, canvas.device
    canvas = canvas.masked_fill(hidden.to(device), 0)  # the hidden pixels are never read
    first_hole = int(hidden.float().argmax())
    last_hole = NUM_PIXELS - int(hidden.flip(0).float().argmax())
    chunk = model.read_chunk(device)
    with autocast(device, precision):
        # The pixels before the first hole, read once for all particles of a digit.
        state: State | None = model.read(canvas, first_hole, labels) if first_hole else None
        rows = torch.arange(n, device=device).repeat_interleave(k)  # particle -> digit
        labels = None if labels is None else labels.to(device)[rows]
        walk = _Walk(
            model.stepper(labels, n * k, device), choose, temperature, weigh, generator, on_step,
            canvas=canvas[rows],
            state=None if state is None else select_state(state, rows),
            probs=canvas.new_empty(n * k, int(hidden.sum())),
            log_weight=canvas.new_zeros(n, k),
            log_joint=canvas.new_zeros(n * k),
        )  # fmt: skip
        for start, end, is_hidden in runs(hidden):
            if end <= first_hole or (start >= last_hole and not weigh):
                continue
            if is_hidden:
                walk.draw(start, end)
                continue
            # A visible run, fed as it is; with ``weigh``, its likelihood weighs each particle.
            logits, walk.state = _feed(model, walk.step, walk.canvas, start, end, labels, walk.state, chunk)
            if weigh:
                walk.weigh_visible(logits, start, end)
    return Particles(
        walk.canvas, walk.probs, walk.log_weight, walk.log_joint.view(n, k), walk.ess, walk.resamples
    )


def _feed(
    model: NextPixelModel,
    step_model: Stepper,
    canvas: torch.Tensor,
    start: int,
    end: int,
    labels: torch.Tensor | None,
    state: State | None,
    chunk: int,
) -> tuple[torch.Tensor, State]:
    """Feed the visible pixels start..end-1: their logits (B, end - start) and the state after.

    A short run goes through the rollout's stepper; a long one in batched passes of ``chunk``."""
    logits = []
    if end - start < chunk:
        for t in range(start, end):
            logit, state = step_model(canvas, t, state)
            logits.append(logit[:, None])
    else:
        for first in range(start, end, chunk):
            part, state = model(canvas, first, min(first + chunk, end), labels, state)
            logits.append(part)
    return torch.cat(logits, dim=1), state


def _resample(
    log_weight: torch.Tensor, ess: list[float], generator: torch.Generator | None
) -> tuple[torch.Tensor | None, torch.Tensor, int]:
    """Systematic resampling of the digits (N of them, K particles each) whose effective sample
    size is below K / 2. Returns which particle (N * K,) each slot now holds (None if no digit
    is resampled), the new log weights and how many digits were resampled; records the mean
    effective sample size in ``ess``."""
    n, k = log_weight.shape
    device = log_weight.device
    weight = torch.softmax(log_weight, dim=1)
    effective = 1 / weight.square().sum(dim=1)  # (N,), in 1..K
    ess.append(effective.mean().item())
    degenerate = effective < k / 2
    count = int(degenerate.sum())
    if not count:
        return None, log_weight, 0
    # Drawn where the generator lives: evaluate.py's and the API's is on the model's device.
    on = generator.device if generator is not None else None
    offsets = torch.rand(n, 1, generator=generator, device=on).to(device)
    points = (offsets + torch.arange(k, device=device)) / k  # (N, K), one offset per digit
    chosen = torch.searchsorted(weight.cumsum(dim=1), points).clamp_(max=k - 1)
    chosen = torch.where(degenerate[:, None], chosen, torch.arange(k, device=device))
    # After resampling, a digit's particles are equally weighted, each with the mean weight.
    mean = log_weight.logsumexp(dim=1, keepdim=True) - math.log(k)
    log_weight = torch.where(degenerate[:, None], mean.expand(-1, k), log_weight)
    return (torch.arange(n, device=device)[:, None] * k + chosen).view(-1), log_weight, count


def _check_request(
    hidden: torch.Tensor | None, mask_pixels: int | None, sampling: str, samples: int, inpaint: str
) -> torch.Tensor:
    """The mask (784,) bool on the CPU: ``hidden``, else the last ``mask_pixels``; a ValueError for
    a request ``complete`` cannot serve."""
    if hidden is None:
        if mask_pixels is None or not 1 <= mask_pixels <= NUM_PIXELS:
            raise ValueError(f"mask_pixels must be in 1..{NUM_PIXELS}, not {mask_pixels}")
        hidden = suffix_mask(mask_pixels)
    if not hidden.any():
        raise ValueError("the mask hides no pixel")
    if inpaint not in INPAINTS:
        raise ValueError(f"inpaint must be one of {INPAINTS}, not {inpaint!r}")
    if inpaint != "blind" and samples > 1 and sampling != "bernoulli":
        raise ValueError(f"in-painting with {samples} particles needs bernoulli sampling, not {sampling}")
    return hidden.cpu()


def complete(
    model: NextPixelModel,
    pixels: torch.Tensor,
    mask_pixels: int | None = None,
    sampling: str = "greedy",
    samples: int = 1,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    labels: torch.Tensor | None = None,
    precision: str = "fp32",
    hidden: torch.Tensor | None = None,
    inpaint: str = "blind",
    on_step: Callable[[], object] | None = None,
) -> Completion:
    """Hide the last ``mask_pixels`` of each digit (N, 784), or the ``hidden`` pixels (784,) bool,
    and fill them with ``samples`` particles each (rnn_mnist/masks.py makes masks).

    ``inpaint`` blind keeps all ``samples`` draws; sample / best keep one per digit, drawn by its
    weight / the heaviest (sequential Monte Carlo, which needs Bernoulli draws when samples > 1).
    ``labels`` (N,) tell a label-conditioned model which digit to draw; ``on_step`` is called
    after every hidden pixel drawn (progress).
    """
    hidden = _check_request(hidden, mask_pixels, sampling, samples, inpaint)
    weigh = inpaint != "blind"
    device = next(model.parameters()).device
    with eval_mode(model):
        filled = rollout(
            model,
            pixels.to(device).float(),
            hidden,
            chooser(sampling, generator),
            temperature,
            labels,
            precision,
            particles=samples,
            weigh=weigh,
            generator=generator,
            on_step=on_step,
        )
    result = _completion(filled, len(pixels), hidden, sampling, samples)
    if not weigh or samples == 1:
        return result
    if inpaint == "best":  # the fill the model finds most likely, evidence included
        return keep_best(result, filled.log_joint.cpu())
    on = generator.device if generator is not None else torch.device("cpu")  # draw where it lives
    pick = torch.multinomial(torch.softmax(filled.log_weight.to(on), dim=1), 1, generator=generator)
    pick = pick.squeeze(1).cpu()
    return keep_best(result, F.one_hot(pick, samples).float())


def _completion(filled: Particles, n: int, hidden: torch.Tensor, sampling: str, samples: int) -> Completion:
    """The ``samples`` completions of each of the ``n`` digits that ``filled`` holds, on the CPU."""
    canvas, probs = filled.canvas.cpu(), filled.probs.cpu()
    if sampling == "mean":  # mean feedback feeds p itself; the completed image shows p > 0.5
        canvas[:, hidden] = (probs > 0.5).to(canvas.dtype)
    return Completion(
        completed=canvas.to(torch.uint8).reshape(n, samples, NUM_PIXELS),
        probs=probs.reshape(n, samples, -1),
        hidden=hidden,
        mean_ess=sum(filled.ess) / len(filled.ess) if filled.ess else float(samples),
        resamples=filled.resamples,
    )


def keep_best(result: Completion, score: torch.Tensor) -> Completion:
    """Keep, for each digit, the sample with the highest ``score`` (N, K)."""
    best = score.argmax(dim=1)
    rows = torch.arange(len(best))
    return Completion(
        result.completed[rows, best].unsqueeze(1),
        result.probs[rows, best].unsqueeze(1),
        result.hidden,
        result.mean_ess,
        result.resamples,
    )


def log_likelihood(result: Completion) -> torch.Tensor:
    """The log-likelihood (N, K) of each sample's generated pixels under the probabilities the
    model gave while drawing them: sum of log p where a pixel is 1 and log(1 - p) where it is 0."""
    generated = result.completed[:, :, result.hidden].float()
    probs = result.probs.clamp(1e-7, 1 - 1e-7)
    return (generated * probs.log() + (1 - generated) * (1 - probs).log()).sum(dim=2)


def most_likely(result: Completion) -> Completion:
    """Keep, for each digit, the sample the model itself finds most likely."""
    return keep_best(result, log_likelihood(result))


def most_recognisable(model: NextPixelModel, result: Completion, labels: torch.Tensor) -> Completion:
    """Keep, for each digit, the sample from which the model itself most surely reads back
    ``labels`` (N,): the highest ``label_log_posterior``. Uses the model only, never the judge."""
    n, k = result.completed.shape[:2]
    score = label_log_posterior(
        model, result.completed.reshape(n * k, NUM_PIXELS), labels.repeat_interleave(k)
    )
    return keep_best(result, score.reshape(n, k))
