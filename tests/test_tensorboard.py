"""rnn_mnist/tensorboard.py: a run's TensorBoard record, read back as TensorBoard reads it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_train_args
from helpers import run_train

import train
from rnn_mnist import training
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.tensorboard import MISSING_PACKAGE, epoch_tags

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
hparams_metadata = pytest.importorskip("tensorboard.plugins.hparams.metadata")


def read_board(folder: Path):
    """The experiment's events as TensorBoard loads them (every value kept, restarts purged)."""
    keep_all = {"scalars": 0, "images": 0, "tensors": 0}
    return event_accumulator.EventAccumulator(str(folder / "tensorboard"), size_guidance=keep_all).Reload()


def scalars(board, tag: str) -> tuple[list[int], list[float]]:
    events = board.Scalars(tag)
    return [e.step for e in events], [e.value for e in events]


def hparams_of(board) -> dict:
    content = board.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content
    start = hparams_metadata.parse_session_start_info_plugin_data(content)
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}


def flat(history: list[dict], key: str) -> list[float]:
    return [value for entry in history for value in entry[key]]


def test_a_run_writes_its_curves_samples_and_hyperparameters(tmp_path, mnist_dir, monkeypatch):
    version = {"git_commit": "0123456789abcdef0123456789abcdef01234567", "git_dirty": True}
    monkeypatch.setattr(training, "code_version", lambda: dict(version))
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "tb")) == 0  # 3 batches an epoch, 2 epochs
    history = load_checkpoint(tmp_path / "tb" / "checkpoint.ckpt")["history"]
    board = read_board(tmp_path / "tb")

    steps, losses = scalars(board, "train/batch_loss")  # every batch, at the batch index since the start
    assert steps == list(range(6)) and losses == pytest.approx(flat(history, "batch_losses"), rel=1e-6)
    steps, lrs = scalars(board, "train/lr")
    assert steps == list(range(6)) and lrs == pytest.approx([3e-3] * 6)
    for tag, key in [("test/nll_nats", "test_nll_nats"), ("val/nll_nats", "val_nll_nats"),
                     ("test/bits_per_pixel", "test_bits_per_pixel"), ("train/loss", "train_loss"),
                     ("time/train_sequences_per_second", "train_sequences_per_second")]:  # fmt: skip
        steps, values = scalars(board, tag)  # every epoch, at its last batch
        assert steps == [2, 5] and values == pytest.approx([h[key] for h in history], rel=1e-6), tag
    assert [image.step for image in board.Images("samples")] == [2, 5]  # samples/epoch-NNN.png

    hparams = hparams_of(board)
    assert hparams["hidden_size"] == 8 and hparams["cell"] == "gru" and hparams["batch_size"] == 32
    assert hparams["num_parameters"] > 0 and "exp_dir" not in hparams and "resume" not in hparams
    assert (hparams["git_commit"], hparams["git_dirty"]) == (version["git_commit"], "true")
    note = board.Tensors("run/text_summary")[0].tensor_proto.string_val[0].decode()  # the TEXT tab
    assert version["git_commit"] in note and "uncommitted changes" in note and "| hidden_size | 8 |" in note


def test_a_classify_run_records_its_accuracy(tmp_path, mnist_dir):
    argv = tiny_train_args(tmp_path, mnist_dir, "cls", "--task", "classify", "--epochs", "1")
    assert train.main(argv) == 0
    board = read_board(tmp_path / "cls")
    entry = load_checkpoint(tmp_path / "cls" / "checkpoint.ckpt")["history"][0]
    assert scalars(board, "test/accuracy") == ([2], [pytest.approx(entry["test_accuracy"])])
    assert scalars(board, "val/loss")[0] == [2] and scalars(board, "train/batch_loss")[0] == [0, 1, 2]
    assert board.Tags()["images"] == []  # a classifier draws no samples


def next_second() -> None:
    """Event files are read in the order of their names, which start with the second they were
    opened in: the interrupted run's and the resumed run's must not share one."""
    time.sleep(1 - time.time() % 1 + 0.01)


def test_resume_continues_the_curves_without_repeating_a_step(tmp_path, mnist_dir, monkeypatch):
    real_batch = training._train_batch

    def ctrl_c_at_step_5(*args, **kwargs):  # epoch 2 of 3 batches each: steps 3 and 4 written, then Ctrl-C
        if args[5] == 5:  # the step argument
            raise KeyboardInterrupt
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(training, "_train_batch", ctrl_c_at_step_5)
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "res")) == 130  # the checkpoint of epoch 1 kept
    assert scalars(read_board(tmp_path / "res"), "train/batch_loss")[0] == [0, 1, 2, 3, 4]  # 3, 4: unsaved
    monkeypatch.setattr(training, "_train_batch", real_batch)
    next_second()
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "res", "--resume")) == 0

    history = load_checkpoint(tmp_path / "res" / "checkpoint.ckpt")["history"]
    board = read_board(tmp_path / "res")
    steps, losses = scalars(board, "train/batch_loss")
    assert steps == list(range(6)) and losses == pytest.approx(flat(history, "batch_losses"), rel=1e-6)
    assert scalars(board, "test/nll_nats") == ([2, 5], pytest.approx([h["test_nll_nats"] for h in history]))
    assert [image.step for image in board.Images("samples")] == [2, 5]


def test_overwrite_starts_the_curves_again(tmp_path, mnist_dir):
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "again")) == 0
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "again", "--overwrite", "--epochs", "1")) == 0
    assert len(list((tmp_path / "again" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert scalars(read_board(tmp_path / "again"), "train/batch_loss")[0] == [0, 1, 2]


def test_no_tensorboard_writes_no_events_and_may_be_typed_on_resume(tmp_path, mnist_dir):
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "quiet", "--no-tensorboard", "--epochs", "1")) == 0
    assert not (tmp_path / "quiet" / "tensorboard").exists()
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "loud", "--epochs", "1")) == 0
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "loud", "--resume", "--no-tensorboard")) == 0
    assert scalars(read_board(tmp_path / "loud"), "train/batch_loss")[0] == [0, 1, 2]  # epoch 2 unrecorded


def test_without_the_tensorboard_package_a_run_says_so_in_one_line_and_trains(
    tmp_path, mnist_dir, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    code, err = run_train(tiny_train_args(tmp_path, mnist_dir, "bare", "--epochs", "1"), capsys)
    log = (tmp_path / "bare" / "train.log").read_text()
    assert code == 0 and log.count(MISSING_PACKAGE) == 1 and "Traceback" not in err + log
    assert not (tmp_path / "bare" / "tensorboard").exists()


def test_epoch_tags_name_every_number_of_an_epoch_by_split():
    entry = {"epoch": 3, "end_lr": 1e-3, "train_loss": 0.1, "val_nll_nats": None, "test_accuracy": 0.9,
             "seconds": 2.0, "teacher_forcing_prob": 1.0, "batch_losses": [0.1], "compute": {}}  # fmt: skip
    assert epoch_tags(entry) == {"train/loss": 0.1, "test/accuracy": 0.9, "time/epoch_seconds": 2.0,
                                 "train/teacher_forcing_prob": 1.0}  # fmt: skip
