"""Complete masked test digits with a trained model and measure the completions.

    options = EvalOptions(exp_name="gru-128")
    metrics = evaluate_experiment(options)   # writes GIFs, completions.png/.npz, metrics.json

The model and the binarisation of the test digits come from the checkpoint alone. The outputs are
written into a fresh folder that then replaces the output folder whole (rnn_mnist/output_folder.py),
under a lock: they are all of one evaluation, and its evaluations.jsonl keeps a line for every
evaluation into it. GIFs are written for at most --gifs digits (16), the metrics are of every digit.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnn_mnist import steps, visualise
from rnn_mnist.checkpoint import (
    ExperimentPaths,
    atomic_write,
    check_writable_folder,
    experiment_paths,
    json_bytes,
    load_checkpoint,
    rebuild_model,
    weights_sha256,
)
from rnn_mnist.config import EvalOptions
from rnn_mnist.data import (
    IMAGE_SIDE,
    NUM_PIXELS,
    DataConfig,
    binarization_name,
    checkpoint_data_config,
    load_test_digits,
    require_labels,
)
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.judge import DigitJudge, implausible_judge, load_judge
from rnn_mnist.likelihood import TEACHER_FORCED_BATCH, teacher_forced_nll
from rnn_mnist.masks import parse_mask, suffix_mask
from rnn_mnist.memory import MemoryNeed, check_fits, evaluation_need
from rnn_mnist.models import ModelConfig, NextPixelModel
from rnn_mnist.output_folder import OutputFolder, check_replaceable
from rnn_mnist.progress import progress
from rnn_mnist.rollout import (
    BEST_BY,
    INPAINTS,
    Completion,
    complete,
    most_likely,
    most_recognisable,
)
from rnn_mnist.runtime import configure_cpu_math, resolve_device
from rnn_mnist.scoring import completion_metrics, judge_completions

# Draws scored together when reading the label back (likelihood.label_log_posterior's batch).
LABEL_POSTERIOR_ROWS = 500


def load_model(path: Path, device: torch.device) -> tuple[NextPixelModel, dict[str, Any]]:
    """Rebuild the model from a checkpoint's own config and weights."""
    checkpoint = load_checkpoint(path)
    kind = checkpoint["model_config"].get("kind")  # other models' checkpoints say what they hold
    if kind is not None:
        raise RnnMnistError(f"{path} holds a {kind}, not a next-pixel model")
    model = rebuild_model(path, checkpoint, lambda config: NextPixelModel(ModelConfig.from_dict(config)))
    return model.to(device).eval(), checkpoint


def default_out_dir(options: EvalOptions) -> Path:
    """plots/<exp-name>; a --classify reading goes beside the completions, not over them."""
    return Path("plots") / (options.exp_name + ("-classify" if options.classify else ""))


def output_folder(options: EvalOptions) -> Path:
    """Where the outputs go, checked before any work: writable, not an experiment's folder (whose
    metrics.json, the training history, the evaluation's would replace), nor a folder holding other
    files than evaluate.py's (an evaluation replaces its whole folder: rnn_mnist/output_folder.py)."""
    out_dir = Path(options.out_dir or default_out_dir(options))
    if ExperimentPaths(out_dir).exists():
        raise RnnMnistError(
            f"--out-dir {out_dir} is an experiment folder: the evaluation would overwrite its training "
            f"metrics.json. Choose another --out-dir (unset: {default_out_dir(options)})"
        )
    check_writable_folder(out_dir, "--out-dir")
    check_replaceable(out_dir, "--out-dir")
    if options.out_dir is None:
        _check_not_another_experiments(out_dir, options.exp_name)
    return out_dir


def _check_not_another_experiments(out_dir: Path, exp_name: str) -> None:
    """The default folders of two experiments can be one (plots/a-classify: experiment a read with
    --classify, or experiment a-classify's completions): never replace the other's evaluation."""
    try:
        described = json.loads((out_dir / "metrics.json").read_text()).get("experiment")
    except (OSError, ValueError, AttributeError):  # none there, or not ours: check_replaceable decided
        return
    if isinstance(described, str) and described != exp_name:
        raise RnnMnistError(
            f"{out_dir} holds an evaluation of experiment {described}, not {exp_name}: give --out-dir"
        )


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


def digits_sha256(targets: torch.Tensor, labels: torch.Tensor) -> str:
    """A fingerprint of the evaluated digits (N, 784) in {0, 1} and their labels (N,): two evaluations
    completed the same digits, binarised the same way, exactly when theirs are equal."""
    digest = hashlib.sha256(targets.to(torch.uint8).contiguous().numpy().tobytes())
    digest.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def gif_digits(digits: int, cap: int) -> list[int]:
    """Which of ``digits`` completed digits get GIFs: at most ``cap``, spread evenly over them (so that
    a --per-class grid's GIFs cover the classes), first and last included."""
    if cap >= digits:
        return list(range(digits))
    # Steps of (digits - 1) / (cap - 1) >= 1: rounding keeps them distinct.
    return [round(i * (digits - 1) / max(cap - 1, 1)) for i in range(cap)]


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


@dataclass
class _Prepared:
    """An evaluation ready to roll out, every refusal behind it: the model, the chosen test digits
    (N, 784) and their labels, the hidden pixels (784,) bool, where the outputs go."""

    out_dir: Path
    device: torch.device
    compute: dict[str, Any]
    model: NextPixelModel
    checkpoint: dict[str, Any]
    judge: DigitJudge | None
    judge_info: dict[str, Any] | None
    data_config: DataConfig
    mask_spec: str
    hidden: torch.Tensor
    chosen: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor

    @property
    def conditioned(self) -> bool:
        """Whether the model is told each digit's class."""
        return self.model.config.num_classes > 0


@dataclass
class _Rollout:
    """The completions (N, K, 784) and what the rollout measured of itself."""

    completed: torch.Tensor
    seconds: float
    ess_sum: float  # in-painting: effective sample size, digit-weighted
    resamples: int  # in-painting: resampling events


def evaluate_experiment(options: EvalOptions, show_progress: bool = True) -> dict[str, Any]:
    """Complete the chosen test digits, write the pictures and arrays, return the metrics."""
    prepared = _prepare(options)
    batching = _Batching.of(options)
    _check_memory(prepared, options, batching)
    with OutputFolder(prepared.out_dir) as outputs:  # a second evaluation into it stops here
        rollout = _roll_out(prepared, options, batching, show_progress)
        metrics = _measure(prepared, options, rollout, show_progress)
        _write_outputs(prepared, options, outputs.staging, rollout.completed, metrics, show_progress)
        outputs.keep_log(metrics)
        outputs.swap_in()
    metrics["out_dir"] = str(prepared.out_dir)
    return metrics


def _prepare(options: EvalOptions) -> _Prepared:
    """Check the options, load the model, the judge and the test digits to complete."""
    if not 1 <= options.mask_pixels <= NUM_PIXELS:
        raise RnnMnistError(f"--mask-pixels must be in 1..{NUM_PIXELS}, not {options.mask_pixels}")
    mask_spec = options.mask or f"suffix:{options.mask_pixels}"
    hidden = parse_mask(options.mask, options.seed) if options.mask else suffix_mask(options.mask_pixels)
    check_inpainting(options)
    path = experiment_paths(options.exp_dir, options.exp_name).checkpoint_file(options.checkpoint)
    out_dir = output_folder(options)
    device = resolve_device(options.device)
    compute = configure_cpu_math()
    model, checkpoint = load_model(path, device)
    # The judge is loaded before any rollout work: a bad judge file fails in a second, not after it.
    judge, judge_info = load_judge(options.judge_path) if options.judge else (None, None)
    data_config = checkpoint_data_config(checkpoint.get("data_config", {}), options.data_dir, path.parent)
    test_pixels, test_labels = load_test_digits(data_config)  # binarised as in training
    # The digits are chosen, named, fingerprinted and judged by their class: a larochelle set whose
    # labels are unknown is refused here rather than scored against made-up ones.
    test_labels = require_labels(test_labels, "evaluate.py (it picks, names and judges digits by class)")
    chosen = choose_indices(
        test_labels, options.indices, options.num_digits, options.digit, options.seed, options.per_class
    )
    prepared = _Prepared(
        out_dir, device, compute, model, checkpoint, judge, judge_info, data_config,
        mask_spec, hidden, chosen, test_pixels[chosen], test_labels[chosen],
    )  # fmt: skip
    _check_best_by(options, prepared.conditioned)
    return prepared


def _check_best_by(options: EvalOptions, conditioned: bool) -> None:
    if options.best_by not in BEST_BY:
        raise RnnMnistError(f"--best-by must be one of {', '.join(BEST_BY)}, not {options.best_by!r}")
    if options.best_by == "label-posterior" and not conditioned:
        raise RnnMnistError(
            f"--best-by label-posterior needs a label-conditioned model; {options.exp_name} was trained "
            "without --condition label"
        )


@dataclass(frozen=True)
class _Batching:
    """How the rollout is cut: in-painting by SMC or blind, draws per digit, digits per batch."""

    smc: bool
    draws: int
    digits_per_batch: int

    @classmethod
    def of(cls, options: EvalOptions) -> _Batching:
        smc = options.inpaint != "blind"
        draws = options.particles if smc else options.best_of or options.samples
        # SMC steps K particles per digit: batch_size / K digits at a time keeps a batch's rows (and
        # its arrays, which must stay in cache to step fast) the size of a blind batch.
        digits_per_batch = max(1, options.batch_size // options.particles) if smc else options.batch_size
        return cls(smc, draws, digits_per_batch)

    @property
    def piece(self) -> int:
        """Reading the label back costs ten teacher-forced passes per draw: pieces of at most 500 draws."""
        return max(1, LABEL_POSTERIOR_ROWS // self.draws)

    def starts(self, digits: int) -> range:
        return range(0, digits, self.digits_per_batch)


def _check_memory(prepared: _Prepared, options: EvalOptions, batching: _Batching) -> None:
    """Refuse a rollout that would not fit, before it starts: an allocation that does not fit wakes
    the OOM killer."""
    draws = batching.draws

    def need_at(batch_size: int) -> MemoryNeed:
        return evaluation_need(
            prepared.model.config,
            digits=len(prepared.chosen),
            draws=draws,
            kept=1 if batching.smc else options.samples,
            batch_size=batch_size,
            mask_pixels=int(prepared.hidden.sum()),
            device=prepared.device,
            judge=options.judge,
            gifs=options.gifs and options.max_gifs > 0,
            label_posterior=options.best_by == "label-posterior",
        )

    check_fits(
        need_at,
        batching.digits_per_batch,
        f"completing {len(prepared.chosen):,} digits x {draws:,} {'draws' if options.best_of else 'samples'}",
        "ask for fewer completions (--num-digits, --per-class, --samples or --best-of)",
    )


def _roll_out(
    prepared: _Prepared, options: EvalOptions, batching: _Batching, show_progress: bool
) -> _Rollout:
    """Complete the chosen digits batch by batch (keeping one draw of each when --best-of asks)."""
    model, targets, labels, hidden = prepared.model, prepared.targets, prepared.labels, prepared.hidden
    generator = torch.Generator(device=prepared.device).manual_seed(options.seed)
    by_label = options.best_of is not None and options.best_by == "label-posterior"
    stepping, scoring = _rollout_bars(prepared, batching, by_label, show_progress)
    chunks = []
    ess_sum, resamples = 0.0, 0
    started = time.perf_counter()
    with stepping, scoring:
        for start in batching.starts(len(prepared.chosen)):
            batch = slice(start, start + batching.digits_per_batch)
            result = complete(
                model,
                targets[batch],
                sampling=options.sampling,
                samples=batching.draws,
                temperature=options.temperature,
                generator=generator,
                labels=labels[batch] if prepared.conditioned else None,
                precision=options.precision,
                hidden=hidden,
                inpaint=options.inpaint,
                on_step=stepping.update,
            )
            ess_sum += result.mean_ess * len(result.completed)
            resamples += result.resamples
            if by_label:
                result = _most_recognisable_in_pieces(
                    model, result, labels[batch], batching.piece, scoring.update
                )
            elif options.best_of:
                result = most_likely(result)
            chunks.append(result.completed)
    if prepared.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return _Rollout(torch.cat(chunks), seconds, ess_sum, resamples)


def _rollout_bars(
    prepared: _Prepared, batching: _Batching, by_label: bool, show_progress: bool
) -> tuple[Any, Any]:
    """The rollout's progress bars: pixel steps, and (--best-by label-posterior) label read-backs."""
    digits, draws, piece = len(prepared.chosen), batching.draws, batching.piece
    starts = batching.starts(digits)
    # Progress per pixel step, not per batch: one batch of 1,000 digits x 8 draws takes minutes.
    stepping = progress(
        total=len(starts) * int(prepared.hidden.sum()),
        desc=f"completing {digits:,} digits x {draws}",
        unit="px",
        enabled=show_progress,
    )
    scoring = progress(
        total=sum(-(-min(batching.digits_per_batch, digits - start) // piece) for start in starts),
        desc="reading the labels back",
        unit="batch",
        enabled=show_progress and by_label,
    )
    return stepping, scoring


def _masked_nll(prepared: _Prepared, options: EvalOptions, show_progress: bool) -> torch.Tensor:
    """Teacher-forced NLL (N,) of each digit's hidden pixels given all its earlier true pixels, at
    most TEACHER_FORCED_BATCH digits a pass whatever --batch-size (12 GB at 10,000 on torch ops)."""
    size = min(options.batch_size, TEACHER_FORCED_BATCH)
    targets, labels = prepared.targets, prepared.labels
    return torch.cat(
        [
            teacher_forced_nll(
                prepared.model,
                targets[i : i + size],
                labels[i : i + size] if prepared.conditioned else None,
                prepared.hidden,
                size,
            )
            for i in progress(
                range(0, len(prepared.chosen), size), "masked NLL", unit="batch", enabled=show_progress
            )
        ]
    )


def _measure(
    prepared: _Prepared, options: EvalOptions, rollout: _Rollout, show_progress: bool
) -> dict[str, Any]:
    """The evaluation's metrics: what was asked, the masked NLL and accuracy, the rollout's speed,
    and the judge's class agreement."""
    nll = _masked_nll(prepared, options, show_progress)
    checkpoint, hidden, digits = prepared.checkpoint, prepared.hidden, len(prepared.chosen)
    seconds = rollout.seconds
    metrics = {
        "experiment": options.exp_name,
        "checkpoint": options.checkpoint,  # last or best (--checkpoint)
        "checkpoint_epoch": checkpoint["epoch"],
        # Which weights these numbers describe: compare shows them only beside the same checkpoint.
        "checkpoint_sha256": weights_sha256(checkpoint["model_state"]),
        "mask": prepared.mask_spec,
        "mask_pixels": int(hidden.sum()),
        "inpaint": options.inpaint,
        "particles": options.particles,
        "sampling": options.sampling,
        "temperature": options.temperature,
        "samples": options.samples,
        "best_of": options.best_of,
        "best_by": options.best_by if options.best_of else None,
        "seed": options.seed,
        "num_digits": digits,
        # Which digits: compare warns when experiments were evaluated on different ones.
        "binarization": binarization_name(prepared.data_config.binarize, prepared.data_config.threshold),
        "digits_sha256": digits_sha256(prepared.targets, prepared.labels),
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "conditioned_on_label": prepared.conditioned,
        **completion_metrics(rollout.completed, prepared.targets, prepared.labels, nll, hidden),
        # In-painting: the mean effective sample size when particles were weighed (K when nothing
        # visible follows the hole), and how many times a digit's particles were resampled.
        **(
            {"mean_effective_sample_size": rollout.ess_sum / digits, "resampling_events": rollout.resamples}
            if options.inpaint != "blind"
            else {}
        ),
        "rollout_seconds": seconds,
        "digits_per_second": digits / seconds,
        "completions_per_second": digits * options.samples / seconds,
        "device": str(prepared.device),
        "precision": options.precision,
        "rollout_step": steps.describe_step(prepared.model, prepared.device),
        "compute": prepared.compute,
    }
    if prepared.judge is not None:
        _add_judgement(metrics, prepared, rollout.completed)
    return metrics


def _add_judgement(metrics: dict[str, Any], prepared: _Prepared, completed: torch.Tensor) -> None:
    """The judge's class agreement, overall and per class, and which judge gave it."""
    judged = judge_completions(prepared.judge, completed, prepared.targets, prepared.labels, prepared.hidden)
    for digit, values in judged.pop("per_class").items():
        metrics["per_class"][digit].update(values)
    metrics.update(judged)
    if prepared.conditioned and prepared.hidden.all():  # drawn from nothing but the label
        metrics["target_accuracy"] = metrics["class_agreement"]
    # Measured once when the judge was made, on the 10,000 test digits binarised this way.
    data_config, judge_info = prepared.data_config, prepared.judge_info
    binarization = binarization_name(data_config.binarize, data_config.threshold)
    metrics["judge_test_accuracy"] = judge_info["test_accuracy"].get(binarization)
    metrics["judge"] = {
        "path": judge_info["path"],
        "sha256": judge_info["sha256"],
        "test_accuracy": judge_info["test_accuracy"],
    }
    digits = len(prepared.labels)
    warning = implausible_judge(
        judge_info, metrics["judge_test_accuracy"], metrics["class_agreement_ground_truth"], digits
    )
    if warning is not None:
        metrics["judge_warning"] = warning


def _write_outputs(
    prepared: _Prepared,
    options: EvalOptions,
    out_dir: Path,
    completed: torch.Tensor,
    metrics: dict[str, Any],
    show_progress: bool,
) -> None:
    """completions.npz and .png, a GIF per completion of at most --gifs digits, and metrics.json last,
    into ``out_dir``: the fresh folder that replaces the output folder once they are all written."""
    targets, labels, chosen, hidden = prepared.targets, prepared.labels, prepared.chosen, prepared.hidden
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
    drawn = gif_digits(n, options.max_gifs if options.gifs else 0)
    metrics["gif_digits"] = len(drawn)
    for i in progress(drawn, "GIFs", unit="digit", enabled=show_progress and bool(drawn)):
        for sample in range(k):
            name = f"{labels[i]}-{chosen[i]}" + (f"-{sample}" if k > 1 else "") + ".gif"
            frames = visualise.triptych_frames(
                completed[i, sample].numpy(), targets[i].numpy(), int(labels[i]), hidden.numpy()
            )
            visualise.save_gif(out_dir / name, frames)
    atomic_write(out_dir / "metrics.json", lambda f: f.write(json_bytes(metrics)))


def _pixel_lines(metrics: dict[str, Any], blank: bool) -> list[str]:
    """The masked pixel accuracy and NLL; from a ``blank`` canvas the drawn digits complete no test
    digit, so pixel accuracy against the chosen ones (and agreement with their labels, unconditioned)
    means nothing: say so, and where to find what does."""
    if not blank:
        return [
            f"masked pixel accuracy {metrics['masked_pixel_accuracy']:.4f}, "
            f"masked NLL {metrics['masked_nll_nats']:.2f} nats (teacher forced)"
        ]
    return [
        f"NLL of the {metrics['num_digits']} test digits {metrics['masked_nll_nats']:.2f} nats (teacher "
        "forced; `python -m rnn_mnist.nll` gives it in bits/dim too, with its standard error)",
        "drawn from a blank canvas: pixel accuracy against test digits means nothing here "
        "(`python -m rnn_mnist.sample` draws digits and prints what does)",
    ]


def summary(metrics: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = [
        f"{metrics['num_digits']} digits x {metrics['samples']} ({metrics['sampling']}"
        + (f", best of {metrics['best_of']} by {metrics['best_by']}" if metrics["best_of"] else "")
        + "), "
        f"mask {metrics['mask']} ({metrics['mask_pixels']} px), on {metrics['device']}: "
        f"{metrics['rollout_seconds']:.2f} s ({metrics['digits_per_second']:,.0f} digits/s)",
    ]
    blank = metrics["mask_pixels"] == NUM_PIXELS
    lines += _pixel_lines(metrics, blank)
    if "class_agreement" in metrics:
        tested = metrics["judge_test_accuracy"]
        judge = f"judge {metrics['judge']['sha256'][:12]}, " + (
            f"test accuracy {tested:.4f}" if tested is not None else "not tested on this binarisation"
        )
        lines.append(
            f"digits read by {judge}"
            if blank
            else f"class agreement ({judge}): "
            f"completions {metrics['class_agreement']:.3f}, "
            f"visible pixels only {metrics['class_agreement_prefix_only']:.3f}, "
            f"ground truth {metrics['class_agreement_ground_truth']:.3f}"
        )
    if "judge_warning" in metrics:
        lines.append(f"warning: {metrics['judge_warning']}")
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
    if len(per_class) > 1 and not blank:
        lines.append(
            "masked pixel accuracy by class: "
            + " ".join(f"{d}:{v['masked_pixel_accuracy']:.3f}" for d, v in sorted(per_class.items()))
        )
    lines.append(f"wrote {metrics['out_dir']}/" + _gifs_written(metrics))
    return "\n".join(lines)


def _gifs_written(metrics: dict[str, Any]) -> str:
    """Says when GIFs were drawn for only some of the digits (--gifs N), so none is looked for in vain."""
    drawn, digits = metrics.get("gif_digits", 0), metrics["num_digits"]
    return f" (GIFs of {drawn} of the {digits:,} digits: --gifs N for more)" if 0 < drawn < digits else ""
