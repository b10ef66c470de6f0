"""The shipped models in pretrained/: loadable safely, small, documented, and still the models they were."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, real_mnist_dir, run_main, tiny_train_args

import evaluate
import train
from rnn_mnist import pretrained
from rnn_mnist.checkpoint import weights_sha256
from rnn_mnist.data import checkpoint_data_config, load_test_digits
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.evaluation import load_model
from rnn_mnist.likelihood import teacher_forced_nll
from rnn_mnist.pretrained import CHECK_DIGITS, ship, slice_nll, stored_weights

SHIPPED = sorted(path for path in (REPO / "pretrained").iterdir() if path.is_dir())


def test_the_readme_models_are_shipped():
    assert {path.name for path in SHIPPED} >= {"gru-128", "fast", "fast-label"}


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_a_shipped_model_loads_safely_and_is_small_and_documented(folder):
    model, checkpoint = load_model(folder / "checkpoint.ckpt", torch.device("cpu"))  # weights_only inside
    # small: fp32 weights and the records; the largest, bench-gru256's 388,610 parameters, is 1.6 MB
    assert (folder / "checkpoint.ckpt").stat().st_size < 2_000_000
    assert checkpoint["optimizer_state"] == {} and "rng_state" not in checkpoint
    assert weights_sha256(checkpoint["model_state"]) == checkpoint["shipped"]["weights_sha256"]
    command = (folder / "COMMAND").read_text()
    assert command.startswith("python train.py ")  # it may name a recipe: test_options checks its flags
    metrics = json.loads((folder / "metrics.json").read_text())
    assert len(metrics["history"]) == checkpoint["epoch"] and (folder / "train.log").stat().st_size > 0
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.skipif(real_mnist_dir() is None, reason="no MNIST copy ($RNN_MNIST_DATA or ../shared/mnist)")
@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_a_shipped_model_still_scores_its_recorded_nll_on_real_test_digits(folder):
    checkpoint = torch.load(folder / "checkpoint.ckpt", weights_only=True)
    recorded = checkpoint["shipped"][f"test_nll_first_{CHECK_DIGITS}"]
    assert slice_nll(folder, str(real_mnist_dir())) == pytest.approx(recorded, abs=1e-3)


def test_a_shipped_model_is_not_resumed(tmp_path):
    folder = SHIPPED[0]
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--exp-dir",
            str(REPO / "pretrained"),
            "--exp-name",
            folder.name,
            "--resume",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "shipped model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# Issue 23, finding 10: corrupt weights loaded without a word. The shipped checkpoints predate the
# hash save_checkpoint records, so their metrics.json (text) records it, beside the one in their
# shipped record; every load checks both.
@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_a_shipped_metrics_json_records_the_sha256_of_the_weights(folder):
    checkpoint = torch.load(folder / "checkpoint.ckpt", weights_only=True)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["weights_sha256"] == weights_sha256(checkpoint["model_state"])


def _damaged_copy(tmp_path, keep_shipped_record: bool):
    """A copy of a shipped folder with 1,000 bytes inverted inside W_hh; with ``keep_shipped_record``
    False its shipped record is updated to the damaged weights, so only metrics.json disagrees."""
    folder = tmp_path / "pretrained" / "fast"
    shutil.copytree(REPO / "pretrained" / "fast", folder)
    checkpoint = torch.load(folder / "checkpoint.ckpt", weights_only=True)
    w_hh = checkpoint["model_state"]["rnn.weight_hh_l0"]
    raw = w_hh.view(torch.uint8).reshape(-1)
    raw[5000:6000] ^= 0xFF
    if not keep_shipped_record:
        checkpoint["shipped"]["weights_sha256"] = weights_sha256(checkpoint["model_state"])
    torch.save(checkpoint, folder / "checkpoint.ckpt")
    return folder


@pytest.mark.parametrize("keep_shipped_record", [True, False], ids=["record-kept", "only-metrics-json"])
def test_a_shipped_checkpoint_with_flipped_weight_bytes_is_refused(tmp_path, capsys, keep_shipped_record):
    folder = _damaged_copy(tmp_path, keep_shipped_record)
    with pytest.raises(RnnMnistError, match="not the ones saved") as refused:
        load_model(folder / "checkpoint.ckpt", torch.device("cpu"))
    assert str(folder / "checkpoint.ckpt") in str(refused.value)
    if not keep_shipped_record:
        assert str(folder / "metrics.json") in str(refused.value)
    # fmt: off
    argv = ["--exp-dir", str(folder.parent), "--exp-name", "fast", "--out-dir", str(tmp_path / "out"),
            "--num-digits", "2", "--no-gifs", "--no-judge", "--data-dir", str(tmp_path / "no-data")]
    # fmt: on
    code, err = run_main(evaluate.main, argv, capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "corrupt or was changed" in err and not (tmp_path / "out").exists()


def test_ship_records_the_weights_sha256_in_the_checkpoint_and_metrics_json(tmp_path, mnist_dir, capsys):
    exp_dir = tmp_path / "experiments"
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "small", "--epochs", "1")) == 0
    dest = tmp_path / "pretrained" / "small"
    ship(exp_dir / "small", dest, "python train.py --exp-name small", str(mnist_dir))
    _, checkpoint = load_model(dest / "checkpoint.ckpt", torch.device("cpu"))
    expected = weights_sha256(checkpoint["model_state"])
    metrics = json.loads((dest / "metrics.json").read_text())
    assert checkpoint["weights_sha256"] == checkpoint["shipped"]["weights_sha256"] == expected
    assert metrics["weights_sha256"] == expected
    assert metrics["history"] == json.loads((exp_dir / "small" / "metrics.json").read_text())["history"]
    # This machine's absolute data folder stays here: the shipped model reads the folder as typed.
    assert "data_folder" not in checkpoint["data_config"] and "data_folder" not in metrics["data_config"]
    assert checkpoint["data_config"]["data_dir"] == str(mnist_dir)


def test_ship_with_fp16_weights_halves_the_file_and_records_the_nll_of_the_stored_weights(
    tmp_path, mnist_dir, capsys, monkeypatch
):
    check_digits = 10  # fewer than the fixture's test digits, so that "every digit" means more
    monkeypatch.setattr(pretrained, "CHECK_DIGITS", check_digits)
    exp_dir, shipped = tmp_path / "experiments", tmp_path / "pretrained"
    assert train.main(tiny_train_args(exp_dir, mnist_dir, "small", "--epochs", "1", "--hidden", "64")) == 0
    ship(exp_dir / "small", shipped / "fp32", "python train.py --exp-name small", str(mnist_dir))
    argv = [str(exp_dir / "small"), str(shipped / "fp16"), "--command", "python train.py --exp-name small"]
    assert pretrained.main([*argv, "--data-dir", str(mnist_dir), "--fp16-weights"]) == 0
    full, half = (torch.load(shipped / n / "checkpoint.ckpt", weights_only=True) for n in ("fp32", "fp16"))
    assert {t.dtype for t in half["model_state"].values() if t.is_floating_point()} == {torch.float16}
    weight_bytes = lambda state: sum(t.nbytes for t in state.values())  # noqa: E731
    assert 2 * weight_bytes(half["model_state"]) == weight_bytes(full["model_state"])
    assert (full["shipped"]["weights_dtype"], half["shipped"]["weights_dtype"]) == ("float32", "float16")
    # A load casts the stored weights back into the fp32 model; the records are of that model.
    model, checkpoint = load_model(shipped / "fp16" / "checkpoint.ckpt", torch.device("cpu"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    first = half["shipped"][f"test_nll_first_{check_digits}"]
    assert slice_nll(shipped / "fp16", str(mnist_dir), check_digits) == pytest.approx(first, abs=1e-4)
    assert first != full["shipped"][f"test_nll_first_{check_digits}"]  # rounded weights, another NLL
    assert first == pytest.approx(full["shipped"][f"test_nll_first_{check_digits}"], rel=1e-2)
    pixels, _ = load_test_digits(checkpoint_data_config(checkpoint["data_config"], str(mnist_dir), shipped))
    every = teacher_forced_nll(model, pixels)  # every test digit of the fixture, scored here
    assert len(pixels) > check_digits and every[:check_digits].mean().item() == pytest.approx(first, abs=1e-4)
    assert half["shipped"]["test_nll_nats"] == pytest.approx(every.mean().item(), abs=1e-4)
    assert half["shipped"]["test_nll_se"] == pytest.approx(every.std().item() / len(every) ** 0.5, rel=1e-3)
    assert f"test NLL {half['shipped']['test_nll_nats']:.2f} nats" in capsys.readouterr().out
    metrics = json.loads((shipped / "fp16" / "metrics.json").read_text())
    assert metrics["shipped_weights"]["test_nll_nats"] == half["shipped"]["test_nll_nats"]
    # fp32 weights: the training's own figures stand
    assert "test_nll_nats" not in full["shipped"]
    assert "shipped_weights" not in json.loads((shipped / "fp32" / "metrics.json").read_text())


def test_a_weight_float16_cannot_hold_is_refused_not_shipped_as_inf():
    state = {"small": torch.ones(3), "huge": torch.tensor([1.0, 7e4]), "steps": torch.tensor([3])}
    assert stored_weights(state, torch.float32)["huge"][1] == 7e4
    with pytest.raises(RnnMnistError, match="float16 cannot hold the weights huge: ship them in float32"):
        stored_weights(state, torch.float16)
