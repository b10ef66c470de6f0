"""No long silences: every stage that can take long shows progress, as a live bar on a terminal and
as plain periodic lines in a log (issue 11, finding 21)."""

from __future__ import annotations

import io

import pytest
from conftest import tiny_train_args
from helpers import classify_args as _args

import evaluate
import train
from rnn_mnist import progress as progress_module
from rnn_mnist.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def every_step(monkeypatch):
    """Log lines at every step instead of every LOG_INTERVAL seconds, so that tiny runs show them."""
    monkeypatch.setattr(progress_module, "LOG_INTERVAL", 0.0)


@pytest.fixture(scope="module")
def label_model(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("progress")
    exp_dir = root / "experiments"
    args = tiny_train_args(exp_dir, mnist_dir, "label", "--condition", "label", "--epochs", "1")
    assert train.main(args) == 0
    # fmt: off
    return root, ["--exp-name", "label", "--exp-dir", str(exp_dir), "--data-dir", str(mnist_dir),
                  "--no-judge", "--no-gifs"]
    # fmt: on


def test_classify_shows_the_validation_and_test_passes(tmp_path, mnist_dir, capsys, monkeypatch):
    monkeypatch.setattr(progress_module, "LOG_INTERVAL", 0.0)
    assert train.main(_args(tmp_path, mnist_dir, "shown", "--epochs", "1")) == 0
    lines = capsys.readouterr().err.splitlines()
    for stage in ("epoch 1/1: 3/3 batch", "epoch 1/1: validation: 1/1 batch", "epoch 1/1: test: 1/1 batch"):
        assert any(line.startswith(stage) for line in lines), lines


def test_a_log_gets_whole_plain_lines(every_step):
    log = io.StringIO()
    for _ in progress(range(3), "stage", unit="batch", stream=log):
        pass
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines[0].startswith("stage: 0/3 batch") and lines[-1].startswith("stage: 3/3 batch")


def test_a_log_stays_quiet_for_short_stages():
    log = io.StringIO()
    for _ in progress(range(3), "quick", stream=log):
        pass
    assert log.getvalue() == ""


def test_a_terminal_gets_a_live_bar():
    terminal = Terminal()
    for _ in progress(range(3), "live", stream=terminal):
        pass
    assert "\r" in terminal.getvalue() and "live" in terminal.getvalue()


def test_training_shows_the_validation_and_test_passes(tmp_path, mnist_dir, capsys, every_step):
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "shown", "--epochs", "1")) == 0
    err = capsys.readouterr().err
    assert "\r" not in err  # before: the bar's redraws glued together by carriage returns
    lines = err.splitlines()
    for stage in ("epoch 1/1: 3/3 batch", "epoch 1/1: validation: 1/1 batch", "epoch 1/1: test: 1/1 batch"):
        assert any(line.startswith(stage) for line in lines), err


def test_evaluate_shows_every_stage_even_for_a_few_digits(label_model, capsys, every_step):
    # Before, the bar was off whenever the digits fit one batch: minutes of silence.
    root, args = label_model
    # fmt: off
    argv = [*args, "--out-dir", str(root / "out"), "--mask-pixels", "784", "--per-class", "1",
            "--sampling", "bernoulli", "--best-of", "2", "--best-by", "label-posterior"]
    # fmt: on
    capsys.readouterr()
    assert evaluate.main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    for stage in ("completing 10 digits x 2: 784/784 px", "reading the labels back: 1/1 batch", "masked NLL"):
        assert any(line.startswith(stage) for line in lines), err
    assert sum(line.startswith("completing") for line in lines) > 100  # a line per pixel step here
