"""How much memory a run needs, estimated before anything big is allocated, against what is free.

    need_at = lambda batch: training_need(config, batch, train_digits=55_000, eval_digits=10_000, ...)
    check_fits(need_at, 128, "training GRU-128 at batch 128", "lower --hidden")  # or RnnMnistError

An allocation that does not fit does not fail politely: the kernel's OOM killer ends the process
(losing the epoch in progress) or another one on the machine. So ``train.py`` and ``evaluate.py``
add up the large arrays a run will hold (parameters with their gradients and Adam's moments, the
activations a step keeps for every pixel, the completions and pictures evaluate keeps) and refuse
what exceeds the free memory, saying how much it needs and what to lower. The counts follow the
code (rnn_mnist/kernels/gru.py's buffers, rollout.py's canvas) with constants measured on the CPU (peak
RSS, which they match from 10% below to 40% above; GPU kernels keep other buffers): enough to tell
a run that fits from one that needs ten times the machine, not a plan to the last megabyte.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rnn_mnist.data import IMAGE_SIDE, NUM_PIXELS
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.likelihood import TEACHER_FORCED_BATCH
from rnn_mnist.models import CPU_READ_CHUNK, ModelConfig

FLOAT = 4  # bytes: activations, parameters and probabilities are fp32
GATES = {"gru": 3, "lstm": 4, "rnn": 1}  # gate blocks of H per layer
# Floats per hidden unit that one sequence holds per pixel: how the peak RSS of training steps grew
# with the batch (32 to 512, GRU-128 on rnn_mnist/kernels/gru.py: gates_x, rz, gh_n, n, states forward,
# d_gates_x, d_gh and the states' gradients backward; LSTM and RNN on nn.LSTM / nn.RNN), and that
# of teacher-forced passes (100 to 1,000 digits), measured on the CPU and rounded up.
TRAINING_FLOATS = {"gru": 16, "lstm": 19, "rnn": 6}
INFERENCE_FLOATS = 4
# What the first steps add whatever the batch (kernels' workspaces, the allocator's pools): ~190 MB.
RUNTIME_BYTES = 256 * 2**20
# A rollout step: the state and a step's gates (ROLLOUT_STEP_FLOATS per unit), and the prefix read
# in chunks of pixels, each holding its gates and states (ROLLOUT_READ_FLOATS per unit and pixel).
ROLLOUT_STEP_FLOATS, ROLLOUT_READ_FLOATS = 10, 9
# The judge classifies 2,000 images a batch; its activations are about 60 floats a pixel.
JUDGE_BYTES = 2000 * NUM_PIXELS * 60 * FLOAT
# A GIF: up to 90 frames of three 168-pixel panels, as frames and stacked, in RGB.
GIF_BYTES = 2 * 90 * 200 * 540 * 3
# completions.png: an 84 x 84 RGB tile per completion, as tiles, the grid and its encoding.
GRID_BYTES_PER_COMPLETION = 3 * (3 * IMAGE_SIDE) ** 2 * 3


@dataclass
class MemoryNeed:
    """Bytes a run needs on the host (``cpu``) and, when it runs on one, on an accelerator."""

    device: torch.device
    parts: dict[str, int] = field(default_factory=dict)  # what -> bytes, on the run's device
    host_parts: dict[str, int] = field(default_factory=dict)  # what -> bytes, on the host

    def by_device(self) -> dict[str, int]:
        """Total bytes per memory pool: one pool when the run is on the CPU (or MPS, which shares it)."""
        device = "cpu" if self.device.type in ("cpu", "mps") else self.device.type
        totals = {device: sum(self.parts.values())}
        totals["cpu"] = totals.get("cpu", 0) + sum(self.host_parts.values())
        return totals


def format_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} bytes"


def available_bytes(device: torch.device) -> int | None:
    """Memory free for this process on ``device``'s pool; None when it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    return _host_available()


def _host_available() -> int | None:
    """MemAvailable, lowered to what the process's cgroup still allows (containers, CI jobs)."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage, stat, reclaimable in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),  # cgroup v2
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat",
         "total_inactive_file"),  # cgroup v1
    ):  # fmt: skip
        root = Path("/sys/fs/cgroup")
        try:
            cap = int((root / limit).read_text())
            used = int((root / usage).read_text())
            cache = next(
                int(line.split()[1])
                for line in (root / stat).read_text().splitlines()
                if line.split()[0] == reclaimable
            )
        except (OSError, ValueError, IndexError, StopIteration):  # "max", or no such cgroup
            continue
        if cap < 2**60:  # a real limit, not "unlimited"
            found.append(cap - used + cache)
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return max(min(found), 0)


def parameter_count(config: ModelConfig) -> int:
    """The parameters of ``NextPixelModel(config)``, counted without building it (tested against
    the model): the start value, each recurrent layer's weights and two biases, the head."""
    gates, hidden = GATES[config.cell], config.hidden_size
    recurrent = sum(
        gates * hidden * ((config.input_size if layer == 0 else hidden) + hidden + 2)
        for layer in range(config.num_layers)
    )
    width = config.head_hidden
    head = hidden * width + width + width + 1 if width else hidden + 1
    return 1 + recurrent + head


def floats_per_pixel(config: ModelConfig, training: bool) -> int:
    """Floats one sequence holds per pixel in a teacher-forced pass (with its backward pass when
    ``training``): TRAINING_FLOATS or INFERENCE_FLOATS per hidden unit of every layer, plus the
    head's and the inputs'."""
    per_unit = TRAINING_FLOATS[config.cell] if training else INFERENCE_FLOATS
    head = (3 if training else 1) * config.head_hidden
    inputs = (2 if training else 1) * config.input_size
    return per_unit * config.hidden_size * config.num_layers + head + inputs + 4


def training_need(
    config: ModelConfig,
    batch_size: int,
    train_digits: int,
    eval_digits: int,
    device: torch.device,
    eval_batch_size: int,
    dynamic: bool = False,
) -> MemoryNeed:
    """What train.py allocates beyond the data already loaded: parameters with gradients and
    Adam's two moments, then the larger of a training step and an evaluation batch."""
    step_rows, eval_rows = min(batch_size, train_digits), min(eval_batch_size, max(eval_digits, 1))
    step = step_rows * floats_per_pixel(config, True)
    evaluation = eval_rows * floats_per_pixel(config, False)
    parts = {
        "parameters, gradients and Adam's moments": 4 * FLOAT * parameter_count(config),
        "activations": FLOAT * NUM_PIXELS * max(step, evaluation),
        "the runtime": RUNTIME_BYTES,
    }
    host = {"dynamic binarisation": train_digits * NUM_PIXELS * (FLOAT + 1)} if dynamic else {}
    return MemoryNeed(device, parts, host)


def rollout_floats_per_row(config: ModelConfig, mask_pixels: int, device: torch.device) -> int:
    """Floats one completion (a digit's sample) holds while it is drawn (rnn_mnist/rollout.py):
    its canvas, visible prefix and probabilities, and the state and gates of a step; on the CPU
    also the fused step's two pixel-major copies of the canvas (rnn_mnist/kernels/native.py). Reading the
    prefix runs in chunks of pixels on the CPU and all at once elsewhere."""
    visible = NUM_PIXELS - mask_pixels
    read_steps = CPU_READ_CHUNK if device.type == "cpu" else visible
    units = config.num_layers * config.hidden_size
    canvases = 5 if device.type == "cpu" else 3
    state = (ROLLOUT_STEP_FLOATS + read_steps * ROLLOUT_READ_FLOATS) * units
    return canvases * NUM_PIXELS + 3 * mask_pixels + state


def evaluation_need(
    config: ModelConfig,
    digits: int,
    draws: int,
    kept: int,
    batch_size: int,
    mask_pixels: int,
    device: torch.device,
    judge: bool,
    gifs: bool,
    label_posterior: bool,
) -> MemoryNeed:
    """What evaluate.py allocates: ``draws`` completions per digit drawn ``batch_size`` digits at a
    time, ``kept`` of them per digit held to the end with their pictures, teacher-forced passes
    for the masked NLL (and the label posterior), and the judge."""
    rows = min(batch_size, digits) * draws
    teacher_forced = FLOAT * NUM_PIXELS * floats_per_pixel(config, False)
    parts = {
        "the rollout": FLOAT * rows * rollout_floats_per_row(config, mask_pixels, device),
        # at most TEACHER_FORCED_BATCH digits a pass; the label posterior 500 a pass
        "teacher-forced passes": teacher_forced
        * (500 if label_posterior else min(batch_size, digits, TEACHER_FORCED_BATCH)),
        "the runtime": RUNTIME_BYTES,
    }
    completions = digits * kept
    host = {
        "the completions and their picture": completions * (3 * NUM_PIXELS + GRID_BYTES_PER_COMPLETION),
        "the judge": JUDGE_BYTES + completions * 10 * FLOAT if judge else 0,
        "GIFs": GIF_BYTES if gifs else 0,
    }
    return MemoryNeed(device, parts, host)


def shortfall(need: MemoryNeed) -> tuple[int, int] | None:
    """(bytes needed, bytes free) of the first memory pool that ``need`` does not fit; None if it fits
    (or if what is free cannot be told)."""
    for pool, bytes_needed in need.by_device().items():
        free = available_bytes(torch.device(pool))
        if free is not None and bytes_needed > free:
            return bytes_needed, free
    return None


def largest_fitting(need_at: Callable[[int], MemoryNeed], upper: int) -> int:
    """The largest n in 1..upper for which ``need_at(n)`` fits (needs grow with n); 0 if none does."""
    low, high = 0, upper
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if shortfall(need_at(middle)) is None else (low, middle - 1)
    return low


def check_fits(need_at: Callable[[int], MemoryNeed], batch_size: int, what: str, too_big: str) -> None:
    """Refuse, in one line, a run whose ``need_at(batch_size)`` does not fit the free memory: say how
    much it needs, and the batch size that would fit, or else ``too_big`` (what to lower instead)."""
    need = need_at(batch_size)
    short = shortfall(need)
    if short is None:
        return
    needed, free = short
    biggest = max({**need.parts, **need.host_parts}.items(), key=lambda kv: kv[1])[0]
    fitting = largest_fitting(need_at, batch_size - 1)
    advice = f"lower --batch-size to {fitting} or less" if fitting else too_big
    raise RnnMnistError(
        f"{what} needs about {format_bytes(needed)} of memory (mostly {biggest}), but only "
        f"{format_bytes(free)} is free: {advice}"
    )
