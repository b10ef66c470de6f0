"""Reading digits: a classify experiment's test accuracy, confusion matrix and misread digits; and a
label-conditioned next-pixel model read as a classifier, with accuracy by how many pixels were read.

    python evaluate.py --exp-name smnist                              # a --task classify experiment
    python evaluate.py --exp-name label-fast --classify --against smnist   # into plots/label-fast-classify/

    metrics = read_digits(EvalOptions(exp_name="label-fast", classify=True, against="smnist"))

The generative model gives log p(x_t | x_<t, c) for every pixel and class in ten teacher-forced
passes (rnn_mnist/likelihood.py ``class_log_likelihoods``); their cumulative sums are log p(x_<=t | c),
so Bayes' rule gives the posterior after every pixel from those same ten passes. A classifier's
curve is its head applied to the state after each pixel (``SequenceClassifier.logits_after_each_pixel``,
pixels counted in its own reading order). Writes metrics.json and PNGs into plots/<exp-name>/ (a
classifier) or plots/<exp-name>-classify/ (--classify: beside the completions, not over them), through
a fresh folder that replaces it whole (rnn_mnist/output_folder.py).
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnn_mnist.checkpoint import (
    ExperimentPaths,
    atomic_write,
    experiment_paths,
    load_checkpoint,
    rebuild_model,
    weights_sha256,
)
from rnn_mnist.config import EvalOptions
from rnn_mnist.data import IMAGE_SIDE, NUM_PIXELS, checkpoint_data_config, load_test_digits, require_labels
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.evaluation import load_model, output_folder
from rnn_mnist.likelihood import class_log_likelihoods
from rnn_mnist.models import CLASSIFIER_KIND, ClassifierConfig, SequenceClassifier
from rnn_mnist.output_folder import OutputFolder
from rnn_mnist.progress import progress
from rnn_mnist.runtime import configure_cpu_math, resolve_device
from rnn_mnist.tasks import classifier_inputs_name

MISREAD_SHOWN = 100  # misread digits drawn in misread.png (all are listed in metrics.json)


def _checkpoint_path(exp_dir: str, exp_name: str, which: str = "last") -> Path:
    return experiment_paths(exp_dir, exp_name).checkpoint_file(which)


def against_folder(exp_dir: str, against: str) -> ExperimentPaths:
    """--against's experiment: a name in --exp-dir (``smnist``), or a folder as compare takes it
    (``experiments/smnist``, anything with a path separator)."""
    if os.sep in against or "/" in against:
        paths = ExperimentPaths(Path(against))
        if not paths.checkpoint.is_file():
            raise RnnMnistError(f"--against {against}: no experiment there (no {paths.checkpoint})")
        return paths
    return experiment_paths(exp_dir, against)


def is_classifier_experiment(exp_dir: str, exp_name: str) -> bool:
    """Whether the experiment was trained with ``--task classify``."""
    return _is_classifier(_checkpoint_path(exp_dir, exp_name))


def _is_classifier(path: Path) -> bool:
    return load_checkpoint(path)["model_config"].get("kind") == CLASSIFIER_KIND


def load_classifier(path: Path, device: torch.device) -> tuple[SequenceClassifier, dict[str, Any]]:
    """Rebuild a sequence classifier (its reading order included) from its checkpoint alone."""
    checkpoint = load_checkpoint(path)
    if checkpoint["model_config"].get("kind") != CLASSIFIER_KIND:
        raise RnnMnistError(f"{path} holds no {CLASSIFIER_KIND}: train one with train.py --task classify")
    model = rebuild_model(
        path, checkpoint, lambda config: SequenceClassifier(ClassifierConfig.from_dict(config))
    )
    return model.to(device).eval(), checkpoint


def classifier_test_inputs(
    checkpoint: dict[str, Any], data_dir: str | None, limit: int | None, experiment: Path | None = None
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The test digits as the classifier (of the ``experiment`` folder) was trained to read them:
    floats (N, 784) in [0, 1], their labels, and how they are presented."""
    data_cfg = checkpoint_data_config(checkpoint.get("data_config", {}), data_dir, experiment)
    binarized = bool(checkpoint.get("config", {}).get("binarized_input"))
    pixels, labels = load_test_digits(data_cfg, grey=not binarized)
    x = pixels[:limit].float() if binarized else pixels[:limit].float() / 255
    labels = require_labels(labels, "scoring a classifier")
    return x, labels[:limit], classifier_inputs_name(data_cfg, binarized)


@torch.no_grad()
def classifier_reading(
    model: SequenceClassifier, images: torch.Tensor, batch_size: int, show_progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's predictions (N,) on whole images (N, 784) floats, and its predictions
    (N, 784) after 1..784 pixels read (its head on the state then)."""
    device = next(model.parameters()).device
    final, every = [], []
    for start in progress(range(0, len(images), batch_size), "reading", unit="batch", enabled=show_progress):
        x = images[start : start + batch_size].to(device)
        final.append(model(x).argmax(dim=1).cpu())
        every.append(model.logits_after_each_pixel(x).argmax(dim=2).cpu())
    return torch.cat(final), torch.cat(every)


@torch.no_grad()
def generative_reading(
    model: torch.nn.Module, pixels: torch.Tensor, batch_size: int, show_progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(class | image) (N, classes) of a label-conditioned next-pixel model on binarised
    images (N, 784), and its most probable class (N, 784) after 1..784 pixels, all from the same
    ten teacher-forced passes (a uniform prior over classes)."""
    posteriors, every = [], []
    for start in progress(range(0, len(pixels), batch_size), "reading", unit="batch", enabled=show_progress):
        terms = class_log_likelihoods(model, pixels[start : start + batch_size], batch_size, per_pixel=True)
        log_likelihood = terms.sum(dim=2)  # (B, classes)
        posteriors.append(log_likelihood - log_likelihood.logsumexp(dim=1, keepdim=True))
        every.append(terms.cumsum(dim=2).argmax(dim=1))  # (B, 784): argmax of the posterior after t
    return torch.cat(posteriors), torch.cat(every)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """Counts (classes, classes): row = true class, column = predicted class."""
    return torch.bincount(labels * classes + predictions, minlength=classes * classes).view(classes, classes)


def accuracy_by_pixels(labels: torch.Tensor, every: torch.Tensor) -> list[float]:
    """Accuracy after 1..784 pixels read, from predictions (N, 784)."""
    return (every == labels[:, None]).double().mean(dim=0).tolist()


def _curve_summary(curve: list[float]) -> dict[str, Any]:
    final = curve[-1]
    reached = [t + 1 for t, a in enumerate(curve) if a >= 0.99 * final]
    return {
        "accuracy_by_pixels_read": curve,  # entry t-1: after t pixels
        "accuracy_after_rows": {str(r): curve[r * IMAGE_SIDE - 1] for r in range(1, IMAGE_SIDE + 1)},
        "pixels_to_99_percent_of_final_accuracy": reached[0] if reached else None,
    }


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def confusion_png(matrix: torch.Tensor, title: str) -> bytes:
    figure = _figure(5.6, 5)
    axes = figure.subplots()
    counts = matrix.numpy()
    axes.imshow(np.log1p(counts), cmap="Blues")
    for (row, col), count in np.ndenumerate(counts):
        if count:
            colour = "white" if count > counts.max() / 2 else "black"
            axes.text(col, row, str(count), ha="center", va="center", fontsize=7, color=colour)
    axes.set(xlabel="predicted class", ylabel="true class", title=title, xticks=range(10), yticks=range(10))
    figure.tight_layout()
    return _png(figure)


def misread_png(
    images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor, indices: torch.Tensor
) -> bytes:
    """Up to MISREAD_SHOWN misread digits (grey), each titled with its test index, true and read class."""
    n = min(len(images), MISREAD_SHOWN)
    columns = max(1, min(10, n))
    rows = max(1, -(-n // columns))
    figure = _figure(1.2 * columns, 1.35 * rows)
    for i in range(n):
        axes = figure.add_subplot(rows, columns, i + 1)
        axes.imshow(images[i].view(IMAGE_SIDE, IMAGE_SIDE).numpy(), cmap="gray", vmin=0, vmax=1)
        axes.set_title(f"#{int(indices[i])}: {int(labels[i])}->{int(predicted[i])}", fontsize=7)
        axes.axis("off")
    if n == 0:
        figure.text(0.5, 0.5, "no digit misread", ha="center")
    figure.tight_layout()
    return _png(figure)


def curves_png(curves: dict[str, list[float]]) -> bytes:
    figure = _figure(7.5, 4.5)
    axes = figure.subplots()
    for label, curve in curves.items():
        axes.plot(
            range(1, len(curve) + 1), curve, label=f"{label}: {curve[-1]:.4f} after all 784", linewidth=1.4
        )
    for row in range(0, NUM_PIXELS + 1, 7 * IMAGE_SIDE):
        axes.axvline(row, color="grey", alpha=0.2)
    axes.set(
        xlabel="pixels read",
        ylabel="test accuracy",
        title="accuracy by pixels read",
        xlim=(0, NUM_PIXELS),
        ylim=(0, 1),
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return _png(figure)


def _write(out_dir: Path, files: dict[str, bytes], metrics: dict[str, Any]) -> None:
    """The figures, then metrics.json, into the fresh folder that will replace the output folder."""
    for name, content in files.items():
        atomic_write(out_dir / name, lambda f, content=content: f.write(content))
    text = json.dumps(metrics, indent=2)
    atomic_write(out_dir / "metrics.json", lambda f: f.write(text.encode()))


def _describe(checkpoint: dict[str, Any], name: str, which: str) -> dict[str, Any]:
    return {
        "experiment": name,
        "checkpoint": which,  # last or best (--checkpoint)
        "checkpoint_epoch": checkpoint["epoch"],
        "checkpoint_sha256": weights_sha256(checkpoint["model_state"]),
    }


def _classifier_curve(
    options: EvalOptions, paths: ExperimentPaths, device: torch.device, show_progress: bool
):
    """A classify experiment read on its own test digits: the model, its checkpoint, the inputs, the
    labels, the predictions on whole images and after each pixel, and how the inputs are presented."""
    path = paths.checkpoint_file(options.checkpoint)
    model, checkpoint = load_classifier(path, device)
    images, labels, inputs = classifier_test_inputs(
        checkpoint, options.data_dir, options.test_digits, path.parent
    )
    final, every = classifier_reading(model, images, options.batch_size, show_progress)
    return model, checkpoint, images, labels, final, every, inputs


@dataclass
class _Reading:
    """What reading the test digits gave: the metrics so far, the accuracy curves to draw (the
    model's own first), the images (N, 784) floats, their labels (N,) and the predictions (N,)."""

    metrics: dict[str, Any]
    curves: dict[str, list[float]]
    images: torch.Tensor
    labels: torch.Tensor
    final: torch.Tensor


def read_digits(options: EvalOptions, show_progress: bool = True) -> dict[str, Any]:
    """evaluate.py on a classify experiment, or with ``--classify`` on a label-conditioned one."""
    path = _checkpoint_path(options.exp_dir, options.exp_name, options.checkpoint)
    classifier = _check_reading(options)
    out_dir = output_folder(options)
    device = resolve_device(options.device)
    with OutputFolder(out_dir) as outputs:  # a second evaluation into it stops here
        metrics, files = _read_and_draw(options, classifier, path, device, show_progress)
        _write(outputs.staging, files, metrics)
        outputs.keep_log(metrics)
        outputs.swap_in()
    metrics["out_dir"] = str(out_dir)
    return metrics


def _read_and_draw(
    options: EvalOptions, classifier: bool, path: Path, device: torch.device, show_progress: bool
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The reading's metrics, and its figures by file name."""
    compute = configure_cpu_math()
    started = time.perf_counter()
    if classifier:
        reading = _read_as_classifier(options, device, show_progress)
    else:
        reading = _read_generatively(options, path, device, show_progress)
    seconds = time.perf_counter() - started
    labels, final, metrics = reading.labels, reading.final, reading.metrics
    matrix = confusion_matrix(labels, final)
    wrong = torch.nonzero(final != labels).flatten()
    own_curve = next(iter(reading.curves.values()))
    metrics.update(
        {
            "num_digits": len(labels),
            "test_accuracy": float((final == labels).double().mean()),
            "confusion_matrix": matrix.tolist(),  # rows: true class, columns: predicted class
            "misread": [{"index": int(i), "label": int(labels[i]), "read_as": int(final[i])} for i in wrong],
            **_curve_summary(own_curve),
            "seconds": seconds,
            "device": str(device),
            "compute": compute,
            "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    title = f"{options.exp_name}: accuracy {metrics['test_accuracy']:.4f} on {len(labels):,} test digits"
    files = {
        "confusion.png": confusion_png(matrix, title),
        "misread.png": misread_png(reading.images[wrong], labels[wrong], final[wrong], wrong),
        "accuracy-by-pixels.png": curves_png(reading.curves),
    }
    return metrics, files


def _check_reading(options: EvalOptions) -> bool:
    """Refuse --classify and --against where they mean nothing; return whether the experiment is a
    classifier (``--task classify``)."""
    classifier = is_classifier_experiment(options.exp_dir, options.exp_name)
    if classifier and options.classify:
        raise RnnMnistError(
            f"{options.exp_name} is a classifier already (--task classify): drop --classify, which reads a "
            "label-conditioned next-pixel model as one"
        )
    if not classifier and not options.classify:
        raise RnnMnistError(
            f"{options.exp_name} is a next-pixel model: pass --classify to read it as a classifier"
        )
    if options.against is not None and not options.classify:
        raise RnnMnistError("--against adds a classifier's curve to --classify's: give --classify too")
    return classifier


def _read_as_classifier(options: EvalOptions, device: torch.device, show_progress: bool) -> _Reading:
    """A classify experiment read on its own test digits, in its own reading order."""
    model, checkpoint, images, labels, final, every, inputs = _classifier_curve(
        options, ExperimentPaths.of(options.exp_dir, options.exp_name), device, show_progress
    )
    metrics: dict[str, Any] = {
        **_describe(checkpoint, options.exp_name, options.checkpoint),
        "evaluation": "classifier",
    }
    metrics["inputs"] = inputs
    metrics["permuted"] = model.config.permutation_seed is not None
    metrics["readout"] = model.config.readout
    curves = {f"{options.exp_name} (classifier, its reading order)": accuracy_by_pixels(labels, every)}
    return _Reading(metrics, curves, images, labels, final)


def _read_generatively(
    options: EvalOptions, path: Path, device: torch.device, show_progress: bool
) -> _Reading:
    """A label-conditioned next-pixel model read by Bayes' rule (and --against's classifier beside it)."""
    model, checkpoint = load_model(path, device)
    if model.config.num_classes == 0:
        raise RnnMnistError(
            f"--classify reads p(class | image) from a label-conditioned model; {options.exp_name} was "
            "trained without --condition label"
        )
    # Checked before the ten passes, not after them.
    against = None if options.against is None else against_folder(options.exp_dir, options.against)
    if against is not None and not _is_classifier(against.checkpoint):
        raise RnnMnistError(
            f"--against {options.against} is not a classify experiment (train.py --task classify)"
        )
    pixels, labels = load_test_digits(
        checkpoint_data_config(checkpoint.get("data_config", {}), options.data_dir, path.parent)
    )
    labels = require_labels(labels, "reading a model as a classifier")
    pixels, labels = pixels[: options.test_digits], labels[: options.test_digits]
    log_posterior, every = generative_reading(model, pixels, options.batch_size, show_progress)
    metrics = {
        **_describe(checkpoint, options.exp_name, options.checkpoint),
        "evaluation": "generative classifier",
    }
    metrics["inputs"] = "binarised pixels, as in training"
    metrics["mean_log_posterior_of_true_class"] = float(log_posterior.gather(1, labels[:, None]).mean())
    curves = {f"{options.exp_name} (generative, Bayes' rule)": accuracy_by_pixels(labels, every)}
    if against is not None:
        other = metrics["against"] = _against(options, against, labels, device, show_progress)
        curves[f"{other['experiment']} (classifier, its reading order)"] = other["accuracy_by_pixels_read"]
    return _Reading(metrics, curves, pixels.float(), labels, log_posterior.argmax(dim=1))


def _against(
    options: EvalOptions,
    paths: ExperimentPaths,
    labels: torch.Tensor,
    device: torch.device,
    show_progress: bool,
) -> dict[str, Any]:
    """--against's classify experiment read on the same test digits: its accuracy and its curve."""
    _, other, _, other_labels, other_final, other_every, _ = _classifier_curve(
        options, paths, device, show_progress
    )
    if not torch.equal(other_labels, labels):
        raise RnnMnistError(f"--against {options.against} reads other test digits than {options.exp_name}")
    return {
        **_describe(other, paths.root.resolve().name, options.checkpoint),
        "test_accuracy": float((other_final == labels).double().mean()),
        **_curve_summary(accuracy_by_pixels(labels, other_every)),
    }


def reading_summary(metrics: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    curve = metrics["accuracy_by_pixels_read"]
    lines = [
        f"{metrics['experiment']} as a {metrics['evaluation']}: test accuracy "
        f"{metrics['test_accuracy']:.4f} on {metrics['num_digits']:,} digits "
        f"({len(metrics['misread'])} misread), {metrics['seconds']:.1f} s",
        "accuracy after 196 / 392 / 588 / 784 pixels: "
        + " / ".join(f"{curve[t - 1]:.3f}" for t in (196, 392, 588, 784)),
    ]
    if "against" in metrics:
        other = metrics["against"]
        lines.append(
            f"against {other['experiment']}: test accuracy {other['test_accuracy']:.4f}; "
            "after 196 / 392 / 588 / 784 pixels: "
            + " / ".join(f"{other['accuracy_by_pixels_read'][t - 1]:.3f}" for t in (196, 392, 588, 784))
        )
    lines.append(
        f"wrote {metrics['out_dir']}/ (metrics.json, confusion.png, misread.png, accuracy-by-pixels.png)"
    )
    return "\n".join(lines)
