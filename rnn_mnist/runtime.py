"""Where and how a run computes: the device, the seeds and RNG states, and the arithmetic settings.
Decided here, once, for training, evaluation, reading and the judge, and recorded with every epoch,
because each of these can change speed and some change numbers.

    device = resolve_device("auto")                  # CUDA, then MPS, then the CPU
    set_seed(0)                                      # Python, NumPy and torch
    state = capture_rng(generator, device)           # into a checkpoint; restore_rng(state, ...) on resume
    settings = configure_cpu_math()                  # at start-up: allocator and fp32 GEMM routing
    with autocast(device, "bf16"):                   # --precision bf16: a training step's forward
        logits = model.teacher_forced_logits(pixels)

- ``--precision bf16``: bf16 autocast of the forward pass (CPU and CUDA). Weights, the recurrent
  state, the loss and every evaluation NLL stay fp32; the recurrent and input GEMMs (and on the CPU
  GRU path, the weight-gradient GEMM) run in bf16. ``fp32`` runs everything in fp32.
- fp32 GEMM routing on the CPU: ``torch.set_float32_matmul_precision("medium")`` sends fp32 GEMMs
  to oneDNN, which on this AMD CPU computes the same fp32 results about 1.6x faster than MKL, but on
  CPUs with AMX lets them run in bf16. So it is switched on only after a probe shows that it leaves
  fp32 GEMM accuracy unchanged on this machine; otherwise fp32 stays "highest".
- The allocator: a training step allocates a few hundred MB of activations and frees them again.
  glibc returns blocks over 32 MB to the kernel at once, so every step page-faults them back in
  (measured: a quarter of a GRU-128 step). Raising its mmap and trim thresholds keeps them.
- torch's own RNN layers under bf16 autocast on the CPU need a oneDNN bf16 primitive, which some CPUs
  without native bf16 lack for some layer types (measured: ``nn.LSTM`` on an AMD EPYC without
  AVX512-BF16, "could not create a primitive descriptor"): there ``recurrent_autocast`` runs that
  layer in fp32 (a probe per layer type decides).
- The record names the CPU (/proc/cpuinfo's model name and family, else ``platform``'s name), so
  that the speed figures of a run name their host.
- RNG states are saved as plain values and CPU tensors, so that a checkpoint holding them loads with
  ``weights_only=True`` on any machine, GPUs or none.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rnn_mnist.errors import RnnMnistError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_settings: dict[str, Any] | None = None


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; an unavailable explicit choice is an error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise RnnMnistError(f"--device {name} was asked for, but this machine has no {name.upper()}")
    return torch.device(name)


def set_seed(seed: int) -> None:
    """Seed every generator the toolkit touches: Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def capture_rng(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Every RNG state a resumed run needs, as plain values and CPU tensors."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss),
        "torch": torch.get_rng_state(),
        "shuffle": generator.get_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator, device: torch.device) -> str | None:
    """Put back what ``capture_rng`` saved. Returns a line for the log when the run was saved with
    more GPUs than this machine has: the states of the GPUs present are restored, the rest dropped
    (``torch.cuda.set_rng_state_all`` would raise an IndexError instead)."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    if device.type != "cuda" or "cuda" not in state:
        return None
    saved, present = len(state["cuda"]), torch.cuda.device_count()
    for index, gpu_state in enumerate(state["cuda"][:present]):
        torch.cuda.set_rng_state(gpu_state, index)
    if saved <= present:
        return None
    return f"saved with {saved} GPUs, resumed on {present}: RNG states of GPUs {present}..{saved - 1} dropped"


def _keep_freed_memory() -> str:
    """Ask glibc to keep large freed blocks for reuse rather than unmapping them."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        ok = (
            libc is not None
            and libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
            and libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)
        )
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): leave it as it is
        ok = False
    return "glibc: keeps freed blocks up to 1 GiB" if ok else "system default"


def _relative_error(a: torch.Tensor, b: torch.Tensor, reference: torch.Tensor) -> float:
    return ((a @ b).double() - reference).abs().max().item() / reference.abs().max().item()


def _route_fp32_gemms() -> str:
    """Use oneDNN for fp32 GEMMs when a probe shows it keeps fp32 accuracy here; return the choice."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 256, generator=generator), torch.randn(256, 384, generator=generator)
    reference = a.double() @ b.double()
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    strict = _relative_error(a, b, reference)
    torch.set_float32_matmul_precision("medium")
    routed = _relative_error(a, b, reference)
    if routed <= 4 * strict + 1e-6:  # bf16 arithmetic would be ~1e-3
        return "medium"
    torch.set_float32_matmul_precision(before)
    return before


# The instruction sets that change our speed: Zen 3 and Zen 4 share `cpu family` 25 (and a cloud
# host's model name may be a bare "AMD EPYC"), but only Zen 4 has AVX-512 and bf16 arithmetic.
SPEED_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_from_cpuinfo(text: str) -> dict[str, Any]:
    """The CPU a run computes on, from the text of /proc/cpuinfo: its first ``model name``, ``cpu
    family`` (an int) and which of SPEED_FEATURES its ``flags`` list; where the model is missing
    (ARM lists no model name) it falls back to ``platform``'s name, and the family is None."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields.setdefault(key.strip(), value.strip())
    family, flags = fields.get("cpu family", ""), set(fields.get("flags", "").split())
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine() or "unknown",
        "cpu_family": int(family) if family.isdigit() else None,
        "cpu_features": " ".join(f for f in SPEED_FEATURES if f in flags),
    }


def describe_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """This machine's CPU (``cpu_from_cpuinfo``), so that a run's speed figures name their host;
    without ``cpuinfo`` (macOS, Windows) from ``platform`` alone."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    return cpu_from_cpuinfo(text)


def configure_cpu_math() -> dict[str, Any]:
    """Apply the allocator and fp32 GEMM settings once per process; return what was chosen, with the
    torch version and the CPU it runs on."""
    global _settings
    if _settings is None:
        _settings = {
            "torch": str(torch.__version__),
            **describe_cpu(),
            "cpu_threads": torch.get_num_threads(),
            "float32_matmul_precision": _route_fp32_gemms(),
            "allocator": _keep_freed_memory(),
        }
    return dict(_settings)


def compute_record(device: torch.device, precision: str) -> dict[str, Any]:
    """Check that ``precision`` runs on ``device``, apply the CPU math settings, and return what a
    training run records with every epoch: those settings, the precision and the device."""
    if precision == "bf16" and device.type == "mps":
        raise RnnMnistError("--precision bf16 runs on the CPU and CUDA; use fp32 on MPS")
    return {**configure_cpu_math(), "precision": precision, "device": str(device)}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a training forward pass runs in for ``precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@functools.cache
def cpu_bf16_rnn_supported(layer: type[torch.nn.RNNBase]) -> bool:
    """Whether this CPU runs torch's RNN layer of this type under bf16 autocast (a one-step probe)."""
    probe = layer(1, 1)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            probe(torch.zeros(1, 1, 1))
    except RuntimeError:  # oneDNN has no bf16 primitive for this layer on this CPU
        return False
    return True


def recurrent_autocast(device: torch.device, layer: torch.nn.RNNBase) -> contextlib.AbstractContextManager:
    """The context for a call of torch's own RNN ``layer``: as it stands, except under CPU bf16
    autocast on a CPU that cannot run that layer type (``cpu_bf16_rnn_supported``), where it runs
    in fp32 instead of failing. Inputs must then be fp32: callers pass ``x.float()``."""
    if device.type == "cpu" and torch.is_autocast_enabled("cpu") and not cpu_bf16_rnn_supported(type(layer)):
        return torch.autocast("cpu", enabled=False)
    return contextlib.nullcontext()
