"""Complete masked test digits with a trained model and measure the completions.

    options = EvalOptions(exp_name="gru-128")
    metrics = evaluate_experiment(options)   # writes GIFs, completions.png/.npz, metrics.json

The model and the binarisation of the test digits come from the checkpoint alone.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnn_mnist import native, visualise
from rnn_mnist.checkpoint import (
    ExperimentPaths,
    atomic_write,
    check_writable_folder,
    json_bytes,
    load_checkpoint,
    rebuild_model,
    weights_sha256,
)
from rnn_mnist.compute import configure_cpu_math
from rnn_mnist.config import EvalOptions
from rnn_mnist.data import (
    DATA_ENV_VAR,
    IMAGE_SIDE,
    NUM_PIXELS,
    DataConfig,
    binarization_name,
    load_test_digits,
)
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.judge import DigitJudge, classify, load_judge
from rnn_mnist.masks import parse_mask, suffix_mask
from rnn_mnist.memory import MemoryNeed, check_fits, evaluation_need
from rnn_mnist.models import ModelConfig, NextPixelModel
from rnn_mnist.progress import progress
from rnn_mnist.rollout import (
    BEST_BY,
    INPAINTS,
    TEACHER_FORCED_BATCH,
    Completion,
    complete,
    most_likely,
    most_recognisable,
    teacher_forced_nll,
)
from rnn_mnist.training import resolve_device

# Draws scored together when reading the label back (rollout.label_log_posterior's batch).
LABEL_POSTERIOR_ROWS = 500


def load_model(path: Path, device: torch.device) -> tuple[NextPixelModel, dict[str, Any]]:
    """Rebuild the model from a checkpoint's own config and weights."""
    checkpoint = load_checkpoint(path)
    kind = checkpoint["model_config"].get("kind")  # other models' checkpoints say what they hold
    if kind is not None:
        raise RnnMnistError(f"{path} holds a {kind}, not a next-pixel model")
    model = rebuild_model(path, checkpoint, lambda config: NextPixelModel(ModelConfig.from_dict(config)))
    return model.to(device).eval(), checkpoint


def output_folder(options: EvalOptions) -> Path:
    """Where the outputs go, checked before any work: writable, and not an experiment's folder,
    whose metrics.json (the training history) the evaluation's metrics.json would replace."""
    out_dir = Path(options.out_dir or Path("plots") / options.exp_name)
    if ExperimentPaths(out_dir).exists():
        raise RnnMnistError(
            f"--out-dir {out_dir} is an experiment folder: the evaluation would overwrite its training "
            f"metrics.json. Choose another --out-dir (unset: plots/{options.exp_name})"
        )
    check_writable_folder(out_dir, "--out-dir")
    return out_dir


def choose_indices(
    labels: torch.Tensor,
    indices: tuple[int, ...] | None,
    num_digits: int,
    digit: int | None,
    seed: int,
    per_class: int | None = None,
) -> torch.Tensor:
    """Test-set indices to complete: the given ones, or a seeded random choice (of one class, or
    ``per_class`` of every class, ordered by class)."""
    if indices is not None:
        bad = [i for i in indices if not 0 <= i < len(labels)]
        if bad:
            raise RnnMnistError(f"--indices {bad[0]} is outside the test set (0..{len(labels) - 1})")
        chosen = torch.tensor(indices, dtype=torch.long)
        if digit is not None and (labels[chosen] != digit).any():
            raise RnnMnistError(f"not every index given to --indices is a {digit}")
        return chosen
    if per_class is not None:
        return torch.cat([choose_indices(labels, None, per_class, d, seed + d) for d in range(10)])
    candidates = torch.arange(len(labels)) if digit is None else torch.nonzero(labels == digit).flatten()
    if num_digits > len(candidates):
        what = "test digits" if digit is None else f"test digits of class {digit}"
        raise RnnMnistError(f"{num_digits} digits asked for, but there are only {len(candidates)} {what}")
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))
    return candidates[order[:num_digits]].sort().values


def completion_metrics(
    completed: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor,
    nll: torch.Tensor,
    hidden: torch.Tensor,
) -> dict[str, Any]:
    """Masked pixel accuracy and NLL over the ``hidden`` pixels (784,) bool, overall and per class;
    completed is (N, K, 784)."""
    correct = (completed[:, :, hidden] == targets[:, None, hidden]).float().mean(dim=(1, 2))  # (N,)
    per_class = {
        str(d): {
            "count": int((labels == d).sum()),
            "masked_pixel_accuracy": float(correct[labels == d].mean()),
            "masked_nll_nats": float(nll[labels == d].mean()),
        }
        for d in labels.unique().tolist()
    }
    return {
        "masked_pixel_accuracy": float(correct.mean()),
        "masked_nll_nats": float(nll.mean()),
        "per_class": per_class,
    }


def agreement_metrics(
    predicted: torch.Tensor,
    confidence: torch.Tensor,
    predicted_prefix_only: torch.Tensor,
    predicted_ground_truth: torch.Tensor,
    labels: torch.Tensor,
    from_scratch: bool,
) -> dict[str, Any]:
    """Class agreement of completions (N, K) with the true labels (N,), beside its floor and ceiling.

    The floor is the judge's reading of the visible pixels alone (hidden region blank), the
    ceiling its reading of the true digit: what the completion adds lies between the two.
    ``from_scratch``: everything was hidden, so also report which classes were drawn.
    """
    agree = (predicted == labels[:, None]).float().mean(dim=1)  # (N,)
    floor = (predicted_prefix_only == labels).float()
    ceiling = (predicted_ground_truth == labels).float()
    metrics: dict[str, Any] = {
        "class_agreement": float(agree.mean()),
        "class_agreement_prefix_only": float(floor.mean()),
        "class_agreement_ground_truth": float(ceiling.mean()),
        "per_class": {
            str(d): {
                "class_agreement": float(agree[labels == d].mean()),
                "class_agreement_prefix_only": float(floor[labels == d].mean()),
                "class_agreement_ground_truth": float(ceiling[labels == d].mean()),
            }
            for d in labels.unique().tolist()
        },
    }
    if from_scratch:  # does it draw every class, confidently?
        metrics["generated_class_histogram"] = torch.bincount(predicted.flatten(), minlength=10).tolist()
        metrics["mean_judge_confidence"] = float(confidence.mean())
    return metrics


def judge_completions(
    judge: DigitJudge,
    completed: torch.Tensor,
    targets: torch.Tensor,
    labels: torch.Tensor,
    hidden: torch.Tensor,
) -> dict[str, Any]:
    n, k = completed.shape[:2]
    probs = classify(judge, completed.reshape(n * k, NUM_PIXELS)).reshape(n, k, 10)
    visible_only = targets.masked_fill(hidden, 0)
    return agreement_metrics(
        probs.argmax(dim=-1),
        probs.max(dim=-1).values,
        classify(judge, visible_only).argmax(dim=1),
        classify(judge, targets).argmax(dim=1),
        labels,
        from_scratch=bool(hidden.all()),
    )


def check_inpainting(options: EvalOptions) -> None:
    """Refuse combinations of --inpaint, --particles, --samples and --best-of that mean nothing."""
    if options.inpaint not in INPAINTS:
        raise RnnMnistError(f"--inpaint must be one of {', '.join(INPAINTS)}, not {options.inpaint!r}")
    if options.inpaint == "blind":
        if options.particles != 1:
            raise RnnMnistError(
                "--particles weighs particles by the pixels after the hole: use it with --inpaint sample or "
                "best (blind filling draws --samples independent completions)"
            )
        return
    if options.samples != 1 or options.best_of:
        raise RnnMnistError(
            f"--inpaint {options.inpaint} keeps one particle per digit: use --particles, "
            "not --samples or --best-of"
        )
    if options.particles > 1 and options.sampling != "bernoulli":
        raise RnnMnistError(
            f"--inpaint {options.inpaint} with {options.particles} particles draws the hole: it needs "
            f"--sampling bernoulli, not {options.sampling} (greedy particles would all be the same)"
        )


def _most_recognisable_in_pieces(
    model: NextPixelModel, result: Completion, labels: torch.Tensor, piece: int, done: Callable[[], object]
) -> Completion:
    """``most_recognisable`` over ``piece`` digits at a time, calling ``done`` after each (progress)."""
    kept = []
    for start in range(0, len(labels), piece):
        part = slice(start, start + piece)
        kept.append(
            most_recognisable(
                model, Completion(result.completed[part], result.probs[part], result.hidden), labels[part]
            )
        )
        done()
    return Completion(
        torch.cat([k.completed for k in kept]), torch.cat([k.probs for k in kept]), result.hidden
    )


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def evaluate_experiment(options: EvalOptions, show_progress: bool = True) -> dict[str, Any]:
    """Complete the chosen test digits, write the pictures and arrays, return the metrics."""
    if not 1 <= options.mask_pixels <= NUM_PIXELS:
        raise RnnMnistError(f"--mask-pixels must be in 1..{NUM_PIXELS}, not {options.mask_pixels}")
    mask_spec = options.mask or f"suffix:{options.mask_pixels}"
    hidden = parse_mask(options.mask, options.seed) if options.mask else suffix_mask(options.mask_pixels)
    check_inpainting(options)
    paths = ExperimentPaths.of(options.exp_dir, options.exp_name)
    if not paths.checkpoint.exists():
        raise RnnMnistError(
            f"no experiment {options.exp_name!r} in {options.exp_dir}/ (no {paths.checkpoint}); "
            "train it first with train.py"
        )
    out_dir = output_folder(options)
    device = resolve_device(options.device)
    compute = configure_cpu_math()
    model, checkpoint = load_model(paths.checkpoint, device)
    # The judge is loaded before any rollout work: a bad judge file fails in a second, not after it.
    judge, judge_info = load_judge(options.judge_path) if options.judge else (None, None)
    saved_data = checkpoint.get("data_config", {})
    data_dir = options.data_dir or os.environ.get(DATA_ENV_VAR) or saved_data.get("data_dir")
    data_config = DataConfig.from_dict({**saved_data, "data_dir": data_dir})
    test_pixels, test_labels = load_test_digits(data_config)  # binarised as in training
    chosen = choose_indices(
        test_labels, options.indices, options.num_digits, options.digit, options.seed, options.per_class
    )
    targets, labels = test_pixels[chosen], test_labels[chosen]
    conditioned = model.config.num_classes > 0  # then the model is told each digit's class
    if options.best_by not in BEST_BY:
        raise RnnMnistError(f"--best-by must be one of {', '.join(BEST_BY)}, not {options.best_by!r}")
    if options.best_by == "label-posterior" and not conditioned:
        raise RnnMnistError(
            f"--best-by label-posterior needs a label-conditioned model; {options.exp_name} was trained "
            "without --condition label"
        )

    smc = options.inpaint != "blind"
    draws = options.particles if smc else options.best_of or options.samples
    # SMC steps K particles per digit: batch_size / K digits at a time keeps a batch's rows (and
    # its arrays, which must stay in cache to step fast) the size of a blind batch.
    digits_per_batch = max(1, options.batch_size // options.particles) if smc else options.batch_size

    def need_at(batch_size: int) -> MemoryNeed:
        return evaluation_need(
            model.config,
            digits=len(chosen),
            draws=draws,
            kept=1 if smc else options.samples,
            batch_size=batch_size,
            mask_pixels=int(hidden.sum()),
            device=device,
            judge=options.judge,
            gifs=options.gifs,
            label_posterior=options.best_by == "label-posterior",
        )

    check_fits(  # before the rollout: an allocation that does not fit wakes the OOM killer
        need_at,
        digits_per_batch,
        f"completing {len(chosen):,} digits x {draws:,} {'draws' if options.best_of else 'samples'}",
        "ask for fewer completions (--num-digits, --per-class, --samples or --best-of)",
    )
    generator = torch.Generator(device=device).manual_seed(options.seed)
    starts = range(0, len(chosen), digits_per_batch)
    by_label = options.best_of is not None and options.best_by == "label-posterior"
    # Progress per pixel step, not per batch: one batch of 1,000 digits x 8 draws takes minutes.
    stepping = progress(
        total=len(starts) * int(hidden.sum()),
        desc=f"completing {len(chosen):,} digits x {draws}",
        unit="px",
        enabled=show_progress,
    )
    # Reading the label back costs ten teacher-forced passes per draw: pieces of at most 500 draws.
    piece = max(1, LABEL_POSTERIOR_ROWS // draws)
    scoring = progress(
        total=sum(-(-min(digits_per_batch, len(chosen) - start) // piece) for start in starts),
        desc="reading the labels back",
        unit="batch",
        enabled=show_progress and by_label,
    )
    chunks = []
    ess_sum, resamples = 0.0, 0  # in-painting: effective sample size (digit-weighted), resamplings
    started = time.perf_counter()
    with stepping, scoring:
        for start in starts:
            batch = slice(start, start + digits_per_batch)
            result = complete(
                model,
                targets[batch],
                sampling=options.sampling,
                samples=draws,
                temperature=options.temperature,
                generator=generator,
                labels=labels[batch] if conditioned else None,
                precision=options.precision,
                hidden=hidden,
                inpaint=options.inpaint,
                on_step=stepping.update,
            )
            ess_sum += result.mean_ess * len(result.completed)
            resamples += result.resamples
            if by_label:
                result = _most_recognisable_in_pieces(model, result, labels[batch], piece, scoring.update)
            elif options.best_of:
                result = most_likely(result)
            chunks.append(result.completed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    completed = torch.cat(chunks)  # (N, K, 784)

    # Teacher-forced NLL of each digit's hidden pixels given all its earlier true pixels, at most
    # TEACHER_FORCED_BATCH digits a pass whatever --batch-size (12 GB at 10,000 on torch ops).
    size = min(options.batch_size, TEACHER_FORCED_BATCH)
    nll = torch.cat(
        [
            teacher_forced_nll(
                model, targets[i : i + size], labels[i : i + size] if conditioned else None, hidden, size
            )
            for i in progress(range(0, len(chosen), size), "masked NLL", unit="batch", enabled=show_progress)
        ]
    )
    metrics = {
        "experiment": options.exp_name,
        "checkpoint_epoch": checkpoint["epoch"],
        # Which weights these numbers describe: compare shows them only beside the same checkpoint.
        "checkpoint_sha256": weights_sha256(checkpoint["model_state"]),
        "mask": mask_spec,
        "mask_pixels": int(hidden.sum()),
        "inpaint": options.inpaint,
        "particles": options.particles,
        "sampling": options.sampling,
        "temperature": options.temperature,
        "samples": options.samples,
        "best_of": options.best_of,
        "best_by": options.best_by if options.best_of else None,
        "seed": options.seed,
        "num_digits": len(chosen),
        "conditioned_on_label": conditioned,
        **completion_metrics(completed, targets, labels, nll, hidden),
        # In-painting: the mean effective sample size when particles were weighed (K when nothing
        # visible follows the hole), and how many times a digit's particles were resampled.
        **(
            {"mean_effective_sample_size": ess_sum / len(chosen), "resampling_events": resamples}
            if smc
            else {}
        ),
        "rollout_seconds": seconds,
        "digits_per_second": len(chosen) / seconds,
        "completions_per_second": len(chosen) * options.samples / seconds,
        "device": str(device),
        "precision": options.precision,
        "rollout_step": native.describe_step(model, device),
        "compute": compute,
    }

    if judge is not None:
        judged = judge_completions(judge, completed, targets, labels, hidden)
        for digit, values in judged.pop("per_class").items():
            metrics["per_class"][digit].update(values)
        metrics.update(judged)
        if conditioned and hidden.all():  # drawn from nothing but the label
            metrics["target_accuracy"] = metrics["class_agreement"]
        # Measured once when the judge was made, on the 10,000 test digits binarised this way.
        binarization = binarization_name(data_config.binarize, data_config.threshold)
        metrics["judge_test_accuracy"] = judge_info["test_accuracy"].get(binarization)
        metrics["judge"] = {
            "path": judge_info["path"],
            "sha256": judge_info["sha256"],
            "test_accuracy": judge_info["test_accuracy"],
        }

    out_dir.mkdir(parents=True, exist_ok=True)
    n, k = completed.shape[:2]
    side = (IMAGE_SIDE, IMAGE_SIDE)
    _save_npz(
        out_dir / "completions.npz",
        completed=completed.reshape(n, k, *side).numpy(),
        targets=targets.reshape(n, *side).numpy(),
        labels=labels.numpy(),
        indices=chosen.numpy(),
        hidden=hidden.reshape(*side).numpy(),
    )
    grid = visualise.completion_grid(completed.numpy(), hidden.numpy(), columns=options.per_class)
    atomic_write(out_dir / "completions.png", lambda f: f.write(visualise.png_bytes(grid)))
    if options.gifs:
        for i in progress(range(n), "GIFs", unit="digit", enabled=show_progress):
            for sample in range(k):
                name = f"{labels[i]}-{chosen[i]}" + (f"-{sample}" if k > 1 else "") + ".gif"
                frames = visualise.triptych_frames(
                    completed[i, sample].numpy(), targets[i].numpy(), int(labels[i]), hidden.numpy()
                )
                visualise.save_gif(out_dir / name, frames)
    atomic_write(out_dir / "metrics.json", lambda f: f.write(json_bytes(metrics)))
    metrics["out_dir"] = str(out_dir)
    return metrics


def summary(metrics: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = [
        f"{metrics['num_digits']} digits x {metrics['samples']} ({metrics['sampling']}"
        + (f", best of {metrics['best_of']} by {metrics['best_by']}" if metrics["best_of"] else "")
        + "), "
        f"mask {metrics['mask']} ({metrics['mask_pixels']} px), on {metrics['device']}: "
        f"{metrics['rollout_seconds']:.2f} s ({metrics['digits_per_second']:,.0f} digits/s)",
        f"masked pixel accuracy {metrics['masked_pixel_accuracy']:.4f}, "
        f"masked NLL {metrics['masked_nll_nats']:.2f} nats (teacher forced)",
    ]
    if "class_agreement" in metrics:
        tested = metrics["judge_test_accuracy"]
        judge = f"judge {metrics['judge']['sha256'][:12]}, " + (
            f"test accuracy {tested:.4f}" if tested is not None else "not tested on this binarisation"
        )
        lines.append(
            f"class agreement ({judge}): "
            f"completions {metrics['class_agreement']:.3f}, "
            f"visible pixels only {metrics['class_agreement_prefix_only']:.3f}, "
            f"ground truth {metrics['class_agreement_ground_truth']:.3f}"
        )
    if "mean_effective_sample_size" in metrics:
        lines.append(
            f"in-painting {metrics['inpaint']} with {metrics['particles']} particles: mean effective sample "
            f"size {metrics['mean_effective_sample_size']:.1f}, {metrics['resampling_events']:,} resamplings"
        )
    if "target_accuracy" in metrics:
        lines.append(f"target accuracy (judged as the requested class): {metrics['target_accuracy']:.3f}")
    if "generated_class_histogram" in metrics:
        lines.append(
            f"judged classes of generated digits: {metrics['generated_class_histogram']}, "
            f"mean confidence {metrics['mean_judge_confidence']:.3f}"
        )
    per_class = metrics["per_class"]
    if len(per_class) > 1:
        lines.append(
            "per class accuracy: "
            + " ".join(f"{d}:{v['masked_pixel_accuracy']:.3f}" for d, v in sorted(per_class.items()))
        )
    lines.append(f"wrote {metrics['out_dir']}/")
    return "\n".join(lines)
