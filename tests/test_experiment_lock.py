"""rnn_mnist/experiment_lock.py: one writer per experiment folder."""

from __future__ import annotations

import pickle
import subprocess
import sys
import time

import pytest
from conftest import REPO, tiny_train_args
from helpers import run_train as run_main

from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.experiment_lock import ExperimentLock


def wait_for_first_epoch(folder, process, timeout: float = 120) -> None:
    metrics = folder / "metrics.pkl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and pickle.loads(metrics.read_bytes())["history"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"no epoch finished; the run exited with {process.poll()}")


def test_a_second_run_is_refused_while_one_runs_and_sigkill_leaves_no_stale_lock(tmp_path, mnist_dir, capsys):
    folder = tmp_path / "busy"
    log = (tmp_path / "first.err").open("w")
    first = subprocess.Popen(
        [sys.executable, "train.py", *tiny_train_args(tmp_path, mnist_dir, "busy", "--epochs", "100000")],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        wait_for_first_epoch(folder, first)
        capsys.readouterr()
        for second in (["--overwrite", "--epochs", "1"], ["--resume", "--epochs", "1"]):
            code, err = run_main(tiny_train_args(tmp_path, mnist_dir, "busy", *second), capsys)
            assert code == 2, err
            assert "in use by another run" in err and f"pid {first.pid}" in err
            assert len(err.strip().splitlines()) == 1
        assert first.poll() is None  # the first run goes on, its files untouched
    finally:
        first.kill()  # SIGKILL: no chance to clean up
        first.wait()
        log.close()
    epoch = load_checkpoint(folder / "checkpoint.ckpt")["epoch"]
    code, err = run_main(
        tiny_train_args(tmp_path, mnist_dir, "busy", "--resume", "--epochs", str(epoch + 1)), capsys
    )
    assert code == 0, err  # the kernel dropped the dead run's lock
    assert load_checkpoint(folder / "checkpoint.ckpt")["epoch"] == epoch + 1


def test_the_lock_is_exclusive_and_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "new"
    with ExperimentLock(folder), pytest.raises(RnnMnistError, match="in use by another run"):
        ExperimentLock(folder).acquire()
    assert not folder.exists()  # made for the run, which wrote nothing: gone again
    with ExperimentLock(folder):
        (folder / "kept").write_text("x")
    assert [p.name for p in folder.iterdir()] == ["kept"]
