"""The step chooser (rnn_mnist/steps.py): one door to the backends, and kernels that never see the model."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import train
from rnn_mnist import steps
from rnn_mnist.cli import run_cli
from rnn_mnist.kernels import native
from rnn_mnist.kernels.fast_step import FastGRUStep
from rnn_mnist.models import ModelConfig, NextPixelModel
from rnn_mnist.rollout import complete

PACKAGE = Path(__file__).resolve().parent.parent / "rnn_mnist"
CPU = torch.device("cpu")


def _imports(path: Path) -> set[str]:
    """The modules ``path`` imports (``from a import b`` gives a and a.b: b may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _calls(path: Path, name: str) -> int:
    """How many calls in ``path`` are to a function called ``name`` (as ``x.name(...)`` or ``name(...)``)."""
    count = 0
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            count += called == name
    return count


def test_the_kernels_import_nothing_from_the_model_or_the_chooser():
    kernels = sorted((PACKAGE / "kernels").glob("*.py"))
    assert {path.name for path in kernels} >= {"__init__.py", "gru.py", "native.py", "weights.py"}
    assert all((PACKAGE / "kernels" / name).exists() for name in ("gru_step.c", "gru_backward.md"))
    for path in kernels:  # the kernels package and the data's constants, nothing else of ours
        ours = {name for name in _imports(path) if name.startswith("rnn_mnist")}
        outside = {name for name in ours if not name.startswith(("rnn_mnist.kernels", "rnn_mnist.data"))}
        assert not outside, f"{path.name} imports {sorted(outside)}"


def test_the_chooser_is_the_only_caller_of_native_supports():
    callers = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if _calls(path, "supports") and path.name != "native.py"
    }
    assert callers == {"steps.py"}
    assert _calls(PACKAGE / "kernels" / "native.py", "supports") == 0  # defined there, not called


def _model(**overrides) -> NextPixelModel:
    torch.manual_seed(0)
    return NextPixelModel(ModelConfig(hidden_size=8, **overrides)).eval()


def test_the_backend_follows_the_gradient_mode_the_switches_and_the_cell():
    model = _model(context=True, position=True)
    fused = steps.FUSED if native.load_kernel() is not None else steps.FAST
    assert steps.choose(model, CPU) == steps.FAST  # a gradient wanted: the fused step has no backward
    with torch.no_grad():
        assert steps.choose(model, CPU) == fused
        model.fused_step = False
        assert steps.choose(model, CPU) == steps.FAST
        model.fast_gru = False
        assert steps.choose(model, CPU) == steps.NN
        assert steps.choose(_model(cell="lstm"), CPU) == steps.NN
        assert steps.choose(_model(num_layers=2), CPU) == steps.FAST
        assert steps.choose(_model(head_hidden=4), CPU) == fused  # an MLP head: its layers in torch
        assert steps.choose(_model(), torch.device("meta")) == steps.NN  # not the CPU: torch's modules


def test_the_stepper_is_the_chosen_backend(monkeypatch):
    model = _model(num_classes=10)
    labels = torch.tensor([1, 2])
    step = model.stepper(labels, 2, CPU)
    if native.load_kernel() is not None:
        assert isinstance(step, native.FusedGRUStep)
    model.fused_step = False
    assert isinstance(model.stepper(labels, 2, CPU), FastGRUStep)
    model.fast_gru = False
    assert not isinstance(model.stepper(labels, 2, CPU), FastGRUStep | native.FusedGRUStep)


@pytest.mark.parametrize("overrides", [{}, {"position": True, "num_classes": 10}, {"head_hidden": 4}])
def test_step_weights_are_views_of_the_parameters_gradients_reach(overrides):
    """The weights handed to the kernels are the model's own parameters (views), not copies: a
    training pass on the fast step updates what the checkpoint holds."""
    model = _model(context=True, **overrides).train()
    weights = model.step_weights()
    assert weights.input_columns.data_ptr() == model.rnn.weight_ih_l0.data_ptr()
    assert weights.num_pixel_inputs == 1 + model.config.num_context
    assert weights.num_classes == model.config.num_classes
    assert len(weights.head) == (2 if model.config.head_hidden else 1)
    pixels = torch.bernoulli(torch.full((2, 784), 0.3), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([4, 5]) if model.config.num_classes else None
    model.teacher_forced_logits(pixels, labels).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(
    ("environment", "reason"),
    [
        ({"CC": "false"}, "building gru_step.c failed"),
        ({"CC": "no-such-compiler-here"}, "no C compiler found"),
        ({"RNN_MNIST_NATIVE": "off"}, "RNN_MNIST_NATIVE=off"),
    ],
)
def test_a_fallback_to_torch_ops_is_said_once_on_stderr(environment, reason, monkeypatch, tmp_path, capsys):
    """Whatever keeps the fused step from running is said on the console, once a process, as well
    as recorded (``describe_step``, which evaluation writes as ``rollout_step``)."""
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setenv("RNN_MNIST_CACHE", str(tmp_path))
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    model = _model(context=True, position=True)
    assert reason in steps.describe_step(model, CPU)
    complete(model, torch.bernoulli(torch.full((3, 784), 0.3)).to(torch.uint8), 700)
    with torch.no_grad():
        assert steps.choose(model, CPU) == steps.FAST
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("note: rollouts and GRU training run on torch ops") and reason in line


def test_the_fused_step_running_says_nothing(monkeypatch):
    if native.load_kernel() is None:
        pytest.skip(native.kernel_status())
    assert "fused C step" in steps.describe_step(_model(), CPU)


@pytest.mark.parametrize("value", ["maybe", "2", "of"])
def test_a_native_switch_neither_on_nor_off_is_refused_before_any_work(value, monkeypatch, tmp_path, capsys):
    """The kernel is loaded lazily (in training at the first validation pass): a bad switch is
    refused by every script before its work starts, in one line."""
    monkeypatch.setenv("RNN_MNIST_NATIVE", value)
    ran = []
    assert run_cli(lambda: ran.append(True)) == 2
    assert ran == []
    monkeypatch.chdir(tmp_path)
    assert train.main(["--exp-name", "never", "--data-dir", str(tmp_path / "no-data")]) == 2
    assert not (tmp_path / "experiments").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "Traceback" not in err
    assert all(line.startswith(f"error: RNN_MNIST_NATIVE={value!r}") for line in err.splitlines())
