"""What a training task is: its model, its inputs, its loss, its metrics, its epoch line.

    task = make_task(flags, train_cfg, data_cfg)  # flags["task"]: "next-pixel" (default) or "classify"
    model = task.build_model(task.model_config(flags))
    loss, extras = task.loss(model, inputs[idx].to(device), labels[idx].to(device), batch_number, generator)
    entry = task.evaluate(model, data, device)  # val/test metrics for the epoch's history entry

rnn_mnist/training.py runs one loop for every task; everything in which the tasks differ lives
here, one class per task:

- ``NextPixelTask``: the autoregressive model of binarised pixels (teacher forcing, optionally
  scheduled sampling), scored by exact NLL.
- ``ClassifyTask``: sequential MNIST, a ``SequenceClassifier`` reads grey levels in [0, 1] (or the
  binarised pixels) and names the digit, trained with cross-entropy, scored by accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from rnn_mnist.config import TASKS, train_options
from rnn_mnist.data import BinarizedMNIST, DataConfig, binarization_name, is_benchmark
from rnn_mnist.distributed import SINGLE, World, all_reduce_sum, my_batches
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.likelihood import bits_per_dim, standard_error
from rnn_mnist.models import (
    CLASSIFIER_KIND,
    ClassifierConfig,
    ModelConfig,
    NextPixelModel,
    SequenceClassifier,
)
from rnn_mnist.options import task_only
from rnn_mnist.progress import progress
from rnn_mnist.runtime import autocast
from rnn_mnist.samples import write_epoch_samples
from rnn_mnist.scheduled_sampling import parallel_mixture, resolve_mode, sequential_logits

EVAL_BATCH_SIZE = 500
# The flags of one task, with their defaults (declared with task= on their fields): typed on the
# other task, whatever their value, or set there to another value (a recipe, a Python caller), they
# are refused.
CLASSIFY_ONLY = task_only(train_options(), "classify")
NEXT_PIXEL_ONLY = task_only(train_options(), "next-pixel")


def pixel_loss(logits: torch.Tensor, pixels: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean training loss per pixel: BCE on logits, or MSE on sigmoid outputs (the original)."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, pixels)
    return F.mse_loss(torch.sigmoid(logits), pixels)


@torch.no_grad()
def evaluate_nll(
    model: NextPixelModel,
    pixels: torch.Tensor,
    loss: str,
    device: torch.device,
    labels: torch.Tensor | None = None,
    progress_desc: str | None = None,
    world: World = SINGLE,
) -> dict[str, float]:
    """Training loss and exact NLL of uint8 pixels (N, 784), in nats per image (with its standard
    error over the digits) and bits/dim.

    ``progress_desc`` names a progress bar over the batches (none when None). Under torchrun each
    rank sums its own batches and the sums are added up: the one process's figure.
    """
    model.eval()
    total_loss = total_nll = total_squares = 0.0
    starts = my_batches(range(0, len(pixels), EVAL_BATCH_SIZE), world)
    for start in progress(starts, progress_desc or "", unit="batch", enabled=progress_desc is not None):
        batch = pixels[start : start + EVAL_BATCH_SIZE].to(device).float()
        batch_labels = None if labels is None else labels[start : start + EVAL_BATCH_SIZE].to(device)
        logits = model.teacher_forced_logits(batch, batch_labels)
        # Each digit's NLL (B,), in float64: their squares give the standard error at no extra pass.
        nll = F.binary_cross_entropy_with_logits(logits, batch, reduction="none").sum(dim=1).double()
        total_nll += nll.sum().item()
        total_squares += nll.square().sum().item()
        total_loss += pixel_loss(logits, batch, loss).item() * len(batch)
    model.train()
    sums = all_reduce_sum([total_loss, total_nll, total_squares], world, device)
    total_loss, total_nll, total_squares = sums
    n = len(pixels)
    nll_nats = total_nll / n
    return {
        "loss": total_loss / n,
        "nll_nats": nll_nats,
        "nll_nats_standard_error": standard_error(n, total_nll, total_squares),
        "bits_per_pixel": bits_per_dim(nll_nats),
    }


# A stage's progress bar name ("validation", "test" -> "epoch 3/10: test"), or None for no bar.
Named = Callable[[str], "str | None"]


def _unnamed(stage: str) -> str | None:
    return None


@dataclass(frozen=True)
class BestBy:
    """The validation figure that makes an epoch the best one (training.py keeps its best.ckpt)."""

    key: str  # a history entry's key: val_nll_nats, val_accuracy
    higher: bool = False  # whether a higher value is better

    def epoch(self, history: list[dict[str, Any]]) -> int | None:
        """The best epoch of ``history`` (the earliest of equals); None without a validation split."""
        scored = [(entry[self.key], entry["epoch"]) for entry in history if entry.get(self.key) is not None]
        if not scored:
            return None
        return (max if self.higher else min)(scored, key=lambda pair: pair[0])[1]


class Task(Protocol):
    """What differs between tasks; training.py's loop calls nothing else task-specific."""

    name: str
    best_by: BestBy  # which epoch's weights best.ckpt keeps
    reads_binarised: bool  # trains on data.train_pixels (dynamic binarisation draws them each epoch)
    size_flags: str  # the flags that make the model smaller (memory.check_fits's advice)

    def model_config(self, flags: dict[str, Any]) -> Any: ...
    def model_config_from_dict(self, values: dict[str, Any]) -> Any: ...
    def build_model(self, config: Any) -> nn.Module: ...
    def memory_config(self, config: Any) -> ModelConfig: ...
    def describe_inputs(self, data_cfg: DataConfig) -> str: ...
    def epoch_inputs(self, data: BinarizedMNIST, generator: torch.Generator) -> torch.Tensor: ...
    def loss(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor | None,
        batch_number: int,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, dict[str, float]]: ...
    def evaluate(
        self,
        model: nn.Module,
        data: BinarizedMNIST,
        device: torch.device,
        named: Named = _unnamed,
        world: World = SINGLE,
    ) -> dict[str, Any]: ...
    def format_epoch(self, entry: dict[str, Any]) -> str: ...
    def epoch_pictures(self, model: nn.Module, data: BinarizedMNIST, folder: Path, epoch: int) -> str: ...


def _given(flags: dict[str, Any], defaults: dict[str, Any], typed: set[str]) -> list[str]:
    """The flags of ``defaults`` typed, or holding another value than their default."""
    return [f"--{k.replace('_', '-')}" for k, v in defaults.items() if k in typed or flags.get(k, v) != v]


def check_task_flags(flags: dict[str, Any], typed: set[str] | None = None) -> None:
    """Refuse flags the chosen task would silently ignore, in one line: the other task's flags
    typed (``typed``, cli.typed_flags: ``--readout last`` on a next-pixel run, although "last" is
    the default) or set to another value than their default."""
    task = flags.get("task", "next-pixel")
    if task not in TASKS:
        raise RnnMnistError(f"--task must be one of {', '.join(TASKS)}, not {task!r}")
    stray = _given(flags, CLASSIFY_ONLY if task == "next-pixel" else NEXT_PIXEL_ONLY, typed or set())
    if stray:
        other = "--task classify" if task == "next-pixel" else "--task next-pixel"
        raise RnnMnistError(f"{', '.join(stray)} is for {other} only; this experiment is --task {task}")


def make_task(flags: dict[str, Any], train_cfg: Any, data_cfg: DataConfig) -> Task:
    """The task named by ``flags["task"]`` (an experiment saved before tasks existed: next-pixel),
    for the digits of ``data_cfg`` (a resumed run's: its checkpoint's, not the flags')."""
    check_task_flags(flags)
    if flags.get("task", "next-pixel") == "classify":
        return ClassifyTask(train_cfg, binarized_input=bool(flags.get("binarized_input")))
    return NextPixelTask(train_cfg, benchmark=is_benchmark(data_cfg.binarize))


@dataclass
class NextPixelTask:
    """Predict pixel t from the pixels before it; scored by exact NLL per image."""

    train_cfg: Any  # training.TrainConfig: loss, precision, scheduled sampling
    benchmark: bool = False  # the test digits are a Bernoulli draw or Larochelle's: the line shows ± SE
    name: str = "next-pixel"
    best_by: BestBy = BestBy("val_nll_nats")
    reads_binarised: bool = True
    size_flags: str = "--hidden, --layers or --head-hidden"

    def model_config(self, flags: dict[str, Any]) -> ModelConfig:
        num_classes = 10 if flags.get("condition") == "label" else 0
        return ModelConfig.from_dict({**flags, "num_classes": num_classes})

    def model_config_from_dict(self, values: dict[str, Any]) -> ModelConfig:
        if values.get("kind") is not None:
            raise ValueError(f"it holds a {values['kind']}, not a next-pixel model")
        return ModelConfig.from_dict(values)

    def build_model(self, config: ModelConfig) -> NextPixelModel:
        return NextPixelModel(config)

    def memory_config(self, config: ModelConfig) -> ModelConfig:
        """The config rnn_mnist/memory.py estimates training from: the model's own."""
        return config

    def describe_inputs(self, data_cfg: DataConfig) -> str:
        return f"{data_cfg.binarize} binarisation"

    def epoch_inputs(self, data: BinarizedMNIST, generator: torch.Generator) -> torch.Tensor:
        return data.train_pixels(generator)

    def loss(
        self,
        model: NextPixelModel,
        inputs: torch.Tensor,
        labels: torch.Tensor | None,
        batch_number: int,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Teacher forcing, or scheduled sampling with eps_i of batch i; always scored against
        the true pixels, the loss in fp32."""
        cfg, batch = self.train_cfg, inputs.float()
        labels = labels if model.config.num_classes else None
        eps = cfg.schedule().teacher_forcing_prob(batch_number)
        if eps < 1.0 and resolve_mode(cfg.ss_mode, batch.device) == "sequential":
            with autocast(batch.device, cfg.precision):
                logits, _ = sequential_logits(model, batch, eps, generator, labels)
        else:
            fed = parallel_mixture(model, batch, eps, generator, labels, cfg.ss_passes)
            with autocast(batch.device, cfg.precision):
                logits = model.teacher_forced_logits(batch if fed is None else fed, labels)
        return pixel_loss(logits.float(), batch, cfg.loss), {"teacher_forcing_prob": eps}

    def evaluate(
        self,
        model: NextPixelModel,
        data: BinarizedMNIST,
        device: torch.device,
        named: Named = _unnamed,
        world: World = SINGLE,
    ) -> dict[str, Any]:
        conditioned, loss = model.config.num_classes > 0, self.train_cfg.loss
        val_labels, test_labels = (data.val_labels, data.test_labels) if conditioned else (None, None)
        val = None
        if len(data.val):
            val = evaluate_nll(model, data.val, loss, device, val_labels, named("validation"), world)
        test = evaluate_nll(model, data.test, loss, device, test_labels, named("test"), world)
        return {
            "val_loss": None if val is None else val["loss"],
            "val_nll_nats": None if val is None else val["nll_nats"],
            "test_loss": test["loss"],
            "test_nll_nats": test["nll_nats"],
            "test_nll_se": test["nll_nats_standard_error"],
            "test_bits_per_pixel": test["bits_per_pixel"],
        }

    def format_epoch(self, entry: dict[str, Any]) -> str:
        val, error = entry["val_nll_nats"], entry.get("test_nll_se")
        val_text = "   -  " if val is None else f"{val:6.2f}"
        # ± one standard error over the digits, where the test set stands for the benchmark's.
        error_text = f" ± {error:.2f}" if self.benchmark and error is not None else ""
        return (
            f"| epoch {entry['epoch']:3d} | train loss {entry['train_loss']:.4f} "
            f"| val nll {val_text} | test nll {entry['test_nll_nats']:6.2f}{error_text} nats "
            f"| {entry['test_bits_per_pixel']:.4f} bits/dim | end lr {entry['end_lr']:.1e} "
            f"| {entry['seconds']:6.1f} s |"
            + (f" eps {entry['teacher_forcing_prob']:.3f} |" if entry["teacher_forcing_prob"] < 1 else "")
        )

    def epoch_pictures(self, model: NextPixelModel, data: BinarizedMNIST, folder: Path, epoch: int) -> str:
        return f" samples {write_epoch_samples(model, data.test, data.test_labels, folder, epoch)}"


@dataclass
class ClassifyTask:
    """Sequential MNIST: read the 784 pixels, name the digit; cross-entropy, scored by accuracy."""

    train_cfg: Any
    binarized_input: bool = False  # read the binarised pixels (as the next-pixel task) not grey levels
    name: str = "classify"
    best_by: BestBy = BestBy("val_accuracy", higher=True)
    size_flags: str = "--hidden or --layers"

    @property
    def reads_binarised(self) -> bool:
        return self.binarized_input

    def model_config(self, flags: dict[str, Any]) -> ClassifierConfig:
        # One permutation per --data-seed: runs that differ only in --seed read the same order.
        seed = flags.get("data_seed", 0) if flags.get("permute") else None
        values = {k: v for k, v in flags.items() if k != "kind"}
        return ClassifierConfig.from_dict({**values, "permutation_seed": seed})

    def model_config_from_dict(self, values: dict[str, Any]) -> ClassifierConfig:
        if values.get("kind") != CLASSIFIER_KIND:
            raise ValueError(
                f"it holds no {CLASSIFIER_KIND} but a {values.get('kind') or 'next-pixel model'}"
            )
        return ClassifierConfig.from_dict(values)

    def build_model(self, config: ClassifierConfig) -> SequenceClassifier:
        return SequenceClassifier(config)

    def memory_config(self, config: ClassifierConfig) -> ModelConfig:
        """A next-pixel model of the same core bounds the classifier's memory: it reads one input
        per pixel too, and its per-pixel head outweighs the classifier's one read of 10 logits."""
        return ModelConfig(
            cell=config.cell,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout,
        )

    def describe_inputs(self, data_cfg: DataConfig) -> str:
        return classifier_inputs_name(data_cfg, self.binarized_input)

    def epoch_inputs(self, data: BinarizedMNIST, generator: torch.Generator) -> torch.Tensor:
        return data.train_pixels(generator) if self.binarized_input else data.train_grey

    def scaled(self, inputs: torch.Tensor) -> torch.Tensor:
        """uint8 inputs as floats in [0, 1]: grey levels / 255, or the {0, 1} pixels as they are."""
        return inputs.float() if self.binarized_input else inputs.float() / 255

    def loss(
        self,
        model: SequenceClassifier,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        batch_number: int,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        with autocast(inputs.device, self.train_cfg.precision):
            logits = model(self.scaled(inputs))
        return F.cross_entropy(logits.float(), labels), {}

    @torch.no_grad()
    def accuracy(
        self,
        model: SequenceClassifier,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        device: torch.device,
        progress_desc: str | None = None,
        world: World = SINGLE,
    ) -> dict[str, float]:
        """Mean cross-entropy and accuracy on uint8 inputs (N, 784); ``progress_desc`` names a
        progress bar over the batches (none when None). Under torchrun: summed over the ranks."""
        was_training = model.training
        model.eval()
        total_loss, correct = 0.0, 0
        starts = my_batches(range(0, len(inputs), EVAL_BATCH_SIZE), world)
        for start in progress(starts, progress_desc or "", unit="batch", enabled=progress_desc is not None):
            x = self.scaled(inputs[start : start + EVAL_BATCH_SIZE].to(device))
            y = labels[start : start + EVAL_BATCH_SIZE].to(device)
            logits = model(x).float()
            total_loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == y).sum())
        model.train(was_training)
        total_loss, correct = all_reduce_sum([total_loss, correct], world, device)
        return {"loss": total_loss / len(inputs), "accuracy": int(correct) / len(inputs)}

    def evaluate(
        self,
        model: SequenceClassifier,
        data: BinarizedMNIST,
        device: torch.device,
        named: Named = _unnamed,
        world: World = SINGLE,
    ) -> dict[str, Any]:
        val_inputs = data.val if self.binarized_input else data.val_grey
        test_inputs = data.test if self.binarized_input else data.test_grey
        val = None
        if len(data.val):
            val = self.accuracy(model, val_inputs, data.val_labels, device, named("validation"), world)
        test = self.accuracy(model, test_inputs, data.test_labels, device, named("test"), world)
        return {
            "val_loss": None if val is None else val["loss"],
            "val_accuracy": None if val is None else val["accuracy"],
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
        }

    def format_epoch(self, entry: dict[str, Any]) -> str:
        val = entry["val_accuracy"]
        val_text = "   -  " if val is None else f"{val:6.4f}"
        return (
            f"| epoch {entry['epoch']:3d} | train loss {entry['train_loss']:.4f} "
            f"| val acc {val_text} | test acc {entry['test_accuracy']:6.4f} "
            f"| test loss {entry['test_loss']:.4f} | end lr {entry['end_lr']:.1e} "
            f"| {entry['seconds']:6.1f} s |"
        )

    def epoch_pictures(
        self, model: SequenceClassifier, data: BinarizedMNIST, folder: Path, epoch: int
    ) -> str:
        return ""  # nothing drawn: evaluate.py shows the confusion matrix and the misread digits


def classifier_inputs_name(data_cfg: DataConfig, binarized_input: bool) -> str:
    """How a classifier's pixels are presented: ``grey levels`` or a binarisation's name."""
    if not binarized_input:
        return "grey levels in [0, 1]"
    return f"{binarization_name(data_cfg.binarize, data_cfg.threshold)} binarised pixels"
