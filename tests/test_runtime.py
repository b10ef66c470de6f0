"""rnn_mnist/runtime.py: device choice, seeding and the compute settings."""

from __future__ import annotations

import contextlib
import math

import torch
from conftest import tiny_train_args

import evaluate
import train
from rnn_mnist import runtime, training
from rnn_mnist.checkpoint import load_checkpoint
from rnn_mnist.models import ModelConfig, NextPixelModel

CPU = torch.device("cpu")
LSTM = torch.nn.LSTM(1, 1)


def test_torch_rnn_layers_run_in_fp32_under_bf16_where_the_cpu_has_no_bf16_rnn(monkeypatch):
    """On a CPU whose oneDNN has no bf16 RNN primitive an LSTM under bf16 autocast would fail; it
    runs in fp32 there instead, so its logits equal the fp32 pass exactly."""
    monkeypatch.setattr(runtime, "cpu_bf16_rnn_supported", lambda layer: False)
    torch.manual_seed(0)
    model = NextPixelModel(ModelConfig(cell="lstm", hidden_size=8)).eval()
    pixels = torch.randint(0, 2, (3, 784)).float()
    with torch.no_grad():
        reference = model.teacher_forced_logits(pixels)
        with runtime.autocast(CPU, "bf16"):
            assert torch.is_autocast_enabled("cpu")
            logits = model.teacher_forced_logits(pixels)
    assert logits.dtype == torch.float32
    assert torch.equal(logits, reference)


def test_recurrent_autocast_leaves_autocast_alone_where_bf16_rnns_run(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_bf16_rnn_supported", lambda layer: True)
    with runtime.autocast(CPU, "bf16"):
        assert isinstance(runtime.recurrent_autocast(CPU, LSTM), contextlib.nullcontext)
    monkeypatch.setattr(runtime, "cpu_bf16_rnn_supported", lambda layer: False)
    with runtime.autocast(CPU, "bf16"), runtime.recurrent_autocast(CPU, LSTM):
        assert not torch.is_autocast_enabled("cpu")
    assert isinstance(runtime.recurrent_autocast(CPU, LSTM), contextlib.nullcontext)  # no autocast: as is


def test_cpu_settings_keep_fp32_gemms_at_fp32_accuracy():
    settings = runtime.configure_cpu_math()
    assert settings["float32_matmul_precision"] in ("highest", "medium")
    assert torch.get_float32_matmul_precision() == settings["float32_matmul_precision"]
    a, b = torch.randn(64, 256), torch.randn(256, 384)
    error = ((a @ b).double() - a.double() @ b.double()).abs().max() / (a.double() @ b.double()).abs().max()
    assert error < 1e-5  # bf16 arithmetic would be ~1e-3


X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu vme de: pse avx2 fma avx512f avx512_bf16x

processor\t: 1
cpu family\t: 25
model name\t: AMD EPYC 7B13 64-Core Processor
"""
ARM_CPUINFO = "processor\t: 0\nBogoMIPS\t: 243.75\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n"


def test_the_cpu_is_named_from_cpuinfo_and_from_platform_without_it(monkeypatch, tmp_path):
    assert runtime.configure_cpu_math()["cpu"]  # this machine's (before platform is faked: it is cached)
    assert runtime.cpu_from_cpuinfo(X86_CPUINFO) == {
        "cpu": "AMD EPYC 7B13 64-Core Processor",
        "cpu_family": 25,
        "cpu_features": "avx2 fma avx512f",  # whole words only: avx512_bf16x is none of them
    }
    monkeypatch.setattr(runtime.platform, "processor", lambda: "")  # as on Linux
    monkeypatch.setattr(runtime.platform, "machine", lambda: "aarch64")
    unnamed = {"cpu_family": None, "cpu_features": ""}
    assert runtime.cpu_from_cpuinfo(ARM_CPUINFO) == {"cpu": "aarch64", **unnamed}
    monkeypatch.setattr(runtime.platform, "processor", lambda: "arm")  # as on macOS
    assert runtime.describe_cpu(tmp_path / "no-cpuinfo") == {"cpu": "arm", **unnamed}


def test_bf16_training_runs_records_its_settings_and_evaluates_in_fp32(tmp_path, mnist_dir):
    args = tiny_train_args(tmp_path, mnist_dir, "bf16", "--precision", "bf16", "--context", "--position")
    assert train.main(args) == 0
    checkpoint = load_checkpoint(tmp_path / "bf16" / "checkpoint.ckpt")
    for entry in checkpoint["history"]:
        assert entry["compute"]["precision"] == "bf16"
        assert math.isfinite(entry["test_nll_nats"]) and math.isfinite(entry["train_loss"])
        assert set(entry["compute"]) >= {"float32_matmul_precision", "allocator", "torch", "device", "cpu"}
        assert entry["compute"]["training_recurrence"].startswith("torch ops")  # bf16: not the C loops
    assert all(v.dtype == torch.float32 for v in checkpoint["model_state"].values())  # fp32 master weights


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
