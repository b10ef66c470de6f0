"""--resume as a user meets it: the printed command works pasted as is, a moved or copied
experiment resumes, and only typed flags count (issue 11, findings 1 to 4)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, folder_files, tiny_train_args
from helpers import run_train as run_main
from helpers import tiny_args

import train
from rnn_mnist import runtime, training
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.cli import typed_flags
from rnn_mnist.config import train_options
from rnn_mnist.options import read_recipe
from rnn_mnist.resume import resume_command


def interrupt_in_epoch(monkeypatch, interrupted_epoch: int) -> None:
    """Ctrl-C as train.py meets it, at the start of one epoch (deterministic, unlike a signal)."""
    real_epoch = training._train_one_epoch

    def epoch_or_ctrl_c(*args, **kwargs):
        if args[3] == interrupted_epoch:  # the epoch argument
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "_train_one_epoch", epoch_or_ctrl_c)


TIMING_KEYS = {"seconds", "train_seconds", "train_sequences_per_second"}


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k not in TIMING_KEYS} for entry in history]


def _corrupt(path: Path, how: str, marker: Path) -> None:
    if how == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 10)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif how == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif how == "code":  # a pickle that would run a command if unpickled without restriction

        class Exploit:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        torch.save({"model_state": Exploit()}, path)


def test_the_printed_resume_command_works_pasted_as_is(tmp_path, mnist_dir, capsys, monkeypatch):
    # Started with --epochs 2 and --data-dir, stopped in epoch 2: the printed command names
    # neither, and must still finish the experiment's own 2 epochs on its own data.
    interrupt_in_epoch(monkeypatch, 2)
    code, err = run_main(tiny_train_args(tmp_path, mnist_dir, "pasted", "--epochs", "2"), capsys)
    assert code == 130, err
    command = err.split("Resume with: ", 1)[1].strip()
    assert command.startswith("python train.py ") and "--data-dir" not in command

    env = {k: v for k, v in os.environ.items() if k != "RNN_MNIST_DATA"}  # no fallback to lean on
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # `python` is this one
    data_before = (REPO / "data").exists()
    result = subprocess.run(
        command, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "resuming after epoch 1 of 2" in result.stdout
    checkpoint = load_checkpoint(tmp_path / "pasted" / "checkpoint.ckpt")
    assert checkpoint["epoch"] == 2 and [e["epoch"] for e in checkpoint["history"]] == [1, 2]
    assert checkpoint["config"]["data_dir"] == str(mnist_dir)
    assert (REPO / "data").exists() == data_before  # no stray ./data/MNIST/raw


def test_the_resume_command_quotes_what_the_shell_would_split():
    command = resume_command("my experiments/2024 'a'", "run-1")
    assert shlex.split(command)[2:] == [
        "--exp-dir",
        "my experiments/2024 'a'",
        "--exp-name",
        "run-1",
        "--resume",
    ]


def test_a_moved_copied_or_respelled_experiment_resumes(tmp_path, mnist_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train.main(tiny_train_args(tmp_path / "exp", mnist_dir, "orig", "--epochs", "1")) == 0
    # The same folder spelled another way (it was saved as an absolute path).
    code, err = run_main(["--exp-dir", "./exp/", "--exp-name", "orig", "--resume", "--epochs", "2"], capsys)
    assert code == 0, err
    # A copy elsewhere, under another name: where it lives is not part of the experiment.
    shutil.copytree(tmp_path / "exp" / "orig", tmp_path / "elsewhere" / "copy")
    code, err = run_main(
        ["--exp-dir", str(tmp_path / "elsewhere"), "--exp-name", "copy", "--resume", "--epochs", "3"], capsys
    )
    assert code == 0, err
    copy = load_checkpoint(tmp_path / "elsewhere" / "copy" / "checkpoint.ckpt")
    assert copy["epoch"] == 3 and copy["config"]["exp_name"] == "copy"
    assert load_checkpoint(tmp_path / "exp" / "orig" / "checkpoint.ckpt")["epoch"] == 2  # untouched


def test_a_typed_flag_that_clashes_is_refused_even_at_its_default_value(tmp_path, mnist_dir, capsys):
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "small", "--epochs", "1")) == 0  # --hidden 8
    # 128 is --hidden's default: comparing with defaults would not see that it was typed.
    # fmt: off
    argv = ["--exp-dir", str(tmp_path), "--exp-name", "small", "--data-dir", str(mnist_dir), "--resume",
            "--epochs", "2", "--hidden", "128"]
    # fmt: on
    code, err = run_main(argv, capsys)
    assert code == 2 and "--hidden-size 128 (the experiment has 8)" in err and "Traceback" not in err
    assert load_checkpoint(tmp_path / "small" / "checkpoint.ckpt")["epoch"] == 1


def test_typed_flags_are_those_on_the_line_whatever_their_value():
    parser = train.build_parser()
    argv = ["--exp-name", "x", "--hidden", "128", "--preset", "fast", "--context", "--epochs", "10"]
    assert typed_flags(parser, argv) == {"exp_name", "hidden_size", "preset", "context", "epochs"}
    parser.set_defaults(**read_recipe("fast", train_options()))  # what a recipe does: defaults, not typed
    assert typed_flags(parser, ["--exp-name", "x", "--hidden-size", "64"]) == {"exp_name", "hidden_size"}


def test_resume_and_overwrite_together_are_refused(tmp_path, mnist_dir, capsys):
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "both", "--epochs", "1")) == 0
    folder = tmp_path / "both"
    before = folder_files(folder)
    capsys.readouterr()
    code, err = run_main(tiny_train_args(tmp_path, mnist_dir, "both", "--resume", "--overwrite"), capsys)
    assert code == 2 and "--resume" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert folder_files(folder) == before


def test_a_run_saved_with_more_gpus_resumes_with_the_states_of_those_present(monkeypatch):
    """torch.cuda.set_rng_state_all raises an IndexError when the machine has fewer GPUs than the
    run was saved with; restore_rng restores the GPUs present and says what it dropped."""
    import torch

    generator = torch.Generator().manual_seed(0)
    state = runtime.capture_rng(generator, torch.device("cpu"))
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(3)]  # saved on 3 GPUs
    restored = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda value, index: restored.append((index, value)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda values: pytest.fail("would raise IndexError"))
    note = runtime.restore_rng(state, generator, torch.device("cuda"))
    assert [index for index, _ in restored] == [0, 1]
    assert all(torch.equal(value, state["cuda"][index]) for index, value in restored)
    assert note is not None and "3 GPUs" in note and "2" in note
    restored.clear()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # more GPUs than saved: all restored
    assert runtime.restore_rng(state, generator, torch.device("cuda")) is None
    assert [index for index, _ in restored] == [0, 1, 2]


def test_a_cosine_bf16_run_resumed_after_ctrl_c_equals_an_uninterrupted_one(tmp_path, mnist_dir, monkeypatch):
    settings = ("--precision", "bf16", "--lr-schedule", "cosine", "--warmup-batches", "4", "--epochs", "3")
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "straight", *settings)) == 0

    real_epoch = training._train_one_epoch

    def interrupted_in_epoch_2(*args, **kwargs):
        if args[3] == 2:  # epoch
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "_train_one_epoch", interrupted_in_epoch_2)
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "resumed", *settings)) == 130
    monkeypatch.setattr(training, "_train_one_epoch", real_epoch)
    torch.manual_seed(999)
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "resumed", "--resume", "--epochs", "3")) == 0

    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.ckpt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.ckpt")
    assert [e["epoch"] for e in resumed["history"]] == [1, 2, 3]
    lrs = [e["end_lr"] for e in straight["history"]]
    assert lrs[0] > lrs[1] > lrs[2]  # each epoch ends further down the cosine
    for a, b in zip(straight["history"], resumed["history"], strict=True):
        assert a["batch_losses"] == b["batch_losses"] and a["end_lr"] == b["end_lr"]
    for key, value in straight["model_state"].items():
        assert torch.equal(value, resumed["model_state"][key]), key


def test_resume_equals_uninterrupted_run(tmp_path, mnist_dir, capsys):
    # Dropout and dynamic binarisation make every RNG matter; the milestone tests the scheduler.
    # fmt: off
    settings = ("--binarize", "dynamic", "--dropout", "0.3", "--layers", "2", "--lr", "1e-3",
                "--lr-milestones", "2", "--lr-gamma", "0.5")
    # fmt: on
    assert train.main(tiny_args(tmp_path, mnist_dir, "straight", *settings, "--epochs", "3")) == 0
    assert train.main(tiny_args(tmp_path, mnist_dir, "resumed", *settings, "--epochs", "1")) == 0
    torch.manual_seed(12345)  # scramble the global RNG: the resume must restore its own
    assert train.main(tiny_args(tmp_path, mnist_dir, "resumed", "--resume", "--epochs", "3")) == 0

    straight = load_checkpoint(tmp_path / "experiments" / "straight" / "checkpoint.ckpt")
    resumed = load_checkpoint(tmp_path / "experiments" / "resumed" / "checkpoint.ckpt")
    assert [e["end_lr"] for e in straight["history"]] == [1e-3, 1e-3, 5e-4]  # milestone 2: after epoch 2
    assert without_timings(resumed["history"]) == without_timings(straight["history"])
    for key, value in straight["model_state"].items():
        assert torch.equal(value, resumed["model_state"][key]), key


@pytest.mark.parametrize("how", ["garbage", "truncated", "foreign", "code"])
def test_corrupt_or_foreign_checkpoint_on_resume(tmp_path, mnist_dir, capsys, how):
    assert train.main(tiny_args(tmp_path, mnist_dir, "hurt", "--epochs", "1")) == 0
    marker = tmp_path / "pwned"
    _corrupt(tmp_path / "experiments" / "hurt" / "checkpoint.ckpt", how, marker)
    code, err = run_main(tiny_args(tmp_path, mnist_dir, "hurt", "--resume"), capsys)
    assert code == 2 and "checkpoint" in err and "Traceback" not in err
    assert not marker.exists()


def test_resume_without_checkpoint_is_refused(tmp_path, mnist_dir, capsys):
    code, err = run_main(tiny_args(tmp_path, mnist_dir, "never", "--resume"), capsys)
    assert code == 2 and "no checkpoint" in err


def test_resume_refuses_flags_that_clash_with_the_experiment(tmp_path, mnist_dir, capsys):
    assert train.main(tiny_args(tmp_path, mnist_dir, "fixed", "--epochs", "1")) == 0
    code, err = run_main(tiny_args(tmp_path, mnist_dir, "fixed", "--resume", "--hidden", "16"), capsys)
    assert code == 2 and "--hidden-size 16" in err
    # Flags that may change on resume (how far to train) are accepted.
    assert train.main(tiny_args(tmp_path, mnist_dir, "fixed", "--resume", "--epochs", "2")) == 0


def test_resume_may_lower_the_lr_from_the_resumed_epoch_on_and_records_it(tmp_path, mnist_dir, capsys):
    schedule = ("--lr-milestones", "2", "--lr-gamma", "0.5")  # the schedule goes on, on the new base lr
    assert (
        train.main(tiny_train_args(tmp_path, mnist_dir, "lower", *schedule, "--lr", "4e-3", "--epochs", "1"))
        == 0
    )
    capsys.readouterr()
    code, err = run_main(
        tiny_train_args(tmp_path, mnist_dir, "lower", "--resume", "--epochs", "3", "--lr", "1e-3"), capsys
    )
    assert code == 0, err
    folder = tmp_path / "lower"
    checkpoint = load_checkpoint(folder / "checkpoint.ckpt")
    assert [entry["end_lr"] for entry in checkpoint["history"]] == [4e-3, 1e-3, 5e-4]
    assert checkpoint["optimizer_state"]["param_groups"][0]["lr"] == 5e-4  # what the last step used
    assert checkpoint["config"]["lr"] == 1e-3
    changed = {"epochs": {"from": 1, "to": 3}, "lr": {"from": 4e-3, "to": 1e-3}}
    assert checkpoint["resumes"] == [{"after_epoch": 1, "changed": changed}]
    assert json.loads((folder / "metrics.json").read_text())["resumes"] == checkpoint["resumes"]
    log = (folder / "train.log").read_text()
    assert "resuming after epoch 1 of 3 with --epochs 3 (was 1), --lr 0.001 (was 0.004)" in log
    # A second resume keeps the first one's record; --lr typed at the saved value changes nothing.
    assert (
        train.main(tiny_train_args(tmp_path, mnist_dir, "lower", "--resume", "--epochs", "4", "--lr", "1e-3"))
        == 0
    )
    resumes = load_checkpoint(folder / "checkpoint.ckpt")["resumes"]
    assert resumes == [
        {"after_epoch": 1, "changed": changed},
        {"after_epoch": 3, "changed": {"epochs": {"from": 3, "to": 4}}},
    ]
