"""The speed options: --precision, the lr schedules, and the CPU settings recorded with each epoch."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import tiny_train_args

import evaluate
import train
from rnn_mnist import runtime, training
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.config import train_options
from rnn_mnist.lr_schedule import LrSchedule
from rnn_mnist.options import read_recipe


def test_the_step_schedule_is_multisteplr_stepped_once_per_epoch():
    schedule = LrSchedule("step", lr=1.0, epochs=6, batches_per_epoch=5, milestones=(2, 4), gamma=0.5)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    reference = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2, 4], gamma=0.5)
    for epoch in range(6):
        for batch in range(5):
            assert schedule(epoch * 5 + batch) == pytest.approx(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()


def test_cosine_warms_up_then_falls_to_its_floor():
    schedule = LrSchedule("cosine", lr=1e-2, epochs=4, batches_per_epoch=100, warmup_batches=10)
    lrs = [schedule(i) for i in range(400)]
    assert lrs[0] == pytest.approx(1e-3, rel=0.02) and lrs[9] == pytest.approx(1e-2, rel=0.02)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))  # falls from then on
    assert lrs[200] == pytest.approx(1e-2 * (0.01 + 0.99 * 0.5))  # half way: the middle
    assert schedule(400) == pytest.approx(1e-4)  # the floor: 1% of the peak


def test_unknown_precision_and_schedule_are_refused():
    with pytest.raises(ValueError):
        runtime.autocast(torch.device("cpu"), "fp8")
    with pytest.raises(ValueError):
        LrSchedule("linear", lr=1.0, epochs=1, batches_per_epoch=1)


def test_cpu_settings_keep_fp32_gemms_at_fp32_accuracy():
    settings = runtime.configure_cpu_math()
    assert settings["float32_matmul_precision"] in ("highest", "medium")
    assert torch.get_float32_matmul_precision() == settings["float32_matmul_precision"]
    a, b = torch.randn(64, 256), torch.randn(256, 384)
    error = ((a @ b).double() - a.double() @ b.double()).abs().max() / (a.double() @ b.double()).abs().max()
    assert error < 1e-5  # bf16 arithmetic would be ~1e-3


def test_bf16_training_runs_records_its_settings_and_evaluates_in_fp32(tmp_path, mnist_dir):
    args = tiny_train_args(tmp_path, mnist_dir, "bf16", "--precision", "bf16", "--context", "--position")
    assert train.main(args) == 0
    checkpoint = load_checkpoint(tmp_path / "bf16" / "checkpoint.ckpt")
    for entry in checkpoint["history"]:
        assert entry["compute"]["precision"] == "bf16"
        assert math.isfinite(entry["test_nll_nats"]) and math.isfinite(entry["train_loss"])
        assert set(entry["compute"]) >= {"float32_matmul_precision", "allocator", "torch", "device"}
    assert all(v.dtype == torch.float32 for v in checkpoint["model_state"].values())  # fp32 master weights


def test_a_cosine_bf16_run_resumed_after_ctrl_c_equals_an_uninterrupted_one(tmp_path, mnist_dir, monkeypatch):
    settings = ("--precision", "bf16", "--lr-schedule", "cosine", "--warmup-batches", "4", "--epochs", "3")
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "straight", *settings)) == 0

    real_epoch = training._train_one_epoch

    def interrupted_in_epoch_2(*args, **kwargs):
        if args[6] == 2:  # epoch
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
    lrs = [e["lr"] for e in straight["history"]]
    assert lrs[0] < lrs[1] > lrs[2]  # warm-up from a fraction of the peak, then the cosine
    for a, b in zip(straight["history"], resumed["history"], strict=True):
        assert a["batch_losses"] == b["batch_losses"] and a["lr"] == b["lr"]
    for key, value in straight["model_state"].items():
        assert torch.equal(value, resumed["model_state"][key]), key


def test_evaluate_in_bf16_records_it_and_agrees_mostly_with_fp32(tmp_path, mnist_dir, capsys):
    assert train.main(tiny_train_args(tmp_path, mnist_dir, "tiny", "--epochs", "1")) == 0
    common = ["--exp-name", "tiny", "--exp-dir", str(tmp_path), "--data-dir", str(mnist_dir)]
    common += ["--num-digits", "8", "--no-gifs", "--no-judge"]
    results = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert evaluate.main([*common, "--precision", precision, "--out-dir", str(out)]) == 0
        results[precision] = (out / "metrics.json").read_text()
    assert '"precision": "bf16"' in results["bf16"] and '"precision": "fp32"' in results["fp32"]
    # The masked NLL is always fp32 teacher forcing, whatever the rollout's precision.
    nll = next(line for line in results["fp32"].splitlines() if "masked_nll" in line)
    assert nll in results["bf16"]
    capsys.readouterr()


def test_fp32_is_the_default_precision():
    assert training.TrainConfig(exp_name="x").precision == "fp32"


def test_the_fast_preset_sets_its_recipe_and_typed_flags_override_it(tmp_path, mnist_dir):
    args = tiny_train_args(tmp_path, mnist_dir, "preset", "--preset", "fast", "--epochs", "1")
    assert train.main(args) == 0
    checkpoint = load_checkpoint(tmp_path / "preset" / "checkpoint.ckpt")
    config, model = checkpoint["config"], checkpoint["model_config"]
    recipe = read_recipe("fast", train_options())
    assert recipe["lr"] == 8e-3 and recipe["epochs"] == 6
    for flag, value in recipe.items():
        if flag != "epochs":
            assert config[flag] == value, flag
    assert config["epochs"] == 1 and len(checkpoint["history"]) == 1  # typed: overrides the recipe's 6
    assert model["context"] and (model["context_rows"], model["context_width"]) == (3, 7)
