"""One writer per experiment folder, outputs checked before the work, no stale files
(issue 11, findings 5, 8 and 9)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import time

import pytest
from conftest import REPO, folder_files, tiny_train_args
from conftest import run_main as run_script_main

import train
from rnn_mnist import training
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.experiment_lock import ExperimentLock


def run_main(argv, capsys) -> tuple[int, str]:
    return run_script_main(train.main, argv, capsys)


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


def test_a_refused_new_run_leaves_no_folder(tmp_path, capsys):
    code, err = run_main(tiny_train_args(tmp_path, tmp_path / "no-data", "nodata"), capsys)
    assert code == 2 and "MNIST" in err
    assert not (tmp_path / "nodata").exists()


def test_resume_into_a_read_only_folder_fails_before_training(
    tmp_path, mnist_dir, capsys, monkeypatch, make_read_only
):
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "ro", "--epochs", "1")) == 0
    folder = tmp_path / "ro"
    before = folder_files(folder)
    epochs_trained = []
    real_epoch = training._train_one_epoch
    monkeypatch.setattr(
        training, "_train_one_epoch", lambda *a, **k: epochs_trained.append(a[6]) or real_epoch(*a, **k)
    )
    make_read_only(folder)
    capsys.readouterr()
    code, err = run_main(tiny_train_args(tmp_path, mnist_dir, "ro", "--resume", "--epochs", "2"), capsys)
    assert code == 2 and str(folder) in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert epochs_trained == []  # refused before the work, not at the first save
    assert folder_files(folder) == before


def test_stale_temp_files_of_a_killed_save_are_cleaned_at_start(tmp_path, mnist_dir, capsys):
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "stale", "--epochs", "1")) == 0
    folder = tmp_path / "stale"
    stale = [".checkpoint.ckpt.k1ll3d.tmp", ".metrics.pkl.abc123.tmp", ".metrics.json.x_y.tmp"]
    for extra in (["--resume", "--epochs", "2"], ["--overwrite", "--epochs", "1"]):
        for name in stale:
            (folder / name).write_bytes(b"half a checkpoint")
        (folder / "notes.txt").write_text("mine")
        assert train.main(tiny_train_args(tmp_path, mnist_dir, "stale", *extra)) == 0
        assert not list(folder.glob(".*.tmp")), extra
        assert (folder / "notes.txt").read_text() == "mine"  # only our own temporary files go
