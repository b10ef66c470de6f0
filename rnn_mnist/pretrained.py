"""Ship a trained experiment: its checkpoint without what only a resume needs, and its records.

    python -m rnn_mnist.pretrained experiments/fast-f pretrained/fast \\
        --command "python train.py --exp-name fast --config configs/fast.toml --data-dir ../shared/mnist"

The shipped folder is an experiment folder that evaluate.py reads like any other
(``--exp-dir pretrained --exp-name fast``): ``checkpoint.ckpt`` (the weights, the model, data and
training configs, the per-epoch history without per-batch losses; no optimizer or RNG state, so a
shipped model is evaluated, not resumed), ``metrics.json``, ``train.log`` and ``COMMAND``, the exact
command that trained it. ``--fp16-weights`` stores the weights in float16 (half the bytes) and
records the NLL of every test digit under them, in the checkpoint and in metrics.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from rnn_mnist.checkpoint import (
    SHIPPED_KEY,
    WEIGHTS_HASH_KEY,
    atomic_write,
    json_bytes,
    save_checkpoint,
    weights_sha256,
)
from rnn_mnist.cli import run_cli
from rnn_mnist.data import checkpoint_data_config, load_test_digits, require_labels
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.evaluation import load_model
from rnn_mnist.likelihood import standard_error, teacher_forced_nll
from rnn_mnist.models import NextPixelModel

# What a shipped checkpoint keeps of a training one.
KEPT_KEYS = ("format", "version", "config", "model_config", "data_config", "model_state", "epoch")
CHECK_DIGITS = 200  # the first test digits whose NLL is recorded, for a quick check on any machine


def nlls_of_test_digits(
    model: NextPixelModel, checkpoint: dict[str, Any], folder: Path, data_dir: str | None, digits: int | None
) -> torch.Tensor:
    """The NLLs (nats, (N,)) of the first ``digits`` test digits (None: all), binarised as in the
    training of ``checkpoint``, the experiment in ``folder``, under ``model``."""
    config = checkpoint_data_config(checkpoint.get("data_config", {}), data_dir, Path(folder))
    pixels, labels = load_test_digits(config)
    if model.config.num_classes:
        labels = require_labels(labels, "a label-conditioned model")[:digits]
    else:
        labels = None
    return teacher_forced_nll(model, pixels[:digits], labels)


def slice_nll(folder: Path, data_dir: str | None, digits: int = CHECK_DIGITS) -> float:
    """The mean test NLL (nats) of the experiment in ``folder`` on the first ``digits`` test digits,
    binarised as in its training."""
    model, checkpoint = load_model(Path(folder) / "checkpoint.ckpt", torch.device("cpu"))
    return nlls_of_test_digits(model, checkpoint, folder, data_dir, digits).mean().item()


def stored_weights(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The weights as shipped: floating-point tensors in ``dtype`` (float16 halves the file; a load
    casts them back into the fp32 model), the rest as they are; a weight ``dtype`` cannot hold
    (float16: beyond 65504) is refused rather than shipped as inf."""
    stored = {
        name: t.detach().cpu().to(dtype) if t.is_floating_point() else t.detach().cpu()
        for name, t in state.items()
    }
    overflowed = [name for name, t in stored.items() if t.is_floating_point() and not t.isfinite().all()]
    if overflowed:
        raise RnnMnistError(
            f"{_dtype_name(dtype)} cannot hold the weights {', '.join(overflowed)}: ship them in float32"
        )
    return stored


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")  # "float16"


def _shipped_record(
    model: NextPixelModel,
    checkpoint: dict[str, Any],
    source: Path,
    state: dict[str, torch.Tensor],
    dtype: torch.dtype,
    data_dir: str | None,
) -> dict[str, Any]:
    """What the shipped checkpoint records of its weights ``state`` (stored in ``dtype``): their hash
    and dtype, and the NLL of the first CHECK_DIGITS test digits under them; weights stored in another
    dtype than float32 also get the NLL ± standard error of every test digit, the figure to quote.
    ``model`` is the experiment's (``checkpoint``, read from ``source``); it is given ``state`` here."""
    model.load_state_dict(state)  # what a load of the shipped file computes with
    every = dtype != torch.float32
    nlls = nlls_of_test_digits(model, checkpoint, source, data_dir, None if every else CHECK_DIGITS)
    record = {
        WEIGHTS_HASH_KEY: weights_sha256(state),
        "weights_dtype": _dtype_name(dtype),
        f"test_nll_first_{CHECK_DIGITS}": nlls[:CHECK_DIGITS].mean().item(),
    }
    if every:
        nlls = nlls.double()
        record["test_nll_nats"] = nlls.mean().item()
        record["test_nll_se"] = standard_error(len(nlls), nlls.sum().item(), nlls.square().sum().item())
    return record


def _without_local_folder(data_config: dict[str, Any]) -> dict[str, Any]:
    """A data config without the absolute folder training read: a shipped model finds its digits
    from the folder typed in training, relative to the checkout (rnn_mnist/data.py)."""
    return {key: value for key, value in data_config.items() if key != "data_folder"}


def ship(
    source: Path, dest: Path, command: str, data_dir: str | None, dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """Write the shipped copy of the experiment folder ``source`` into ``dest``, its weights in
    ``dtype``; record its NLL on the first CHECK_DIGITS test digits (MNIST from ``data_dir``) for
    tests/test_pretrained.py."""
    source, dest = Path(source), Path(dest)
    model, checkpoint = load_model(source / "checkpoint.ckpt", torch.device("cpu"))  # read once
    for record in ("metrics.json", "train.log"):
        if not (source / record).is_file():
            raise RnnMnistError(f"{source} has no {record}: ship a finished train.py experiment")
    history = [
        {key: value for key, value in epoch.items() if key != "batch_losses"}
        for epoch in checkpoint.get("history", [])
    ]
    shipped = {key: checkpoint[key] for key in KEPT_KEYS if key in checkpoint}
    if "data_config" in shipped:  # this machine's absolute folder means nothing on another one
        shipped["data_config"] = _without_local_folder(shipped["data_config"])
    state = stored_weights(checkpoint["model_state"], dtype)
    record = _shipped_record(model, checkpoint, source, state, dtype, data_dir)
    shipped.update(
        history=history,
        optimizer_state={},  # required by the format; empty: a shipped model is not resumed
        scheduler_state={},
        model_state=state,
        **{SHIPPED_KEY: {"command": command, **record}},
    )
    dest.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dest / "checkpoint.ckpt", shipped)  # records the weights' sha256 in it
    shutil.copyfile(source / "train.log", dest / "train.log")
    (dest / "COMMAND").write_text(command.strip() + "\n")
    # The metrics as trained, with the weights' sha256: a record outside the binary that every load
    # of the shipped checkpoint checks (rnn_mnist/checkpoint.py), as for the models shipped before
    # checkpoints recorded it themselves.
    metrics = json.loads((source / "metrics.json").read_text())
    metrics[WEIGHTS_HASH_KEY] = shipped[SHIPPED_KEY][WEIGHTS_HASH_KEY]
    if "test_nll_nats" in shipped[SHIPPED_KEY]:  # the stored weights' own figures, beside the training's
        keys = ("weights_dtype", "test_nll_nats", "test_nll_se")
        metrics["shipped_weights"] = {key: shipped[SHIPPED_KEY][key] for key in keys}
    if isinstance(metrics.get("data_config"), dict):
        metrics["data_config"] = _without_local_folder(metrics["data_config"])
    atomic_write(dest / "metrics.json", lambda f: f.write(json_bytes(metrics)))
    last = metrics["history"][-1]
    return {
        "epochs": shipped["epoch"],
        "test_nll_nats": shipped[SHIPPED_KEY].get("test_nll_nats", last.get("test_nll_nats")),
        "bytes": (dest / "checkpoint.ckpt").stat().st_size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rnn_mnist.pretrained",
        description="Copy a trained experiment into a shipped folder (weights and records, no optimizer).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("source", help="the experiment folder, e.g. experiments/fast-f")
    parser.add_argument("dest", help="the shipped folder, e.g. pretrained/fast")
    parser.add_argument("--command", required=True, help="the exact train.py command that made it")
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw (unset: $RNN_MNIST_DATA)")
    parser.add_argument(
        "--fp16-weights",
        action="store_true",
        help="store the weights in float16: half the bytes, for the larger models; the NLL of every test "
        "digit under the stored weights is then measured and recorded, the figure to quote",
    )
    args = parser.parse_args(argv)

    def run() -> None:
        dtype = torch.float16 if args.fp16_weights else torch.float32
        report = ship(Path(args.source), Path(args.dest), args.command, args.data_dir, dtype)
        nll, size = report["test_nll_nats"], report["bytes"]
        print(f"{args.dest}: epoch {report['epochs']}, test NLL {nll:.2f} nats, {size:,} bytes")

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
