"""Compare experiments side by side: NLL curves and a Markdown table.

    python -m rnn_mnist.compare experiments/gru-32 experiments/gru-64 experiments/gru-128 --name hidden

writes plots/compare-hidden.png (test NLL against epoch and against training time, one line per
experiment, labelled by what differs between them) and plots/compare-hidden.md (the table, also
printed). Each experiment's metrics.pkl is read with a restricted unpickler that admits plain
Python values only, so a foreign .pkl cannot run code; evaluate.py's metrics.json in
<eval-dir>/<exp-name>/ (default plots/) adds masked pixel accuracy and class agreement where it exists.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import pickle
import sys
from itertools import accumulate
from pathlib import Path
from typing import Any

from rnn_mnist.checkpoint import atomic_write
from rnn_mnist.cli import DefaultsHelpFormatter, run_cli
from rnn_mnist.errors import RnnMnistError

# Flags that say where or how a run was launched, not what was trained.
NOT_A_DIFFERENCE = {"exp_name", "exp_dir", "data_dir", "device", "resume", "overwrite", "epochs"}


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
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise RnnMnistError(f"{path} is not a plain metrics pickle ({exc})") from None


def load_experiment(folder: Path, eval_dir: Path) -> dict[str, Any]:
    metrics = load_plain_pickle(folder / "metrics.pkl")
    if not isinstance(metrics, dict) or not {"config", "history"} <= set(metrics):
        raise RnnMnistError(f"{folder / 'metrics.pkl'} is not an rnn-mnist metrics file")
    name = metrics["config"].get("exp_name", folder.name)
    evaluation = eval_dir / name / "metrics.json"
    metrics["name"] = name
    metrics["evaluation"] = json.loads(evaluation.read_text()) if evaluation.is_file() else None
    return metrics


def differences(experiments: list[dict[str, Any]]) -> list[str]:
    """A label per experiment naming the flags whose values differ between them."""
    configs = [e["config"] for e in experiments]
    # Flags that only some experiments record come from a different version of train.py: skip them.
    keys = sorted(set.intersection(*(set(c) for c in configs)) - NOT_A_DIFFERENCE)
    varying = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    if not varying:
        return [e["name"] for e in experiments]
    return [", ".join(f"{k}={c.get(k)}" for k in varying) for c in configs]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def table(experiments: list[dict[str, Any]]) -> str:
    header = (
        "| experiment | cell | hidden | layers | parameters | epochs | training time | best val NLL "
        "| test NLL (nats) | test bits/px | masked px acc | class agreement |"
    )
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in experiments:
        model, history, evaluation = e["model_config"], e["history"], e["evaluation"] or {}
        vals = [h["val_nll_nats"] for h in history if h.get("val_nll_nats") is not None]
        last = history[-1] if history else {}
        minutes = sum(h["seconds"] for h in history) / 60
        cells = [
            e["name"], model["cell"], model["hidden_size"], model["num_layers"], f"{e['num_parameters']:,}",
            len(history), f"{minutes:.1f} min", _fmt(min(vals, default=None)),
            _fmt(last.get("test_nll_nats")), _fmt(last.get("test_bits_per_pixel"), 4),
            _fmt(evaluation.get("masked_pixel_accuracy"), 4), _fmt(evaluation.get("class_agreement"), 3),
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def plot(experiments: list[dict[str, Any]], labels: list[str]) -> bytes:
    """PNG bytes: test NLL against epoch and against cumulative training time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for experiment, label in zip(experiments, labels, strict=True):
        history = experiment["history"]
        epochs = [h["epoch"] for h in history]
        nll = [h["test_nll_nats"] for h in history]
        minutes = list(accumulate(h["seconds"] / 60 for h in history))
        by_epoch.plot(epochs, nll, marker="o", label=label)
        by_time.plot(minutes, nll, marker="o", label=label)
    by_epoch.set(xlabel="epoch", ylabel="test NLL (nats per digit)", title="test NLL by epoch")
    by_time.set(xlabel="training time (minutes)", title="test NLL by wall time")
    for axes in (by_epoch, by_time):
        axes.grid(alpha=0.3)
    handles, names = by_epoch.get_legend_handles_labels()
    figure.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.05 + 0.04 * math.ceil(len(names) / 4), 1, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def compare(folders: list[Path], name: str, out_dir: Path, eval_dir: Path = Path("plots")) -> str:
    """Write compare-<name>.png and .md into out_dir; return the table. evaluate.py's metrics are
    read from eval_dir/<exp-name>/metrics.json."""
    experiments = [load_experiment(folder, eval_dir) for folder in folders]
    markdown = table(experiments)
    png = plot(experiments, differences(experiments))
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / f"compare-{name}.png", lambda f: f.write(png))
    atomic_write(out_dir / f"compare-{name}.md", lambda f: f.write((markdown + "\n").encode()))
    return markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rnn_mnist.compare",
        description="Compare experiments: an NLL plot and a Markdown table.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("exp_dirs", nargs="+", type=Path, help="experiment folders (experiments/<name>)")
    parser.add_argument("--name", required=True, help="names the outputs compare-<name>.png/.md")
    parser.add_argument("--out-dir", type=Path, default=Path("plots"), help="where outputs go")
    parser.add_argument(
        "--eval-dir", type=Path, default=Path("plots"), help="where evaluate.py wrote <exp-name>/metrics.json"
    )
    args = parser.parse_args(argv)

    def run() -> None:
        print(compare(args.exp_dirs, args.name, args.out_dir, args.eval_dir))
        print(f"\nwrote {args.out_dir}/compare-{args.name}.png and .md")

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
