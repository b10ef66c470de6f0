"""rnn_mnist/runtime.py: device choice, seeding and the compute settings."""

from __future__ import annotations

import contextlib

import torch

from rnn_mnist import runtime
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
