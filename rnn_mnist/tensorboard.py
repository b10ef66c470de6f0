"""The run's live record in TensorBoard: curves by batch and by epoch, the epoch's samples picture,
the hyper-parameters and the code's commit, in <exp-dir>/<exp-name>/tensorboard/.

    board = open_board(paths.tensorboard, flags, facts, start_step=0, say=print)
    board.batch(step, loss, lr)            # every mini-batch; step: batches since the start of training
    board.epoch(entry, step, picture)      # every epoch: its history entry, at its last batch's step
    board.close()

    tensorboard --logdir experiments       # every experiment one run: <exp-name>/tensorboard

One run per experiment folder, so ``--logdir experiments`` shows the experiments side by side and
the HPARAMS tab lists them by flag (hidden size, lr, ...) beside their latest metrics. Every point
is at the step of a batch, per-epoch points at the epoch's last one, so all curves share one axis.
``--resume`` continues them: the new writer purges every event at or past the checkpoint's step
(the batches of an epoch that was interrupted before its checkpoint), so no step is shown twice.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import imageio.v3 as iio

from rnn_mnist.errors import RnnMnistError, describe_os_error

FLUSH_SECS = 10  # how stale the live view may get within an epoch (every epoch also flushes)
CLOSE_SECONDS = 15  # the longest a run waits on the way out for its last events
MISSING_PACKAGE = (
    "note: the tensorboard package is not installed (pip install tensorboard), so this run writes "
    "no TensorBoard curves; --no-tensorboard leaves them out without this note"
)
# History keys that are not "<split>_<metric>", by the tag they get.
_TAGS = {
    "seconds": "time/epoch_seconds",
    "train_seconds": "time/train_seconds",
    "train_sequences_per_second": "time/train_sequences_per_second",
    "teacher_forcing_prob": "train/teacher_forcing_prob",
}
# Where and how a run was started, not what it is: left out of the hyper-parameters.
_NOT_HPARAMS = {"exp_dir", "data_dir", "resume", "overwrite", "tensorboard"}
_NOT_CURVES = {"epoch", "end_lr"}  # the epoch is the x axis's business; the lr has its per-batch curve


def epoch_tags(entry: dict[str, Any]) -> dict[str, float]:
    """An epoch's history entry as scalars by tag: ``val_nll_nats`` -> ``val/nll_nats``,
    ``test_accuracy`` -> ``test/accuracy``, ``train_loss`` -> ``train/loss``; None left out."""
    tags = {}
    for key, value in entry.items():
        if key in _NOT_CURVES or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        split, _, metric = key.partition("_")
        default = f"{split}/{metric}" if split in ("train", "val", "test") else f"epoch/{key}"
        tags[_TAGS.get(key, default)] = value
    return tags


def hparam_values(values: dict[str, Any]) -> dict[str, int | float | str]:
    """Flags and facts as TensorBoard's hparams take them: numbers, and text for the rest (a tuple
    as ``5,8``, a switch as ``true``); None left out."""
    kept: dict[str, int | float | str] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            kept[key] = str(value).lower()
        elif isinstance(value, int | float | str):
            kept[key] = value
        elif isinstance(value, list | tuple):
            kept[key] = ",".join(map(str, value))
        else:
            kept[key] = str(value)
    return kept


class Board:
    """A SummaryWriter on the experiment's tensorboard/ folder; a failed write is one line."""

    def __init__(self, writer: Any, folder: Path) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary  # here: the package may be missing

        self.writer, self.folder, self.summary = writer, folder, Summary

    def batch(self, step: int, loss: float, lr: float) -> None:
        """One mini-batch: its loss and the lr it was trained at, as one event (each event costs
        the writer's thread a pure-Python checksum: about 0.1 ms of CPU a batch in all)."""
        values = [self.summary.Value(tag="train/batch_loss", simple_value=loss)]
        values.append(self.summary.Value(tag="train/lr", simple_value=lr))
        with _writing(self.folder):
            self.writer.file_writer.add_summary(self.summary(value=values), step)

    def epoch(self, entry: dict[str, Any], step: int, picture: Path | None = None) -> None:
        """One epoch's numbers (NLLs or accuracies, bits/dim, sequences/s, seconds) and its samples
        picture, at ``step``; then everything so far reaches the disk."""
        with _writing(self.folder):
            for tag, value in epoch_tags(entry).items():
                if math.isfinite(value):
                    self.writer.add_scalar(tag, value, step)
            if picture is not None and picture.is_file():
                image = iio.imread(picture)  # (H, W, 3) as samples.py draws it
                self.writer.add_image("samples", image, step, dataformats="HWC" if image.ndim == 3 else "HW")
            self.writer.flush()

    def describe(self, hparams: dict[str, Any], text: str) -> None:
        """The run's hyper-parameters (the HPARAMS tab, where its metrics are the latest value of
        each curve) and a note of what ran (the TEXT tab)."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        # Only the session's start, in the run's own folder: the plugin then builds its table from
        # every run's values (mixed tasks and versions included) and takes every curve as a metric.
        _, session_start, _ = hparams_summaries(hparam_values(hparams), {})
        with _writing(self.folder):
            self.writer.file_writer.add_summary(session_start)
            self.writer.add_text("run", text)

    def close(self) -> None:
        """Write what is queued and stop the writer's thread. Called on the way out, after an error
        too: it raises nothing (each epoch has flushed already, and said if that failed). The close
        runs aside and the run ends after CLOSE_SECONDS at most, whatever state Ctrl-C left the
        writer's thread in: what is lost then is at most the events since the last flush."""

        def close_writer() -> None:
            with contextlib.suppress(Exception):
                self.writer.close()

        closer = threading.Thread(target=close_writer, name="tensorboard-close", daemon=True)
        closer.start()
        closer.join(timeout=CLOSE_SECONDS)


@contextlib.contextmanager
def _writing(folder: Path) -> Iterator[None]:
    """A failed write (a full disk: the writer's thread reports it on the next call) as one line."""
    try:
        yield
    except OSError as exc:
        raise RnnMnistError(
            f"could not write the TensorBoard events in {folder}: {describe_os_error(exc)} "
            "(--no-tensorboard runs without them)"
        ) from None


class NoBoard:
    """What a run without TensorBoard holds (--no-tensorboard, the package missing, ranks > 0)."""

    def batch(self, step: int, loss: float, lr: float) -> None:
        pass

    def epoch(self, entry: dict[str, Any], step: int, picture: Path | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def open_board(
    folder: Path, flags: dict[str, Any], facts: dict[str, Any], start_step: int, say: Callable[[str], None]
) -> Board | NoBoard:
    """The writer of one run into ``folder``, described by its ``flags`` and ``facts`` (parameters,
    git commit); ``start_step``: the batches its checkpoint holds (0: a fresh run). Without the
    tensorboard package: a NoBoard, after one line through ``say``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # what torch raises when the tensorboard package is missing
        say(MISSING_PACKAGE)
        return NoBoard()
    try:
        # A resumed run purges what an interrupted epoch wrote past its checkpoint.
        writer = SummaryWriter(str(folder), purge_step=start_step or None, flush_secs=FLUSH_SECS)
    except OSError as exc:
        raise RnnMnistError(
            f"cannot write TensorBoard events in {folder}: {describe_os_error(exc)} "
            "(--no-tensorboard runs without them)"
        ) from None
    board = Board(writer, folder)
    board.describe(*run_description(flags, facts))
    return board


def run_description(flags: dict[str, Any], facts: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The hyper-parameters (the flags that make the experiment what it is, and ``facts``) and the
    TEXT tab's note: the code's commit, then every flag."""
    hparams = {**{k: v for k, v in flags.items() if k not in _NOT_HPARAMS}, **facts}
    commit, dirty = facts.get("git_commit"), facts.get("git_dirty")
    code = "not a git checkout" if commit is None else f"git commit `{commit}`"
    if dirty:
        code += ", with uncommitted changes (`git status` was not clean)"
    rows = [f"| {key} | {value} |" for key, value in {**facts, **flags}.items()]
    return hparams, "\n".join([f"Code: {code}.", "", "| | |", "|---|---|", *rows])
