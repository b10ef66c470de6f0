"""The fused C rollout step (rnn_mnist/kernels/native.py, gru_step.c) against the torch-op step."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rnn_mnist import steps
from rnn_mnist.kernels import native
from rnn_mnist.likelihood import teacher_forced_nll
from rnn_mnist.masks import parse_mask
from rnn_mnist.models import ModelConfig, NextPixelModel
from rnn_mnist.rollout import complete
from rnn_mnist.runtime import autocast
from rnn_mnist.scoring import completion_metrics

REPO = Path(__file__).resolve().parent.parent

CONFIGS = {
    "plain": ModelConfig(hidden_size=16),
    "context-position": ModelConfig(hidden_size=16, context=True, position=True),
    "context-2x5-label": ModelConfig(
        hidden_size=24, context=True, context_rows=2, context_width=5, position=True, num_classes=10
    ),
    # an MLP head (--head-hidden): the C step writes the state, the head's layers run in torch
    "mlp-head": ModelConfig(hidden_size=16, context=True, position=True, head_hidden=8),
    "context-2x5-label-mlp-head": ModelConfig(
        hidden_size=24, context=True, context_rows=2, context_width=5, num_classes=10, head_hidden=12
    ),
}
LABELS = torch.tensor([3, 0, 9, 3, 7])


def _model(config: ModelConfig) -> NextPixelModel:
    torch.manual_seed(0)
    model = NextPixelModel(config).eval()
    with torch.no_grad():  # sharper than at initialisation, so that the state carries the digit
        for parameter in model.parameters():
            parameter.mul_(3)
    return model


def _canvas(n: int = 5, seed: int = 1) -> torch.Tensor:
    canvas = torch.bernoulli(torch.full((n, 784), 0.3), generator=torch.Generator().manual_seed(seed))
    canvas[0, :200] = 0  # a blank start: joins the shared read late
    canvas[1, :] = 0  # blank throughout
    return canvas


def _torch_logits(model, canvas, labels) -> torch.Tensor:
    """The reference: teacher-forced logits on torch ops (a pass with a gradient never runs on the
    fused step, which has no backward)."""
    with torch.enable_grad():
        return model.teacher_forced_logits(canvas, labels).detach()


def _require_kernel() -> None:
    if native.load_kernel() is None:
        pytest.skip(native.kernel_status())


def _steps(model, canvas, labels, start: int, precision: str = "fp32") -> tuple[torch.Tensor, object]:
    """Logits of pixels start..783 from read(start) and then the rollout's stepper, teacher-forced."""
    with torch.no_grad(), autocast(canvas.device, precision):
        state = model.read(canvas, start, labels) if start else None
        step = model.stepper(labels, len(canvas), canvas.device)
        logits = []
        for t in range(start, 784):
            logit, state = step(canvas, t, state)
            logits.append(logit)
    return torch.stack(logits, dim=1), step


@pytest.mark.parametrize("start", [0, 37, 500])
@pytest.mark.parametrize("name", CONFIGS)
def test_the_fused_step_gives_the_teacher_forced_logits(name, start):
    _require_kernel()
    config = CONFIGS[name]
    model, canvas = _model(config), _canvas()
    labels = LABELS if config.num_classes else None
    expected = _torch_logits(model, canvas, labels)[:, start:]
    logits, step = _steps(model, canvas, labels, start)
    assert isinstance(step, native.FusedGRUStep)  # the path under test really ran
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("start", "end"), [(0, 784), (37, 300)])
@pytest.mark.parametrize("name", CONFIGS)
def test_a_teacher_forced_pass_without_gradient_equals_the_torch_pass(name, start, end):
    """NextPixelModel.forward under no_grad runs on the fused step; with a gradient (training) it
    cannot, and the two must give the same logits and state."""
    _require_kernel()
    config = CONFIGS[name]
    model, canvas = _model(config), _canvas()
    labels = LABELS if config.num_classes else None
    with torch.no_grad():
        state = model.read(canvas, start, labels) if start else None
        assert steps.uses_fused_step(model, canvas.device)
        fused_logits, fused_state = model(canvas, start, end, labels, state)
        no_logits, state_alone = model(canvas, start, end, labels, state, logits=False)
    assert no_logits is None  # the state alone: no head run (an MLP head's GEMMs skipped)
    torch.testing.assert_close(state_alone, fused_state, rtol=0, atol=0)
    logits, final = model(canvas, start, end, labels, state)  # with a gradient: the torch ops
    assert logits.requires_grad
    torch.testing.assert_close(fused_logits, logits.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused_state, final.detach(), rtol=1e-5, atol=1e-5)


def test_a_model_with_dropout_in_training_mode_keeps_the_torch_ops():
    model = _model(ModelConfig(hidden_size=16, dropout=0.5)).train()
    with torch.no_grad():
        assert not steps.uses_fused_step(model, torch.device("cpu"))
        assert steps.uses_fused_step(model.eval(), torch.device("cpu")) == (native.load_kernel() is not None)


@pytest.mark.parametrize("name", CONFIGS)
def test_under_bf16_the_fused_step_follows_the_torch_step(name):
    """Both round the state to bf16 for the recurrent GEMM; they differ only where a state's last
    fp32 bit moves a bf16 rounding."""
    _require_kernel()
    config = CONFIGS[name]
    model, canvas = _model(config), _canvas()
    labels = LABELS if config.num_classes else None
    fused, step = _steps(model, canvas, labels, 300, "bf16")
    assert isinstance(step, native.FusedGRUStep)
    model.fused_step = False
    reference, step = _steps(model, canvas, labels, 300, "bf16")
    assert not isinstance(step, native.FusedGRUStep)
    torch.testing.assert_close(fused, reference, rtol=0, atol=2e-2)
    fp32 = _torch_logits(model, canvas, labels)[:, 300:]
    assert (fused - fp32).abs().max() > 1e-4  # bf16 did run: it is not the fp32 result


def test_under_bf16_an_mlp_head_runs_in_fp32_on_the_state_the_c_step_wrote():
    """Only the recurrent GEMM follows bf16 autocast; the head stays fp32, as on the torch-op step
    and in NextPixelModel.forward. In bf16 the head's logits would be off by about 1e-2."""
    _require_kernel()
    model, canvas = _model(CONFIGS["mlp-head"]), _canvas()
    with torch.no_grad(), autocast(canvas.device, "bf16"):
        state = model.read(canvas, 400)
        step = model.stepper(None, len(canvas), canvas.device)
        assert isinstance(step, native.FusedGRUStep)
        logit, state = step(canvas, 400, state)
    assert state.dtype == torch.float32
    with torch.no_grad():
        expected = model.head(state[0]).squeeze(1)  # fp32, outside autocast
    torch.testing.assert_close(logit, expected, rtol=1e-6, atol=1e-6)


def test_a_state_changed_between_steps_is_read_afresh():
    """The step keeps the bf16 copy of the state it returned; a caller that changes that state
    (in place) must get a step on the changed state, not on the stale copy."""
    _require_kernel()
    model, canvas = _model(CONFIGS["context-position"]), _canvas()
    with torch.no_grad(), autocast(canvas.device, "bf16"):
        state = model.read(canvas, 400)
        step = model.stepper(None, len(canvas), canvas.device)
        _, state = step(canvas, 400, state)
        state.mul_(-1)
        logit, _ = step(canvas, 401, state)
        model.fused_step = False
        expected, _ = model.stepper(None, len(canvas), canvas.device)(canvas, 401, state)
    torch.testing.assert_close(logit, expected, rtol=0, atol=2e-2)


@pytest.mark.parametrize("name", ["context-position", "context-2x5-label-mlp-head"])
def test_greedy_completions_match_the_torch_step(name):
    _require_kernel()
    model = _model(CONFIGS[name])
    digits = _canvas(20, seed=3).to(torch.uint8)
    labels = torch.arange(20) % 10 if model.config.num_classes else None
    with torch.no_grad():
        assert steps.choose(model, torch.device("cpu")) == steps.FUSED
    fused = complete(model, digits, 284, labels=labels).completed[..., 500:]  # the generated pixels
    model.fused_step = False
    reference = complete(model, digits, 284, labels=labels).completed[..., 500:]
    assert (fused == reference).float().mean() >= 0.99


@pytest.mark.parametrize("name", ["context-position", "mlp-head"])
def test_in_painting_with_resampling_matches_the_torch_step(name):
    """Sequential Monte Carlo replaces the canvas when it resamples and feeds visible runs between
    holes; the fused step's pixel mirror must follow both."""
    _require_kernel()
    model = _model(CONFIGS[name])
    digits = _canvas(6, seed=4).to(torch.uint8)
    hidden = parse_mask("rows:10-13") | parse_mask("rows:18-20")
    results = []
    for fused in (True, False):
        model.fused_step = fused
        generator = torch.Generator().manual_seed(5)
        options = dict(hidden=hidden, sampling="bernoulli", samples=8, inpaint="sample", generator=generator)
        results.append(complete(model, digits, **options))
    (fused, reference) = results
    assert fused.resamples > 0  # resampling happened
    assert fused.resamples == reference.resamples
    assert (fused.completed == reference.completed).float().mean() >= 0.99
    torch.testing.assert_close(fused.probs, reference.probs, rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    ("environment", "reason"),
    [
        ({"RNN_MNIST_NATIVE": "0"}, "RNN_MNIST_NATIVE=0"),
        ({"CC": "no-such-compiler-here"}, "no C compiler found"),
        ({"CC": "false"}, "building gru_step.c failed"),
    ],
)
def test_without_the_kernel_the_rollout_keeps_the_torch_step(environment, reason, monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setenv("RNN_MNIST_CACHE", str(tmp_path))  # nothing built there yet
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    assert native.load_kernel() is None
    assert reason in native.kernel_status()
    model = _model(CONFIGS["context-position"])
    assert reason in steps.describe_step(model, torch.device("cpu"))
    _, step = _steps(model, _canvas(), None, 700)
    assert not isinstance(step, native.FusedGRUStep)
    completed = complete(model, _canvas(3).to(torch.uint8), 10).completed
    assert completed.shape == (3, 1, 784)


def test_models_the_kernel_does_not_cover_keep_the_torch_step():
    for config in (
        ModelConfig(hidden_size=16, num_layers=2),
        ModelConfig(cell="lstm", hidden_size=16),
        ModelConfig(hidden_size=native.MAX_HIDDEN + 1),  # the C step's buffers are fixed-size
        ModelConfig(hidden_size=16, context=True, context_rows=10, context_width=27),  # 271 inputs
    ):
        model = _model(config)
        assert "torch ops" in steps.describe_step(model, torch.device("cpu"))
        with torch.no_grad():
            assert not isinstance(model.stepper(None, 2, torch.device("cpu")), native.FusedGRUStep)


def test_bad_inputs_are_refused_before_the_c_step_reads_them():
    """The C step indexes raw memory: mismatched shapes and labels must be errors, not overflows."""
    _require_kernel()
    model, canvas = _model(CONFIGS["context-position"]), _canvas(4)
    with torch.no_grad():
        step = model.stepper(None, 4, canvas.device)
        with pytest.raises(ValueError, match="bad input"):
            step(canvas, 300, torch.zeros(1, 6, 16))  # six states for four digits
        labelled = _model(CONFIGS["context-2x5-label"])
        with pytest.raises(ValueError, match="labels"):
            labelled.stepper(torch.tensor([1, 2]), 4, canvas.device)(canvas, 300, None)
        with pytest.raises(ValueError, match="labels must be in"):
            labelled.stepper(torch.tensor([1, 2, 3, 10]), 4, canvas.device)
        with pytest.raises(ValueError, match="pixels"):
            native.FusedGRUStep(model.step_weights(), None, torch.float32).read(canvas[:, :100], 200)


@pytest.mark.parametrize("batch", [0, 1])
def test_empty_and_single_digit_batches(batch):
    _require_kernel()
    model, canvas = _model(CONFIGS["context-position"]), _canvas(5)[:batch]
    with torch.no_grad():
        state = model.read(canvas, 300)
        assert state.shape == (1, batch, 16)
        logits, _ = model(canvas, 300, 784, None, state)
    assert logits.shape == (batch, 484)
    torch.testing.assert_close(logits, _torch_logits(model, canvas, None)[:, 300:], rtol=1e-4, atol=1e-4)


def test_the_fused_step_runs_under_inference_mode():
    _require_kernel()
    model, canvas = _model(CONFIGS["context-position"]), _canvas()
    with torch.inference_mode():
        completed = complete(model, canvas.to(torch.uint8), 100, precision="bf16").completed
    with torch.no_grad():
        again = complete(model, canvas.to(torch.uint8), 100, precision="bf16").completed
    assert torch.equal(completed, again)


def test_a_new_build_replaces_the_stale_ones_in_the_cache(monkeypatch, tmp_path):
    _require_kernel()  # a compiler works here
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setenv("RNN_MNIST_CACHE", str(tmp_path))
    stale = tmp_path / "gru_step-0123456789abcdef.so"
    stale.write_bytes(b"an old build")
    assert native.load_kernel() is not None
    assert not stale.exists()
    assert len(list(tmp_path.glob("gru_step-*.so"))) == 1  # the new build


# --- the library: where it comes from, what is loaded (rnn_mnist/kernels/library.py) ---


def _reload(monkeypatch, cache: Path, **environment: str) -> object:
    """load_kernel() afresh (as a new process would) with the kernel cache in ``cache``."""
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setenv("RNN_MNIST_CACHE", str(cache))
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    return native.load_kernel()


def _libraries(cache: Path) -> list[Path]:
    return sorted(cache.glob("gru_step-*.so"))


def _planted_library(tmp_path: Path) -> tuple[Path, Path]:
    """A library with the kernel's symbol whose constructor leaves a marker file, and that marker's
    path: what someone who can write to the cache would plant."""
    marker = tmp_path / "planted-code-ran"
    source = tmp_path / "planted.c"
    source.write_text(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void planted(void) {\n"
        f'    FILE *f = fopen("{marker}", "w"); if (f) fclose(f);\n'
        "}\n"
        "void gru_step(void) {}\n"
    )
    planted = tmp_path / "planted.so"
    subprocess.run(["cc", "-shared", "-fPIC", str(source), "-o", str(planted)], check=True)
    return planted, marker


def _replace(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` as a new file: the library there is loaded in this process, and
    writing into its pages would change (or, truncated, fault) the code mapped from them."""
    incoming = path.with_name(path.name + ".incoming")
    incoming.write_bytes(data)
    incoming.chmod(path.stat().st_mode)
    os.replace(incoming, path)


def _plant(planted: Path, cache: Path) -> None:
    """Put ``planted`` in place of every library in the cache (their names are public facts)."""
    libraries = _libraries(cache)
    assert libraries
    for path in libraries:
        _replace(path, planted.read_bytes())


def _fused_logits_match_torch() -> None:
    """The fused step (now loaded) gives the torch step's logits: it is the real kernel."""
    model, canvas = _model(CONFIGS["context-position"]), _canvas()
    logits, step = _steps(model, canvas, None, 600)
    assert isinstance(step, native.FusedGRUStep)
    torch.testing.assert_close(logits, _torch_logits(model, canvas, None)[:, 600:], rtol=1e-4, atol=1e-4)


_USE_THE_KERNEL = """
import torch
from rnn_mnist.kernels import native
from rnn_mnist.models import ModelConfig, NextPixelModel
torch.manual_seed(0)
model = NextPixelModel(ModelConfig(hidden_size=16, context=True, position=True)).eval()
canvas = torch.bernoulli(torch.full((3, 784), 0.3))
with torch.no_grad():
    fused, _ = model(canvas, 0, 784, None, None)
reference, _ = model(canvas, 0, 784, None, None)  # with a gradient: on torch ops
print(native.kernel_status())
print("max difference", float((fused - reference.detach()).abs().max()))
"""


def _max_difference(result: subprocess.CompletedProcess) -> float:
    return float(result.stdout.split("max difference")[1])


def _python(code: str, cache: Path, **environment: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RNN_MNIST_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code], env={**env, **environment}, capture_output=True, text=True, timeout=300
    )


def test_a_library_planted_in_the_cache_is_rebuilt_never_run(monkeypatch, tmp_path):
    """A library in place of the cached one (its name is computed from public facts) is not
    loaded by a later run: it does not hash to what was built, so it is built over."""
    _require_kernel()
    cache = tmp_path / "cache"
    assert _reload(monkeypatch, cache) is not None
    planted, marker = _planted_library(tmp_path)
    _plant(planted, cache)
    result = _python(_USE_THE_KERNEL, cache)  # a later run: a new process
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert not marker.exists()  # its constructor never ran
    assert "building it again" in result.stderr
    assert "fused C step" in result.stdout and _max_difference(result) < 1e-4
    assert all(path.read_bytes() != planted.read_bytes() for path in _libraries(cache))


def _give_away(path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("giving a file to another user takes root")
    os.chown(path, 65534, 65534, follow_symlinks=False)


@pytest.mark.parametrize("how", ["writable by others", "another user's"])
def test_a_cache_folder_that_is_not_the_users_alone_is_refused(how, monkeypatch, tmp_path, capsys):
    """Anyone who can write to the cache could put a library there: nothing of it is loaded, the
    torch-op step runs, and one line says why."""
    _require_kernel()
    cache = tmp_path / "cache"
    assert _reload(monkeypatch, cache) is not None
    planted, marker = _planted_library(tmp_path)
    _plant(planted, cache)
    if how == "writable by others":
        cache.chmod(0o777)
    else:
        _give_away(cache)
    capsys.readouterr()
    assert _reload(monkeypatch, cache) is None
    assert not marker.exists()
    expected = "writable by others" if how == "writable by others" else "belongs to another user"
    assert expected in native.kernel_status() and "RNN_MNIST_CACHE" in native.kernel_status()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "torch ops" in line and expected in line
    assert expected in steps.describe_step(_model(CONFIGS["plain"]), torch.device("cpu"))


@pytest.mark.parametrize("how", ["a link", "writable by others", "another user's", "without a hash"])
def test_a_cached_library_that_cannot_be_vouched_for_is_rebuilt(how, monkeypatch, tmp_path):
    _require_kernel()
    cache = tmp_path / "cache"
    assert _reload(monkeypatch, cache) is not None
    planted, marker = _planted_library(tmp_path)
    (path,) = _libraries(cache)
    sidecar = path.with_name(path.name + ".sha256")
    if how == "a link":  # to a planted library whose hash is recorded as the cache's
        path.unlink()
        path.symlink_to(planted)
        sidecar.write_text(hashlib.sha256(planted.read_bytes()).hexdigest())
    elif how == "writable by others":
        path.chmod(0o777)
    elif how == "another user's":
        _give_away(path)
    else:
        sidecar.unlink()
    assert _reload(monkeypatch, cache) is not None
    assert not marker.exists()
    info = path.lstat()
    assert stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022
    assert sidecar.read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()
    _fused_logits_match_torch()


@pytest.mark.parametrize("size", [1000, 16000])
def test_a_truncated_library_is_rebuilt_not_run(size, monkeypatch, tmp_path):
    """A truncated library loads (its headers are whole) and then faults where its code is
    missing: a bus error that ended every later run. Its hash does not match: it is rebuilt."""
    _require_kernel()
    cache = tmp_path / "cache"
    assert _reload(monkeypatch, cache) is not None
    (path,) = _libraries(cache)
    whole = path.stat().st_size
    _replace(path, path.read_bytes()[:size])
    result = _python(_USE_THE_KERNEL, cache)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "fused C step" in result.stdout and _max_difference(result) < 1e-4
    assert path.stat().st_size == whole


def test_a_cc_that_cannot_be_split_into_words_falls_back_in_one_line(monkeypatch, tmp_path, capsys):
    assert _reload(monkeypatch, tmp_path / "cache", CC='gcc "') is None
    assert "CC='gcc \"' cannot be read" in native.kernel_status()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "torch ops" in line and "No closing quotation" in line


def _fake_compiler(tmp_path: Path, name: str, body: str) -> Path:
    """A shell script standing in for cc: it answers --version, and runs ``body`` for a build."""
    script = tmp_path / name
    script.write_text(f'#!/bin/sh\ncase "$*" in *--version*) echo "{name} 1.0"; exit 0;; esac\n{body}\n')
    script.chmod(0o755)
    return script


def test_a_compiler_that_makes_junk_leaves_nothing_cached(monkeypatch, tmp_path, capsys):
    _require_kernel()  # cc works here: it takes over at the end
    junk = 'yes junk | head -c 8192 > "$2"'  # into the file named after -o
    writes_junk = f'while [ $# -gt 0 ]; do [ "$1" = "-o" ] && {junk}; shift; done; exit 0'
    junk_cc = _fake_compiler(tmp_path, "junk-cc", writes_junk)
    cache = tmp_path / "cache"
    for _ in range(2):  # the second run builds again: nothing was kept
        assert _reload(monkeypatch, cache, CC=str(junk_cc)) is None
        status = native.kernel_status()
        assert "building gru_step.c failed" in status and "does not load" in status
        assert "invalid ELF header" in capsys.readouterr().err
        assert _libraries(cache) == [] and list(cache.glob("*.sha256")) == []
    monkeypatch.delenv("CC")
    assert _reload(monkeypatch, cache) is not None  # a working compiler now: the fused step is back


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie no one has reaped yet has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def test_a_hanging_compiler_is_stopped_with_its_children(monkeypatch, tmp_path, capsys):
    """The compiler runs under a time limit in its own process group: on time out the group is
    killed (a child holding the pipes would otherwise keep this process waiting), one line says so."""
    pid_file = tmp_path / "child.pid"
    hanging_cc = _fake_compiler(tmp_path, "hanging-cc", f'sleep 150 &\necho $! > "{pid_file}"\nwait')
    started = time.monotonic()
    loaded = _reload(monkeypatch, tmp_path / "cache", CC=str(hanging_cc), RNN_MNIST_CC_TIMEOUT="2")
    assert loaded is None and time.monotonic() - started < 60
    assert "ran over 2 s and was stopped" in native.kernel_status()
    assert "RNN_MNIST_CC_TIMEOUT" in capsys.readouterr().err
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(child)


def test_a_build_folder_left_by_a_killed_build_is_removed_by_the_next(monkeypatch, tmp_path):
    _require_kernel()
    cache = tmp_path / "cache"
    pid_file = tmp_path / "compiler.pid"
    slow_cc = _fake_compiler(tmp_path, "slow-cc", f'echo $$ > "{pid_file}"\nexec sleep 60')
    building = subprocess.Popen(
        [sys.executable, "-c", "from rnn_mnist.kernels import native; native.load_kernel()"],
        env={**os.environ, "RNN_MNIST_CACHE": str(cache), "CC": str(slow_cc), "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        (left,) = cache.glob(".build-*")  # the build is under way
        building.send_signal(signal.SIGKILL)
        building.wait()
    finally:
        building.kill()
        if pid_file.exists():  # the compiler it started, in a session of its own, is orphaned now
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    old = cache / f".build-{os.getpid()}-old"  # a live process's, but far older than a build takes
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    live = cache / f".build-{os.getpid()}-live"  # a build under way now: kept
    live.mkdir()
    assert left.exists()
    assert _reload(monkeypatch, cache) is not None
    assert not left.exists() and not old.exists() and live.exists()


def test_two_compiler_settings_keep_their_own_libraries(monkeypatch, tmp_path):
    """A cache shared by two compiler settings (CC=cc and CC="cc -DOTHER"): each build removes only
    the older builds of its own setting, so the two do not rebuild over each other every run."""
    _require_kernel()
    cache = tmp_path / "cache"
    assert _reload(monkeypatch, cache, CC="cc") is not None
    (first,) = _libraries(cache)
    built = first.stat().st_mtime_ns, first.stat().st_ino
    assert _reload(monkeypatch, cache, CC="cc -DOTHER_SETTING") is not None
    assert len(_libraries(cache)) == 2 and first.exists()
    assert _reload(monkeypatch, cache, CC="cc") is not None
    assert (first.stat().st_mtime_ns, first.stat().st_ino) == built  # loaded, not rebuilt
    assert len(_libraries(cache)) == 2


def test_a_build_under_a_umask_that_lets_the_group_write_is_reused(monkeypatch, tmp_path):
    """A library the linker made group-writable (umask 002) would fail its own check on every
    later load: it is made the user's alone before it is moved into place."""
    _require_kernel()
    cache = tmp_path / "cache"
    previous = os.umask(0o002)
    try:
        assert _reload(monkeypatch, cache) is not None
    finally:
        os.umask(previous)
    (path,) = _libraries(cache)
    built = path.stat().st_mtime_ns, path.stat().st_ino
    assert _reload(monkeypatch, cache) is not None
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == built


# --- the switch: RNN_MNIST_NATIVE ---


@pytest.mark.parametrize("value", ["0", "false", "off", "no", " 0", "OFF", "No ", "False"])
def test_the_usual_spellings_of_off_keep_the_torch_step(value, monkeypatch, tmp_path, capsys):
    assert not _reload(monkeypatch, tmp_path, RNN_MNIST_NATIVE=value)
    assert native.kernel_status() == f"torch ops (RNN_MNIST_NATIVE={value.strip()})"
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"RNN_MNIST_NATIVE={value.strip()}" in line
    assert not isinstance(_steps(_model(CONFIGS["plain"]), _canvas(), None, 780)[1], native.FusedGRUStep)


@pytest.mark.parametrize("value", ["1", "true", "on", "yes", " YES ", "True", ""])
def test_the_usual_spellings_of_on_ask_for_the_fused_step(value, monkeypatch):
    monkeypatch.setenv("RNN_MNIST_NATIVE", value)
    assert native.native_requested()


@pytest.mark.parametrize("value", ["maybe", "2", "0 1", "nope", "-1"])
def test_a_switch_that_is_neither_on_nor_off_is_refused(value, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RNN_MNIST_NATIVE", value)
    with pytest.raises(ValueError, match="RNN_MNIST_NATIVE"):
        native.native_requested()
    assert _reload(monkeypatch, tmp_path) is None  # reached anyway (not through a script): torch ops
    assert f"RNN_MNIST_NATIVE={value!r}" in capsys.readouterr().err


# --- NaN and inf: the two steps agree (-fno-finite-math-only) ---

NAN, INF = float("nan"), float("inf")
LABELLED = CONFIGS["context-2x5-label"]  # 11 pixel inputs, 56 position columns, then 10 labels


def _spoil(model: NextPixelModel, where: str, value: float) -> None:
    """Set one weight of ``model`` to ``value``."""
    hidden, label_3 = model.config.hidden_size, 11 + 56 + 3
    entries = {
        "W_hh": (model.rnn.weight_hh_l0, (5, 3)),
        "pixel column": (model.rnn.weight_ih_l0, (hidden + 2, 1)),
        "position column": (model.rnn.weight_ih_l0, (7, 11 + 4)),
        "label 3 column": (model.rnn.weight_ih_l0, (2 * hidden + 1, label_3)),
        "label 3 column, z gate": (model.rnn.weight_ih_l0, (hidden + 4, label_3)),
        "input bias": (model.rnn.bias_ih_l0, (2 * hidden + 6,)),
        "b_hn": (model.rnn.bias_hh_l0, (2 * hidden + 6,)),
        "head weight": (model.head.weight, (0, 9)),
        "head bias": (model.head.bias, (0,)),
        "start value": (model.start_pixel, (0,)),
    }
    tensor, index = entries[where]
    with torch.no_grad():
        tensor[index] = value


@pytest.mark.parametrize(
    ("where", "value", "surfaces"),
    [
        ("W_hh", NAN, True), ("W_hh", INF, True), ("pixel column", NAN, True),
        ("pixel column", -INF, True), ("position column", NAN, True), ("position column", INF, False),
        ("label 3 column", NAN, True), ("label 3 column", INF, True),
        ("label 3 column, z gate", -INF, True), ("input bias", NAN, True), ("input bias", INF, False),
        ("input bias", -INF, False), ("b_hn", NAN, True), ("head weight", NAN, True),
        ("head weight", INF, True), ("head bias", NAN, True), ("start value", NAN, True),
    ],
)  # fmt: skip
def test_a_non_finite_weight_gives_the_same_logits_on_both_steps(where, value, surfaces):
    """The fused step's logits are the torch step's, NaN and inf in the same places: a NaN weight
    surfaces, and so does an infinite one multiplied (0 * inf is NaN); an infinite bias or position
    term, added, saturates its gate on both."""
    _require_kernel()
    model, canvas = _model(LABELLED), _canvas()
    _spoil(model, where, value)
    logits, step = _steps(model, canvas, LABELS, 0)
    assert isinstance(step, native.FusedGRUStep)
    expected = _torch_logits(model, canvas, LABELS)
    assert bool(torch.isfinite(expected).all()) != surfaces
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4, equal_nan=True)
    with torch.no_grad():
        fused_pass, _ = model(canvas, 0, 784, LABELS, None)  # forward without a gradient: fused too
    torch.testing.assert_close(fused_pass, expected, rtol=1e-4, atol=1e-4, equal_nan=True)


def test_a_nan_in_w_hh_gives_nan_nll_and_the_torch_steps_accuracy():
    """The issue's case: one NaN weight in W_hh. On the torch-op step the masked NLL is NaN and the
    greedy completion predicts no ink; the fused step must say the same, not a plausible NLL."""
    _require_kernel()
    model = _model(CONFIGS["context-position"])
    _spoil(model, "W_hh", NAN)
    digits = _canvas(12, seed=6).to(torch.uint8)
    hidden, labels = parse_mask("suffix:284"), torch.zeros(12, dtype=torch.long)
    results = []
    for fused in (True, False):
        model.fused_step = fused
        with torch.no_grad():
            assert steps.uses_fused_step(model, torch.device("cpu")) == fused
        completed = complete(model, digits, 284).completed
        nll = teacher_forced_nll(model, digits.float(), None, hidden)
        results.append(completion_metrics(completed, digits, labels, nll, hidden))
    fused_metrics, torch_metrics = results
    assert torch_metrics["masked_nll_nats"] != torch_metrics["masked_nll_nats"]  # NaN
    assert fused_metrics["masked_nll_nats"] != fused_metrics["masked_nll_nats"]
    assert fused_metrics["masked_pixel_accuracy"] == torch_metrics["masked_pixel_accuracy"]
