"""Compare experiments side by side: training curves, NLL curves and a Markdown table.

    python -m rnn_mnist.compare experiments/gru-32 experiments/gru-64 experiments/gru-128 --name hidden

writes plots/compare-hidden.png (the per-batch training loss against digits seen, smoothed, and the
test NLL against epoch and against training time; one line per experiment, labelled by its name and
the flags that differ) and plots/compare-hidden.md (the table, also printed). Each experiment is
named by its folder. Its metrics.pkl is read with a restricted unpickler that admits plain Python
values only, so a foreign .pkl cannot run code, and is checked for the shape train.py writes; a
folder without one (a shipped model in pretrained/) is read from its metrics.json, with no per-batch
losses. evaluate.py's metrics.json in <eval-dir>/<name>/ (default plots/) adds the digits evaluated,
masked pixel accuracy and class agreement beside its floor (the visible pixels alone: what a blank
completion scores) and ceiling (the true digits), and <eval-dir>/<name>-classify/ the --classify
reading's accuracy, when they describe the experiment's current checkpoint (same epoch and weights).
That is the folder's latest evaluation; the table says how many of that checkpoint its
evaluations.jsonl keeps, and a line under it when an earlier one evaluated more digits. Experiments
evaluated on different digits (or masks, settings, judges) are warned about.
Classify experiments (train.py --task classify) get their own table, of accuracy rather than NLL;
their curves are drawn only when every experiment compared is one (the losses do not compare).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import pickle
import re
import sys
import textwrap
from itertools import accumulate
from pathlib import Path
from typing import Any

from rnn_mnist.checkpoint import atomic_write, load_checkpoint, weights_sha256
from rnn_mnist.cli import DefaultsHelpFormatter, ShortErrorParser, run_cli
from rnn_mnist.data import binarization_name, is_benchmark
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.output_folder import read_log

# Flags that say where or how a run was launched, not what was trained.
NOT_A_DIFFERENCE = {
    "exp_name",
    "exp_dir",
    "data_dir",
    "device",
    "resume",
    "overwrite",
    "epochs",
    "tensorboard",
}
# What names the outputs compare-<name>.png/.md: a plain file name, never a path.
OUTPUT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# A legend label longer than this wraps (the flags that differ between runs can be many).
LEGEND_LABEL_CHARS = 70
# How an evaluation completed its digits: experiments evaluated differently get a warning.
EVALUATION_SETTINGS = (
    "mask", "inpaint", "particles", "sampling", "temperature", "samples", "best_of", "best_by",
)  # fmt: skip
# Per-epoch entries train.py has always written, and what they hold.
HISTORY_NUMBERS = ("epoch", "seconds", "test_nll_nats", "test_bits_per_pixel")
CLASSIFY_HISTORY_NUMBERS = ("epoch", "seconds", "test_accuracy", "test_loss")


class PlainUnpickler(pickle.Unpickler):
    """Admits only what pickle encodes without naming a class: dicts, lists, tuples, str, numbers."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: metrics hold plain values only")


def load_plain_pickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return PlainUnpickler(f).load()
    except FileNotFoundError:
        raise RnnMnistError(f"no metrics at {path}; is it an experiment folder made by train.py?") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise RnnMnistError(f"{path} is not a plain metrics pickle ({exc})") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_classify(metrics: dict[str, Any]) -> bool:
    """Whether the experiment was trained with ``--task classify``."""
    config = metrics.get("config")
    return isinstance(config, dict) and config.get("task") == "classify"


def shape_problem(metrics: Any) -> str | None:
    """What makes ``metrics`` other than what train.py writes, or None."""
    if not isinstance(metrics, dict):
        return f"it holds a {type(metrics).__name__}, not a dict"
    for key, kind in (("config", dict), ("model_config", dict), ("history", list)):
        if not isinstance(metrics.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__}"
    if not isinstance(metrics.get("num_parameters"), int):
        return "'num_parameters' is missing or not a whole number"
    if not isinstance(metrics.get("data_config", {}), dict):
        return "'data_config' is not a dict"
    model = metrics["model_config"]
    if not (isinstance(model.get("cell"), str) and _is_number(model.get("hidden_size"))):
        return "'model_config' has no cell and hidden_size"
    numbers = CLASSIFY_HISTORY_NUMBERS if is_classify(metrics) else HISTORY_NUMBERS
    for i, entry in enumerate(metrics["history"], start=1):
        if not isinstance(entry, dict):
            return f"history entry {i} is not a dict"
        for key in numbers:
            if not _is_number(entry.get(key)):
                return f"history entry {i} has no number {key!r}"
        for key in ("val_nll_nats", "val_accuracy"):
            if entry.get(key) is not None and not _is_number(entry[key]):
                return f"history entry {i} has a {key!r} that is not a number"
        losses = entry.get("batch_losses", [])
        if not isinstance(losses, list) or not all(_is_number(v) for v in losses):
            return f"history entry {i} has 'batch_losses' that are not a list of numbers"
    return None


def current_checkpoint(folder: Path) -> tuple[int, str] | None:
    """The epoch and weights hash of the experiment's checkpoint, or None if it has no readable one."""
    try:
        checkpoint = load_checkpoint(folder / "checkpoint.ckpt")
        return checkpoint["epoch"], weights_sha256(checkpoint["model_state"])
    except (RnnMnistError, TypeError, AttributeError):
        return None


def matching_evaluation(folder: Path, path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """evaluate.py's metrics at ``path`` if they describe ``folder``'s current checkpoint, else
    None and, when there was an evaluation to show, why it is not shown."""
    if not path.is_file():
        return None, None
    try:
        evaluation = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"{path} is not readable JSON ({exc}): not shown"
    if not isinstance(evaluation, dict):
        return None, f"{path} is not an evaluation: not shown"
    current = current_checkpoint(folder)
    if current is None:
        return None, f"{path} not shown: {folder} has no readable checkpoint to match it with"
    described = evaluation.get("checkpoint_epoch"), evaluation.get("checkpoint_sha256")
    if described != current:
        sha = described[1][:12] if isinstance(described[1], str) else "unrecorded"
        return None, (
            f"{path} describes another checkpoint (epoch {described[0]}, weights {sha}) than "
            f"{folder}'s (epoch {current[0]}, weights {current[1][:12]}): not shown; run evaluate.py again"
        )
    return evaluation, None


def load_experiment(folder: Path, eval_dir: Path, notes: list[str] | None = None) -> dict[str, Any]:
    """An experiment's metrics, named by its folder, with its matching evaluation (or None).

    Reasons for leaving an evaluation out are appended to ``notes``.
    """
    folder = Path(folder)
    if not folder.exists():
        raise RnnMnistError(f"no experiment folder {folder}")
    if not folder.is_dir():
        raise RnnMnistError(f"{folder} is a file; give experiment folders (experiments/<name>)")
    metrics, source = load_metrics(folder)
    problem = shape_problem(metrics)
    if problem:
        raise RnnMnistError(f"{source} is not an rnn-mnist metrics file: {problem}")
    # The folder names the experiment: a copied or renamed one keeps its saved config's exp_name.
    name = folder.resolve().name
    metrics["name"] = name
    metrics["evaluation"], note = matching_evaluation(folder, eval_dir / name / "metrics.json")
    metrics["logged"] = _logged_of_checkpoint(eval_dir / name, metrics["evaluation"])
    # evaluate.py --classify reads a next-pixel model as a classifier into a folder of its own.
    reading, reading_note = (None, None)
    if not is_classify(metrics):
        reading, reading_note = matching_reading(folder, eval_dir / f"{name}-classify" / "metrics.json")
    metrics["reading"] = reading
    if notes is not None:
        notes += [n for n in (note, reading_note) if n]
    return metrics


def _logged_of_checkpoint(folder: Path, evaluation: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The evaluations ``folder``'s log keeps of the checkpoint ``evaluation`` describes (none shown:
    none), oldest first; the last is the one shown."""
    if evaluation is None:
        return []
    checkpoint = evaluation.get("checkpoint_epoch"), evaluation.get("checkpoint_sha256")
    return [
        e for e in read_log(folder) if (e.get("checkpoint_epoch"), e.get("checkpoint_sha256")) == checkpoint
    ]


def load_metrics(folder: Path) -> tuple[Any, Path]:
    """An experiment folder's training metrics and the file they came from: metrics.pkl (it holds the
    per-batch losses too), else metrics.json, which a shipped model's folder (pretrained/) holds alone."""
    pickled, readable = folder / "metrics.pkl", folder / "metrics.json"
    if not pickled.exists() and readable.is_file():
        try:
            metrics = json.loads(readable.read_text())  # plain values only: nothing in JSON runs code
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise RnnMnistError(f"{readable} is not readable JSON ({exc})") from None
        return _nulls_as_nan(metrics), readable
    if not pickled.exists():
        raise RnnMnistError(
            f"no metrics in {folder} (metrics.pkl or metrics.json); is it an experiment folder made by "
            "train.py?"
        )
    return load_plain_pickle(pickled), pickled


def _nulls_as_nan(metrics: Any) -> Any:
    """metrics.json writes a NaN or infinity as null (strict JSON): read the history's numbers back
    as NaN, as metrics.pkl holds them."""
    history = metrics.get("history") if isinstance(metrics, dict) else None
    for entry in history if isinstance(history, list) else []:
        for key in {*HISTORY_NUMBERS, *CLASSIFY_HISTORY_NUMBERS} if isinstance(entry, dict) else ():
            if key in entry and entry[key] is None:
                entry[key] = math.nan
    return metrics


def matching_reading(folder: Path, path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """evaluate.py --classify's reading at ``path`` if it describes ``folder``'s current checkpoint.
    A folder of that name holding anything else (another experiment's evaluation) is passed over."""
    try:
        kind = json.loads(path.read_text()).get("evaluation")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None, None
    return matching_evaluation(folder, path) if kind == "generative classifier" else (None, None)


def differences(experiments: list[dict[str, Any]]) -> list[str]:
    """Per experiment, the flags whose values differ between them ("" when none do)."""
    configs = [e["config"] for e in experiments]
    # Flags that only some experiments record come from a different version of train.py: skip them.
    keys = sorted(set.intersection(*(set(c) for c in configs)) - NOT_A_DIFFERENCE)
    varying = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    return [", ".join(f"{k}={c.get(k)}" for k in varying) for c in configs]


def line_labels(experiments: list[dict[str, Any]]) -> list[str]:
    """The experiment's name, then what differs: ``gru-64 (hidden_size=64)``."""
    return [
        f"{e['name']} ({diff})" if diff else e["name"]
        for e, diff in zip(experiments, differences(experiments), strict=True)
    ]


def binarization(experiment: dict[str, Any]) -> str:
    """How the experiment's digits were binarised (its NLLs are of that data set)."""
    threshold = _data_config(experiment).get("threshold", 0.1)
    return binarization_name(_binarize(experiment), threshold if _is_number(threshold) else 0.1)


def _data_config(experiment: dict[str, Any]) -> dict[str, Any]:
    return experiment.get("data_config") or experiment["config"]


def _binarize(experiment: dict[str, Any]) -> str:
    """The experiment's --binarize method."""
    return str(_data_config(experiment).get("binarize", "threshold"))


def _test_nll_cell(experiment: dict[str, Any], last: dict[str, Any]) -> str:
    """The last test NLL, ± its standard error over the digits where the test set is the benchmark's
    or a Bernoulli draw standing in for it (histories written before the error was recorded: none)."""
    nll, error = _fmt(last.get("test_nll_nats")), last.get("test_nll_se")
    if _is_number(error) and is_benchmark(_binarize(experiment)):
        return f"{nll} ± {error:.2f}"
    return nll


def binarization_warning(experiments: list[dict[str, Any]]) -> str | None:
    kinds = {e["name"]: binarization(e) for e in experiments}
    if len(set(kinds.values())) < 2:
        return None
    listed = ", ".join(f"{name}: {kind}" for name, kind in kinds.items())
    return f"these experiments binarise the digits differently ({listed}): their NLLs do not compare"


def _digits_evaluated(evaluation: dict[str, Any]) -> str:
    """Which digits an evaluation completed, in words."""
    sha = evaluation.get("digits_sha256")
    return (
        f"{evaluation.get('num_digits', '?')} digits, seed {evaluation.get('seed', '?')}, "
        f"{evaluation.get('binarization', 'binarisation unrecorded')}, "
        + (f"digits {sha[:12]}" if isinstance(sha, str) else "digits unrecorded")
    )


def evaluation_warnings(experiments: list[dict[str, Any]]) -> list[str]:
    """Why the evaluations shown do not compare: different test digits (by the fingerprint of the
    digits evaluated; an evaluation that recorded none cannot be told the same), different masks or
    completion settings, class agreement by different judges."""
    shown = {e["name"]: e["evaluation"] for e in experiments if e.get("evaluation")}
    if len(shown) < 2:
        return []
    warnings = []
    fingerprints = {name: e.get("digits_sha256") for name, e in shown.items()}
    if len(set(fingerprints.values())) > 1 or None in fingerprints.values():
        listed = "; ".join(f"{name}: {_digits_evaluated(e)}" for name, e in shown.items())
        warnings.append(
            f"these evaluations completed different test digits, or did not record which ({listed}): "
            "their figures do not compare; evaluate them with the same --num-digits, --seed, --indices"
        )
    differing = [k for k in EVALUATION_SETTINGS if len({repr(e.get(k)) for e in shown.values()}) > 1]
    if differing:
        listed = "; ".join(
            f"{name}: " + ", ".join(f"{k}={e.get(k)}" for k in differing) for name, e in shown.items()
        )
        warnings.append(f"these evaluations completed the digits differently ({listed})")
    judges = {name: e["judge"].get("sha256") for name, e in shown.items() if isinstance(e.get("judge"), dict)}
    if len(set(judges.values())) > 1:
        listed = ", ".join(f"{name}: {str(sha)[:12]}" for name, sha in judges.items())
        warnings.append(f"different judges gave the class agreements ({listed}): they do not compare")
    return warnings


def evaluation_notes(experiments: list[dict[str, Any]], eval_dir: Path) -> list[str]:
    """Lines under the table: which evaluation it shows, and any earlier one of more digits."""
    shown = [e for e in experiments if e.get("evaluation")]
    if not shown:
        return []
    notes = [
        "Evaluation columns: each experiment's latest evaluation of its current checkpoint "
        f"({eval_dir}/<name>/metrics.json; every evaluation is kept in {eval_dir}/<name>/evaluations.jsonl). "
        "Floor: the judge's class agreement on the visible pixels alone (what a blank completion "
        "scores); ceiling: on the true digits."
    ]
    for e in shown:
        latest = e["evaluation"].get("num_digits")
        if not _is_number(latest):
            continue
        larger = [x for x in e["logged"][:-1] if _is_number(x.get("num_digits")) and x["num_digits"] > latest]
        if larger:
            most = max(larger, key=lambda x: x["num_digits"])
            notes.append(
                f"{e['name']}: an earlier evaluation of this checkpoint completed {most['num_digits']:,} "
                f"digits ({most.get('evaluated_at', 'undated')}); the table shows the latest, of {latest:,}"
            )
    return notes


def _fmt(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if _is_number(value) and not math.isnan(value) else "-"


def table(experiments: list[dict[str, Any]]) -> str:
    """The Markdown tables: next-pixel experiments by NLL, classify experiments by accuracy."""
    generative = [e for e in experiments if not is_classify(e)]
    classifiers = [e for e in experiments if is_classify(e)]
    tables = ([nll_table(generative)] if generative else []) + (
        [accuracy_table(classifiers)] if classifiers else []
    )
    return "\n\n".join(tables)


def accuracy_table(experiments: list[dict[str, Any]]) -> str:
    """Classify experiments: test accuracy (last epoch), best validation accuracy, and evaluate.py's."""
    header = (
        "| classifier | cell | hidden | layers | readout | pixels | parameters | epochs | training time "
        "| best val acc | test acc | test loss |"
    )
    lines = [header, "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for e in experiments:
        model, history, config = e["model_config"], e["history"], e["config"]
        vals = [h["val_accuracy"] for h in history if h.get("val_accuracy") is not None]
        last = history[-1] if history else {}
        minutes = sum(h["seconds"] for h in history) / 60
        pixels = ("permuted" if config.get("permute") else "in order") + (
            ", binarised" if config.get("binarized_input") else ", grey"
        )
        cells = [
            e["name"], model["cell"], model["hidden_size"], model.get("num_layers", "-"),
            model.get("readout", "-"), pixels, f"{e['num_parameters']:,}", len(history),
            f"{minutes:.1f} min", _fmt(max(vals, default=None), 4), _fmt(last.get("test_accuracy"), 4),
            _fmt(last.get("test_loss"), 4),
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def nll_table(experiments: list[dict[str, Any]]) -> str:
    """Next-pixel experiments: NLLs, evaluate.py's completion figures and, when any was read with
    --classify, that reading's test accuracy."""
    readings = any(e.get("reading") for e in experiments)
    header = (
        "| experiment | cell | hidden | layers | parameters | epochs | training time | best val NLL "
        "| test NLL (nats) | test bits/dim | eval digits | masked px acc | class agreement "
        "| floor | ceiling |"
    ) + (" --classify acc |" if readings else "")
    rule = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + (
        "---:|" if readings else ""
    )
    lines = [header, rule]
    for e in experiments:
        model, history, evaluation = e["model_config"], e["history"], e["evaluation"] or {}
        vals = [h["val_nll_nats"] for h in history if h.get("val_nll_nats") is not None]
        last = history[-1] if history else {}
        minutes = sum(h["seconds"] for h in history) / 60
        cells = [
            e["name"], model["cell"], model["hidden_size"], model.get("num_layers", "-"),
            f"{e['num_parameters']:,}", len(history), f"{minutes:.1f} min", _fmt(min(vals, default=None)),
            _test_nll_cell(e, last), _fmt(last.get("test_bits_per_pixel"), 4),
            _evaluated(evaluation, len(e.get("logged", []))),
            _fmt(evaluation.get("masked_pixel_accuracy"), 4), _fmt(evaluation.get("class_agreement"), 3),
            _fmt(evaluation.get("class_agreement_prefix_only"), 3),
            _fmt(evaluation.get("class_agreement_ground_truth"), 3),
        ]  # fmt: skip
        if readings:
            cells.append(_fmt((e.get("reading") or {}).get("test_accuracy"), 4))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _evaluated(evaluation: dict[str, Any], logged: int) -> str:
    """The digits the evaluation shown completed, and of how many of the checkpoint it is the latest."""
    digits = evaluation.get("num_digits")
    if not _is_number(digits):
        return "-"
    return f"{digits:,}" + (f" (latest of {logged})" if logged > 1 else "")


def batch_curve(experiment: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Training digits seen after each batch and that batch's loss, over the whole run."""
    seen, losses, total = [], [], 0
    batch_size = experiment["config"].get("batch_size")
    batch_size = batch_size if isinstance(batch_size, int) and batch_size > 0 else 128
    for entry in experiment["history"]:
        batch_losses = entry.get("batch_losses", [])
        # Digits in the epoch: its rate times its time (the last batch may be short).
        rate, seconds = entry.get("train_sequences_per_second"), entry.get("train_seconds")
        counted = rate * seconds if _is_number(rate) and _is_number(seconds) else math.nan
        epoch_digits = round(counted) if math.isfinite(counted) else len(batch_losses) * batch_size
        for j, loss in enumerate(batch_losses):
            seen.append(total + min((j + 1) * batch_size, epoch_digits))
            losses.append(loss)
        total += epoch_digits
    return seen, losses


def smooth(values: list[float]) -> list[float]:
    """A trailing mean over a window of about 2.5% of the curve: noise out, trend kept."""
    window = max(1, min(200, len(values) // 40))
    sums = [0.0, *accumulate(values)]
    return [(sums[i] - sums[max(0, i - window)]) / min(i, window) for i in range(1, len(values) + 1)]


def draw(experiments: list[dict[str, Any]], labels: list[str], warning: str | None = None):
    """A matplotlib Figure of three panels: the training loss by digits seen (smoothed), and the
    test NLL by epoch and by cumulative training time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classify = all(is_classify(e) for e in experiments)
    figure = Figure(figsize=(15, 4.4))
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, 3, gridspec_kw={"width_ratios": [1.25, 1, 1]})
    loss_range, last_epoch, last_minute = _plot_runs(panels, experiments, labels, classify)
    _label_panels(panels, classify, loss_range, last_epoch, last_minute, warning)
    _legend_below(figure, *panels[0].get_legend_handles_labels())
    return figure


def _legend_below(figure: Any, handles: list[Any], names: list[str]) -> None:
    """The legend under the panels, inside the picture however many flags differ: long labels wrap,
    as many columns as fit the width (3 at most), and the figure grows by the legend's height."""
    wrapped = [textwrap.fill(name, LEGEND_LABEL_CHARS, subsequent_indent="  ") for name in names]
    renderer = figure.canvas.get_renderer()
    for columns in range(max(1, min(len(names), 3)), 0, -1):
        legend = figure.legend(handles, wrapped, loc="lower center", ncol=columns, fontsize=8, frameon=False)
        if columns == 1 or legend.get_window_extent(renderer).width <= 0.98 * figure.bbox.width:
            break
        legend.remove()
    panels_height = figure.get_figheight()
    legend_height = legend.get_window_extent(renderer).height / figure.dpi + 0.15  # inches, with a margin
    figure.set_figheight(panels_height + legend_height)
    figure.tight_layout(rect=(0, legend_height / (panels_height + legend_height), 1, 1))


def _plot_runs(
    panels: Any, experiments: list[dict[str, Any]], labels: list[str], classify: bool
) -> tuple[list[float], float, float]:
    """Each run's curves on the three panels, the last values in words; returns the smoothed losses
    after the first steep 5% of the longest run, and the last epoch and minute of any run."""
    by_digits, by_epoch, by_time = panels
    metric = "test_accuracy" if classify else "test_nll_nats"
    last_epoch = last_minute = 0.0
    curves = [batch_curve(experiment) for experiment in experiments]
    longest = max((seen[-1] for seen, _ in curves if seen), default=0)
    loss_range: list[float] = []  # where the curves are after the first steep 5% of the longest run
    for experiment, label, (seen, losses) in zip(experiments, labels, curves, strict=True):
        history = experiment["history"]
        smoothed = smooth(losses)
        (line,) = by_digits.plot([s / 1000 for s in seen], smoothed, linewidth=1.4, label=label)
        loss_range += [v for s, v in zip(seen, smoothed, strict=True) if s >= 0.05 * longest]
        colour = line.get_color()
        epochs = [h["epoch"] for h in history]
        nll = [h[metric] for h in history]
        minutes = list(accumulate(h["seconds"] / 60 for h in history))
        by_epoch.plot(epochs, nll, marker="o", color=colour)
        by_time.plot(minutes, nll, marker="o", color=colour)
        if history:  # the last value in words: a one-epoch run is a single point
            for axes, x in ((by_epoch, epochs[-1]), (by_time, minutes[-1])):
                axes.annotate(
                    f"{nll[-1]:.4f}" if classify else f"{nll[-1]:.1f}", (x, nll[-1]),
                    textcoords="offset points", xytext=(5, 3),
                    fontsize=8, color=colour,
                )  # fmt: skip
            last_epoch, last_minute = max(last_epoch, epochs[-1]), max(last_minute, minutes[-1])
    return loss_range, last_epoch, last_minute


def _label_panels(
    panels: Any,
    classify: bool,
    loss_range: list[float],
    last_epoch: float,
    last_minute: float,
    warning: str | None,
) -> None:
    """Titles, axis labels and ranges of the three panels."""
    from matplotlib.ticker import MaxNLocator

    by_digits, by_epoch, by_time = panels
    metric_name = "test accuracy" if classify else "test NLL"
    by_digits.set(
        xlabel="training digits seen (thousands)",
        ylabel="training cross-entropy (smoothed)" if classify else "training loss per pixel (smoothed)",
        title="training loss by batch",
    )
    ylabel = "test accuracy" if classify else "test NLL (nats per digit)"
    by_epoch.set(xlabel="epoch", ylabel=ylabel, title=f"{metric_name} by epoch")
    by_time.set(xlabel="training time (minutes)", title=f"{metric_name} by wall time")
    # From zero, so that one-epoch runs sit on a readable axis rather than a squashed 0.96..1.04.
    by_epoch.set_xlim(0, last_epoch + 0.6)
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_time.set_xlim(0, last_minute * 1.15 + 1e-9)
    by_time.sharey(by_epoch)
    by_digits.set_xlim(left=0)
    finite = [v for v in loss_range if math.isfinite(v)]
    if finite and max(finite) > min(finite):  # the first drop is off the top: the rest is what differs
        low, high = min(finite), max(finite)
        by_digits.set_ylim(low - 0.05 * (high - low), high + 0.1 * (high - low))
    for axes in (by_digits, by_epoch, by_time):
        axes.grid(alpha=0.3)
    if warning:
        for axes in (by_epoch, by_time):
            axes.set_title(axes.get_title() + "\n(binarisations differ: not comparable)", color="firebrick")


def plot(experiments: list[dict[str, Any]], labels: list[str], warning: str | None = None) -> bytes:
    """PNG bytes of ``draw``."""
    buffer = io.BytesIO()
    draw(experiments, labels, warning).savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def compare(folders: list[Path], name: str, out_dir: Path, eval_dir: Path = Path("plots")) -> str:
    """Write compare-<name>.png and .md into out_dir; return the table. evaluate.py's metrics are
    read from eval_dir/<folder name>/metrics.json."""
    if not OUTPUT_NAME.fullmatch(name):
        raise RnnMnistError(
            f"--name {name!r} must be up to 100 letters, digits, '.', '_' or '-' (starting with a letter "
            "or digit): it names files in --out-dir"
        )
    notes: list[str] = []
    experiments = [load_experiment(Path(folder), Path(eval_dir), notes) for folder in folders]
    for note in notes:
        warn(note)
    # Grey classifiers read no binarisation: only the next-pixel experiments' NLLs can disagree.
    generative = [e for e in experiments if not is_classify(e)]
    warning = binarization_warning(generative)
    if warning:
        warn(warning)
    unlike = evaluation_warnings(generative)
    for line in unlike:
        warn(line)
    below = evaluation_notes(generative, Path(eval_dir)) + [f"Warning: {line}." for line in unlike]
    markdown = table(experiments) + "".join(f"\n\n{line}" for line in below)
    drawn = [e for e in experiments if not is_classify(e)] or experiments
    if len(drawn) < len(experiments):
        warn("classify experiments are in their own table but not in the picture (their losses are not NLLs)")
    png = plot(drawn, line_labels(drawn), warning)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / f"compare-{name}.png", lambda f: f.write(png))
        text = markdown + (f"\n\nWarning: {warning}." if warning else "") + "\n"
        atomic_write(out_dir / f"compare-{name}.md", lambda f: f.write(text.encode()))
    except OSError as exc:
        raise RnnMnistError(f"cannot write into --out-dir {out_dir}: {exc.strerror or exc}") from None
    return markdown


def build_parser() -> argparse.ArgumentParser:
    parser = ShortErrorParser(
        prog="python -m rnn_mnist.compare",
        description="Compare experiments: training and NLL curves and a Markdown table.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("exp_dirs", nargs="+", type=Path, help="experiment folders (experiments/<name>)")
    parser.add_argument("--name", required=True, help="names the outputs compare-<name>.png/.md")
    parser.add_argument("--out-dir", type=Path, default=Path("plots"), help="where outputs go")
    parser.add_argument(
        "--eval-dir", type=Path, default=Path("plots"), help="where evaluate.py wrote <exp-name>/metrics.json"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> None:
        print(compare(args.exp_dirs, args.name, args.out_dir, args.eval_dir))
        print(f"\nwrote {args.out_dir}/compare-{args.name}.png and .md")

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
