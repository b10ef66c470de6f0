"""The Python API: load a trained model, read its test digits, score, sample and complete them.

    import rnn_mnist
    model = rnn_mnist.load("pretrained/fast")               # an experiment folder or a .ckpt file
    digits, labels = rnn_mnist.test_digits(model, n=16)     # (16, 784) uint8 in {0, 1}, (16,)
    model.log_prob(digits)                                  # (16,) nats: log p(digit), exact
    model.sample(64, seed=0)                                # (64, 784) uint8 drawn from a blank canvas
    model.complete(digits, mask="center:14", inpaint="sample", particles=32, seed=0)   # (16, 784)

A thin layer over what the scripts run: the checkpoint is loaded and rebuilt as evaluate.py does
(rnn_mnist/evaluation.py's ``load_model``), likelihoods are rnn_mnist/likelihood.py's teacher-forced
pass, samples and completions the one rollout routine (rnn_mnist/rollout.py's ``complete``), masks
the specs of evaluate.py's --mask (rnn_mnist/masks.py), and the test digits are binarised as the
model was trained (rnn_mnist/data.py). Bad input is an RnnMnistError of one line. docs/api.md has
the details.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnn_mnist.checkpoint import ExperimentPaths
from rnn_mnist.data import IMAGE_SIDE, NUM_PIXELS, checkpoint_data_config, load_test_digits
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.evaluation import load_model
from rnn_mnist.likelihood import teacher_forced_nll
from rnn_mnist.masks import parse_mask
from rnn_mnist.models import ModelConfig, NextPixelModel
from rnn_mnist.rollout import INPAINTS, SAMPLINGS, complete
from rnn_mnist.runtime import resolve_device

# The checkout that holds the package: a relative experiment path not found from the working
# directory is looked for here, so that load("pretrained/fast") works from anywhere.
CHECKOUT = Path(__file__).resolve().parent.parent
CHECKPOINT_NAME = "checkpoint.ckpt"
# Rollout rows (digits x particles) walked together: bounds the memory of a large request.
ROWS_PER_PASS = 4096

Digits = torch.Tensor | np.ndarray | Sequence[Any]
Labels = int | torch.Tensor | np.ndarray | Sequence[int] | None


@dataclass(repr=False)
class Model:
    """A trained next-pixel model, in eval mode on ``device``, and where it came from.

    ``net`` is the NextPixelModel itself (``net(pixels)`` gives every pixel's logit); ``path`` its
    checkpoint file; ``data_config`` the checkpoint's record of the data it was trained on.
    """

    net: NextPixelModel
    path: Path
    device: torch.device
    data_config: dict[str, Any]
    epoch: int

    def __repr__(self) -> str:
        c = self.config
        kind = f"{c.cell.upper()}-{c.hidden_size} x{c.num_layers}"
        if self.conditioned:
            kind += ", label-conditioned"
        return f"Model({str(self.path)!r}, {kind}, epoch {self.epoch}, {self.device})"

    @property
    def config(self) -> ModelConfig:
        return self.net.config

    @property
    def conditioned(self) -> bool:
        """Whether the model is told the digit's class (trained with --condition label)."""
        return self.config.num_classes > 0

    def log_prob(self, digits: Digits, labels: Labels = None) -> torch.Tensor:
        """log p(digit) (N,) in nats of binarised digits (N, 784) or (N, 28, 28): the exact
        log-likelihood, one teacher-forced pass (given the class, ``labels``, for a conditioned model)."""
        pixels = _digits(digits)
        return -teacher_forced_nll(self.net, pixels, self._labels(labels, len(pixels)))

    def sample(self, n: int, labels: Labels = None, temperature: float = 1.0, seed: int = 0) -> torch.Tensor:
        """``n`` digits (n, 784) uint8 in {0, 1} drawn pixel by pixel from a blank canvas, each
        pixel a Bernoulli draw at ``temperature``; the same ``seed`` draws the same digits.
        A conditioned model needs ``labels``: one class for all, or one per digit."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise RnnMnistError(f"sample: n must be a whole number, at least 1, not {n!r}")
        blank = torch.zeros(n, NUM_PIXELS, dtype=torch.uint8)
        return self.complete(
            blank, f"suffix:{NUM_PIXELS}", labels, inpaint="blind", temperature=temperature, seed=seed
        )

    def complete(
        self,
        digits: Digits,
        mask: str | torch.Tensor = "suffix:284",
        labels: Labels = None,
        inpaint: str = "sample",
        particles: int = 1,
        sampling: str = "bernoulli",
        temperature: float = 1.0,
        seed: int = 0,
    ) -> torch.Tensor:
        """Fill the hidden pixels of ``digits`` (N, 784): the visible ones are kept as they are.

        ``mask`` is a spec of evaluate.py's --mask (``center:14``, ``suffix:392``, ``rows:10-17``...:
        rnn_mnist/masks.py) or a bool tensor (784,) or (28, 28), True where hidden. ``particles``
        K > 1 with ``inpaint`` sample or best weighs K fills by the visible pixels after the holes
        (sequential Monte Carlo, Bernoulli draws) and keeps one per digit: (N, 784) uint8; with
        ``inpaint="blind"`` all K are kept: (N, K, 784). ``sampling`` greedy or mean is
        deterministic; bernoulli draws, the same for the same ``seed``.
        """
        pixels = _digits(digits)
        hidden = _mask(mask, seed)
        labels = self._labels(labels, len(pixels))
        _check_rollout(particles, sampling, temperature, inpaint)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        step = max(1, ROWS_PER_PASS // particles)
        parts = []
        for start in range(0, len(pixels), step):
            batch = slice(start, start + step)
            try:
                result = complete(
                    self.net, pixels[batch], sampling=sampling, samples=particles, temperature=temperature,
                    generator=generator, labels=None if labels is None else labels[batch], hidden=hidden,
                    inpaint=inpaint,
                )  # fmt: skip
            except ValueError as exc:  # a request the rollout cannot serve (the checks above miss none)
                raise RnnMnistError(f"complete: {exc}") from None
            parts.append(result.completed)
        completed = torch.cat(parts)  # (N, K, 784); K is 1 unless inpaint is blind
        return completed[:, 0] if completed.shape[1] == 1 else completed

    def _labels(self, labels: Labels, n: int) -> torch.Tensor | None:
        """``labels`` as (n,) int64 for a conditioned model (one class for all, or one per digit);
        None for the others. A missing or needless label is one line."""
        if not self.conditioned:
            if labels is not None:
                raise RnnMnistError(
                    "this model is not conditioned on the digit's class (trained without --condition "
                    "label): pass labels=None"
                )
            return None
        classes = self.config.num_classes
        if labels is None:
            raise RnnMnistError(
                f"this model is conditioned on the digit's class: pass labels, one class in 0..{classes - 1} "
                "for all digits or one per digit"
            )
        values = torch.as_tensor(labels)
        if values.dtype.is_floating_point or values.dtype == torch.bool or values.ndim > 1:
            raise RnnMnistError(
                f"labels must be whole numbers, one per digit, not {values.dtype} {tuple(values.shape)}"
            )
        values = values.long().expand(n) if values.ndim == 0 else values.long()
        if len(values) != n:
            raise RnnMnistError(f"{len(values)} labels for {n} digits: pass one class, or one per digit")
        if len(values) and not (int(values.min()) >= 0 and int(values.max()) < classes):
            raise RnnMnistError(f"labels must be classes in 0..{classes - 1}")
        return values


def load(source: str | Path, device: str | torch.device = "auto", checkpoint: str = "last") -> Model:
    """The model of an experiment folder (``experiments/NAME``, a shipped ``pretrained/NAME``) or of
    a checkpoint file (``.ckpt``), in eval mode on ``device`` (auto: CUDA, then MPS, then the CPU).
    ``checkpoint``: a folder's ``last`` epoch (checkpoint.ckpt) or its ``best`` validation epoch
    (best.ckpt), as evaluate.py's --checkpoint.

    A relative path not found from the working directory is looked for in the checkout that holds
    this package, so ``load("pretrained/fast")`` works from anywhere.
    """
    path = _checkpoint_file(Path(source))
    if checkpoint != "last" or path.name == CHECKPOINT_NAME:
        if path.name != CHECKPOINT_NAME:
            raise RnnMnistError(f"checkpoint={checkpoint!r} chooses within an experiment folder, not {path}")
        path = ExperimentPaths(path.parent).checkpoint_file(checkpoint)
    device = device if isinstance(device, torch.device) else _device(str(device))
    net, checkpoint = load_model(path, device)
    return Model(net, path, device, dict(checkpoint.get("data_config", {})), int(checkpoint.get("epoch", 0)))


def test_digits(
    model: Model, n: int | None = 16, data_dir: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``n`` MNIST test digits (None: all 10,000) binarised as ``model`` was trained:
    (n, 784) uint8 in {0, 1}, and their labels (n,); None for Larochelle's .amat digits whose
    labels are unknown (rnn_mnist/data.py's ``require_labels``).

    MNIST is read from ``data_dir``, else $RNN_MNIST_DATA, else the folder the model was trained
    on (rnn_mnist/data.py's ``checkpoint_data_folder``: the same from any working directory).
    """
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise RnnMnistError(f"test_digits: n must be a whole number, at least 1 (or None: all), not {n!r}")
    folder = None if data_dir is None else str(data_dir)
    config = checkpoint_data_config(model.data_config, folder, model.path.parent)
    pixels, labels = load_test_digits(config)
    return pixels[:n], None if labels is None else labels[:n]


test_digits.__test__ = False  # not a test, whatever its name says to pytest


def _checkpoint_file(source: Path) -> Path:
    """The checkpoint file that ``source`` (a folder or a file) names; one line when there is none."""
    if not source.exists() and not source.is_absolute() and (CHECKOUT / source).exists():
        source = CHECKOUT / source
    if source.is_dir():
        if not (source / CHECKPOINT_NAME).is_file():
            raise RnnMnistError(
                f"no checkpoint in {source} (no {CHECKPOINT_NAME}): name a folder train.py wrote, such as "
                "experiments/NAME or pretrained/fast, or a .ckpt file"
            )
        return source / CHECKPOINT_NAME
    if not source.is_file():
        raise RnnMnistError(
            f"no experiment folder or checkpoint file {source}: name a folder train.py wrote, such as "
            "experiments/NAME or pretrained/fast, or a .ckpt file"
        )
    return source


def _device(name: str) -> torch.device:
    """evaluate.py's --device choice (auto, cpu, cuda, mps) or a torch device name such as cuda:1."""
    try:
        return resolve_device(name)
    except RuntimeError:  # torch's list of every device type it knows, for a name it does not
        raise RnnMnistError(f"device must be auto, cpu, cuda (cuda:N) or mps, not {name!r}") from None


def _digits(digits: Digits) -> torch.Tensor:
    """Binarised digits as (N, 784) uint8 on the CPU; one line for another shape or other values."""
    try:
        pixels = torch.as_tensor(np.asarray(digits) if not isinstance(digits, torch.Tensor) else digits)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise RnnMnistError(f"digits must be an array of pixels, (N, 784) or (N, 28, 28) ({exc})") from None
    shape = tuple(pixels.shape)
    if shape[1:] not in ((NUM_PIXELS,), (IMAGE_SIDE, IMAGE_SIDE)) or len(pixels) == 0:
        single = " (one digit: digits[None])" if shape in ((NUM_PIXELS,), (IMAGE_SIDE, IMAGE_SIDE)) else ""
        raise RnnMnistError(f"digits must be (N, 784) or (N, 28, 28) with N >= 1, not {shape}{single}")
    pixels = pixels.detach().cpu().reshape(len(pixels), NUM_PIXELS)
    if pixels.dtype.is_complex or not bool(((pixels == 0) | (pixels == 1)).all()):
        top = pixels.abs().max().item() if not pixels.dtype.is_complex else "complex"
        raise RnnMnistError(
            f"digits must be binarised pixels, 0 or 1 (these reach {top}): rnn_mnist.test_digits gives "
            "test digits binarised as the model was trained"
        )
    return pixels.to(torch.uint8)


def _mask(mask: str | torch.Tensor, seed: int) -> torch.Tensor:
    """The hidden pixels (784,) bool: a mask spec (``random:F`` drawn with ``seed``) or a bool tensor."""
    if isinstance(mask, str):
        return parse_mask(mask, seed)
    hidden = torch.as_tensor(mask)
    if hidden.dtype != torch.bool or tuple(hidden.shape) not in ((NUM_PIXELS,), (IMAGE_SIDE, IMAGE_SIDE)):
        raise RnnMnistError(
            f"mask must be a spec such as 'center:14' or a bool tensor (784,) or (28, 28), "
            f"not {hidden.dtype} {tuple(hidden.shape)}"
        )
    if not hidden.any():
        raise RnnMnistError("the mask hides no pixel")
    return hidden.reshape(NUM_PIXELS).cpu()


def _check_rollout(particles: int, sampling: str, temperature: float, inpaint: str) -> None:
    """One line for a request the rollout cannot serve, in the API's words."""
    if not isinstance(particles, int) or isinstance(particles, bool) or particles < 1:
        raise RnnMnistError(f"particles must be a whole number, at least 1, not {particles!r}")
    if sampling not in SAMPLINGS:
        raise RnnMnistError(f"sampling must be one of {', '.join(SAMPLINGS)}, not {sampling!r}")
    if not (isinstance(temperature, int | float) and 0 < temperature < float("inf")):
        raise RnnMnistError(f"temperature must be a number above 0, not {temperature!r}")
    if inpaint not in INPAINTS:
        raise RnnMnistError(f"inpaint must be one of {', '.join(INPAINTS)}, not {inpaint!r}")
    if inpaint != "blind" and particles > 1 and sampling != "bernoulli":
        raise RnnMnistError(
            f"in-painting with {particles} particles needs sampling='bernoulli', not {sampling!r}"
        )
