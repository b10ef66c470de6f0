"""The fused C library (gru_step.c, beside this file): the rollout's GRU step, and the GRU training
recurrence's loops; built with the system C compiler on first use.

    kernel = load_kernel()          # None, with the reason in kernel_status(), if it cannot be built
    step = FusedGRUStep(model.step_weights(), labels, matmul_dtype=torch.bfloat16)
    logit, state = step(canvas, t, state)            # what NextPixelModel.stepper's step returns
    state = step.read(canvas, end)                   # NextPixelModel.read, sharing blank starts
    logits, state = step.forward(canvas, 0, 784, None)   # NextPixelModel.forward without a gradient

It takes the model's weights as plain tensors (rnn_mnist/kernels/weights.py), never the model;
rnn_mnist/steps.py decides when the step runs. The same library's gru_forward and gru_backward run
a GRU layer's training recurrence (rnn_mnist/kernels/native_recurrence.py decides when); this
module loads it and sets every function's C signature.

Why C: a rollout step of a one-layer GRU-128 over 10,000 digits is one (10000, 128) x (128, 384)
GEMM and then a dozen elementwise torch ops, each streaming a (10000, 384) tensor through memory;
those ops cost more than the GEMM. The C step does them all in one pass per digit while its row is
in cache, a linear head's logit included (an MLP head's layers run in torch on the new state: a
GEMM, which torch does well). It reads the canvas pixel-major (a transposed mirror of the pixels so
far), so a step's gather of the context pixels walks memory in order instead of touching 22 cache
lines per digit.
The same step serves every pass without a gradient (prefix reads, evaluation NLLs), where torch's
whole-sequence pass would hold (784, B, 3H) input gates.

The library is built into a private cache (~/.cache/rnn_mnist or $RNN_MNIST_CACHE) with ``cc -O3
-march=native -ffast-math -fno-finite-math-only -fopenmp`` (``$CC`` if set), keyed by the source,
the compiler and its flags and the CPU, checked against the hash recorded when it was built before
each load, and reused (rnn_mnist/kernels/library.py). Its OpenMP is normally the libgomp torch has
already loaded, and it runs on torch's thread count either way. Where no compiler works, or
``RNN_MNIST_NATIVE`` is 0 (false, off, no), the model keeps its torch-op step and training its
torch-op recurrence, and one line on stderr says why; each pair is tested against each other
(tests/test_native.py, tests/test_gru_train_kernel.py), NaN and inf included.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rnn_mnist.data import NUM_PIXELS
from rnn_mnist.kernels import library as _library

if TYPE_CHECKING:  # weights.py imports gru.py, which runs its training recurrence on this library
    from rnn_mnist.kernels.weights import StepWeights

SOURCE = Path(__file__).with_name("gru_step.c")
# -fno-finite-math-only: the rest of -ffast-math (reassociation, no errno) is what makes the step
# fast; assuming no NaN or inf would let a NaN weight or state pass as a number.
COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fopenmp", "-fPIC"]
MAX_HIDDEN, MAX_INPUTS = 1024, 256  # as in gru_step.c
SWITCH_ENV = "RNN_MNIST_NATIVE"
_ON, _OFF = ("1", "true", "on", "yes"), ("0", "false", "off", "no")
_loaded: tuple[ctypes.CDLL | None, str] | None = None

_p, _i64, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
# Each function's (argtypes, restype): gru_step (the rollout step), gru_forward and gru_backward
# (the training recurrence, rnn_mnist/kernels/native_recurrence.py; 0, or -1 when out of memory).
_SIGNATURES = {
    "gru_step": ([_int, _i64, _i64, _i64, _p, _i64, *[_p] * 7, _int, *[_p] * 5, ctypes.c_float, _p], None),
    "gru_forward": ([_int, _i64, _i64, _i64, _i64, *[_p] * 7], _int),
    "gru_backward": ([_int, _i64, _i64, _i64, _i64, *[_p] * 9], _int),
}


def native_requested() -> bool:
    """Whether $RNN_MNIST_NATIVE asks for the fused step: unset, empty or 1/true/on/yes, else
    0/false/off/no (any case, spaces around ignored). Raises ValueError for anything else."""
    text = os.environ.get(SWITCH_ENV, "")
    value = text.strip().lower()
    if value in ("", *_ON) or value in _OFF:
        return value not in _OFF
    raise ValueError(f"{SWITCH_ENV}={text!r}: use 1, true, on or yes, or 0, false, off or no")


def load_kernel() -> ctypes.CDLL | None:
    """The built library (once per process), or None when it cannot be had here. Then one line on
    stderr, once, says that rollouts keep the torch-op step and GRU training its torch-op recurrence,
    and why (metrics and the training record say it as well)."""
    global _loaded
    if _loaded is None:
        _loaded = _load()
        if _loaded[0] is None:
            why = _loaded[1]
            print(
                f"note: rollouts and GRU training run on torch ops, not the fused C code: {why}",
                file=sys.stderr,
            )
    return _loaded[0]


def kernel_status() -> str:
    """One line for logs and metrics: whether the fused C code (the rollout step and the GRU
    training recurrence) runs, and where its library lies or why it cannot be had."""
    load_kernel()
    library, why = _loaded
    return f"fused C step ({why})" if library is not None else f"torch ops ({why})"


def unavailable() -> str | None:
    """Why the library cannot be had here (as ``kernel_status`` says it), or None: it is loaded."""
    library = load_kernel()
    return None if library is not None else _loaded[1]


def _load() -> tuple[ctypes.CDLL | None, str]:
    """(the library, where it lies) or (None, why not)."""
    try:
        if not native_requested():
            return None, f"{SWITCH_ENV}={os.environ[SWITCH_ENV].strip()}"
    except ValueError as error:
        return None, str(error)
    try:
        compiler = _library.compiler_command()
        if compiler is None:
            return None, "no C compiler found"
        library, path = _library.load_library(SOURCE, COMPILE_FLAGS, compiler)
        for name, (argtypes, restype) in _SIGNATURES.items():
            function = getattr(library, name)
            function.argtypes, function.restype = argtypes, restype
    except _library.KernelUnavailable as error:
        return None, str(error)
    except (OSError, subprocess.SubprocessError) as error:  # a compiler that cannot be run, a full disk
        return None, f"building gru_step.c failed: {error}"
    return library, str(path)


def pointer(tensor: torch.Tensor | None) -> ctypes.c_void_p | None:
    """A tensor's data as the C functions take it (None: NULL)."""
    return None if tensor is None else ctypes.c_void_p(tensor.data_ptr())


def supports(num_layers: int, hidden_size: int, num_pixel_inputs: int) -> bool:
    """Whether the fused step can run a GRU of these sizes: one layer, at most MAX_HIDDEN units and
    MAX_INPUTS pixel inputs, and the library built. Any head: a linear one runs in the C step, an
    MLP head's layers in torch on the state it writes."""
    return (
        num_layers == 1
        and hidden_size <= MAX_HIDDEN
        and num_pixel_inputs <= MAX_INPUTS
        and load_kernel() is not None
    )


class FusedGRUStep:
    """A one-layer GRU next-pixel model's rollout step on gru_step.c, for a fixed batch and labels.

    The tables it reads are prepared once: layer 0's input biases and position terms per pixel
    (784, 3H), the pixel inputs' columns of W_ih (C + 1, 3H), the label's columns (classes, 3H),
    W_hh.T in the matmul dtype and the head. Only the recurrent GEMM runs in torch, and an MLP
    head (``--head-hidden``): its GEMM, ReLU and dot product on the new state are what torch does
    well, and they run in fp32 (apply_head, outside autocast) as on the torch-op step.
    """

    def __init__(self, weights: StepWeights, labels: torch.Tensor | None, matmul_dtype: torch.dtype) -> None:
        if matmul_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"the fused step's GEMM runs in fp32 or bf16, not {matmul_dtype}")
        (layer,) = weights.layers  # one layer
        self.library = load_kernel()
        self.hidden = weights.hidden_size
        self.dtype = matmul_dtype
        detach = lambda t: t.detach().float().contiguous()  # noqa: E731
        self.static = detach(weights.static_gates(0, NUM_PIXELS))  # (784, 3H)
        self.columns = detach(weights.input_columns.t())  # (C + 1, 3H)
        self.pixel_index = weights.pixel_index.contiguous()  # (784, C + 1) int64
        self.pixel_exists = weights.pixel_exists.contiguous()  # (784, C + 1)
        self.w_hh_t = layer.w_hh.detach().t().to(matmul_dtype).contiguous()  # (H, 3H)
        self.b_hn = detach(layer.b_hn)
        self._prepare_head(weights.head)
        self.label_gates = self.labels = None
        if weights.label_columns is not None:
            if labels is None:
                raise ValueError("this model is conditioned on the digit's label: pass labels")
            self.label_gates = detach(weights.label_columns.t())  # (classes, 3H)
            self.labels = labels.to("cpu").long().contiguous()
            classes = weights.num_classes
            if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < classes:
                raise ValueError(f"labels must be in 0..{classes - 1}")
        self._spoil_gates_as_torch_does()
        # The rollout's canvas, pixel-major: pixels [0, synced) copied so far (see __call__).
        self.mirror: torch.Tensor | None = None
        self.mirror_of: torch.Tensor | None = None
        self.synced = 0
        self.last_state: torch.Tensor | None = None  # the state this step returned last, and
        self.last_matmul: torch.Tensor | None = None  # its copy in the matmul dtype
        self.last_version = 0

    def _prepare_head(self, head: tuple[tuple[torch.Tensor, torch.Tensor], ...]) -> None:
        """A linear head goes to the C step as a vector and a bias; a deeper one stays for torch."""
        # imported here: weights.py imports this module (through gru.py and native_recurrence.py)
        from rnn_mnist.kernels.weights import apply_head

        layers = tuple((weight.detach(), bias.detach()) for weight, bias in head)
        self.mlp_head = partial(apply_head, layers) if len(layers) > 1 else None
        self.head_weight = None if self.mlp_head else layers[0][0].float().reshape(-1).contiguous()
        self.head_bias = 0.0 if self.mlp_head else float(layers[0][1])

    def _spoil_gates_as_torch_does(self) -> None:
        """The torch-op step multiplies every input by its column of W_ih, zeros included, and 0 * NaN
        and 0 * inf are NaN. The C step adds only the pixel inputs that are not 0 and its label's
        column alone, so the same is done here, once:
        - a non-finite entry in any pixel input's column makes its gate NaN for every digit (at pixel
          0 all of them are 0); the C step adds the static gates to every digit: NaN goes there;
        - a non-finite entry in another label's column makes the gate NaN for a digit of this label
          (its own column is added as it is: 1 * inf is inf)."""
        nan = float("nan")
        finite = torch.isfinite(self.columns).all(dim=0)  # (3H,)
        if not bool(finite.all()):
            self.static = self.static.clone()  # it may share memory with the model's weights
            self.static[:, ~finite] = nan
        if self.label_gates is not None:
            bad = (~torch.isfinite(self.label_gates)).int()  # (classes, 3H)
            self.label_gates = self.label_gates.masked_fill(bad.sum(dim=0) - bad > 0, nan)

    def run(
        self,
        mirror: torch.Tensor,
        t: int,
        h: torch.Tensor,
        h_matmul: torch.Tensor,
        h_new: torch.Tensor,
        h_new_matmul: torch.Tensor | None,
        logits: torch.Tensor | None,
        labels: torch.Tensor | None,
    ) -> None:
        """Step pixel t for the first len(h) digits of ``mirror`` (784, >= B): writes h_new (B, H),
        its matmul-dtype copy (where given) and the logits (B,) (where given: a read wants none).
        h_new may be h itself."""
        rows = len(h)
        if rows == 0:
            return
        self._check(mirror, t, rows, h, h_matmul, h_new, h_new_matmul, logits, labels)
        with torch.autocast("cpu", enabled=False):  # the dtype is this step's, not autocast's
            gh = torch.mm(h_matmul, self.w_hh_t)  # (B, 3H) in the matmul dtype
        bf16 = gh.dtype == torch.bfloat16
        if h_new_matmul is not None and h_new_matmul.dtype != torch.bfloat16:
            h_new_matmul = None  # fp32: the state itself is what the GEMM reads
        self.library.gru_step(
            torch.get_num_threads(), rows, self.hidden, self.pixel_index.shape[1],
            pointer(mirror), mirror.stride(0),
            pointer(self.pixel_index[t]), pointer(self.pixel_exists[t]),
            pointer(self.columns), pointer(self.static[t]),
            pointer(self.label_gates), pointer(labels),
            pointer(gh), int(bf16), pointer(self.b_hn),
            pointer(h), pointer(h_new), pointer(h_new_matmul),
            pointer(None if logits is None else self.head_weight), self.head_bias,
            pointer(None if self.head_weight is None else logits),
        )  # fmt: skip
        if logits is not None and self.mlp_head is not None:
            with torch.autocast("cpu", enabled=False):  # the head stays fp32, as on the torch-op step
                logits[:rows] = self.mlp_head(h_new).view(-1)

    def _check(self, mirror, t, rows, h, h_matmul, h_new, h_new_matmul, logits, labels) -> None:
        """What the C step takes on trust, checked: it indexes raw memory with these shapes."""
        hidden = self.hidden

        def fits(tensor, dtype, shape) -> bool:
            return tensor.dtype == dtype and tuple(tensor.shape) == shape and tensor.is_contiguous()

        problems = [
            (mirror.dtype != torch.float32 or (mirror.shape[1] > 1 and mirror.stride(1) != 1), "pixels"),
            (mirror.shape[0] < max(t, 1) or mirror.shape[1] < rows, "pixels: too few pixels or digits"),
            (not fits(h, torch.float32, (rows, hidden)), f"state: fp32 ({rows}, {hidden})"),
            (not fits(h_new, torch.float32, (rows, hidden)), f"new state: fp32 ({rows}, {hidden})"),
            (not fits(h_matmul, self.dtype, (rows, hidden)), f"state for the GEMM: {self.dtype}"),
            (
                h_new_matmul is not None and not fits(h_new_matmul, h_new_matmul.dtype, (rows, hidden)),
                "new state copy",
            ),
            (
                logits is not None
                and (logits.dtype != torch.float32 or not logits.is_contiguous() or logits.numel() < rows),
                "logits",
            ),
            (self.labels is not None and (labels is None or len(labels) < rows), "labels: one per digit"),
        ]
        for failed, what in problems:
            if failed:
                raise ValueError(f"fused GRU step: bad input ({what})")

    def __call__(
        self, canvas: torch.Tensor, t: int, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The logit (B,) of pixel t of ``canvas`` (B, 784) and the state (1, B, H) after it.

        The mirror is rebuilt whenever a different canvas tensor comes in (the rollout replaces
        its canvas when it resamples particles) and otherwise catches up with the pixels written
        since the last step. So a caller must not rewrite pixels before t in place (the rollout never
        does: it resamples into a new canvas)."""
        batch = len(canvas)
        if self.labels is not None and len(self.labels) != batch:
            raise ValueError(f"fused GRU step: {len(self.labels)} labels for {batch} digits")
        if canvas is not self.mirror_of or t < self.synced:
            self.mirror = torch.zeros(NUM_PIXELS, batch)  # fp32, as the C step reads it
            self.mirror_of, self.synced = canvas, 0
        if t > self.synced:
            self.mirror[self.synced : t].copy_(canvas[:, self.synced : t].t())
            self.synced = t
        h = torch.zeros(batch, self.hidden) if state is None else state[0].float()
        h_matmul = self.last_matmul if self._returned_last(h) else h.to(self.dtype).contiguous()
        h = h.contiguous()
        h_new, logits = torch.empty_like(h), torch.empty(batch)
        h_new_matmul = torch.empty_like(h, dtype=self.dtype) if self.dtype != h.dtype else None
        self.run(self.mirror, t, h, h_matmul, h_new, h_new_matmul, logits, self.labels)
        if h_new.is_inference():  # no version counter to tell a changed state by: no reuse
            self.last_state = self.last_matmul = None
        else:
            self.last_state, self.last_matmul = h_new, h_new if h_new_matmul is None else h_new_matmul
            self.last_version = h_new._version
        return logits, h_new.unsqueeze(0)

    def _returned_last(self, h: torch.Tensor) -> bool:
        """Whether ``h`` is, unchanged, the state the last step returned (so its matmul copy holds)."""
        last = self.last_state
        return (
            last is not None
            and not h.is_inference()
            and h.data_ptr() == last.data_ptr()
            and h.shape == last.shape
            and h.stride() == last.stride()
            and h._version == self.last_version
        )

    def forward(
        self, canvas: torch.Tensor, start: int, end: int, state: torch.Tensor | None, logits: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Logits (B, end - start) of pixels start..end-1 of ``canvas`` (B, >= end), each given the
        pixels before it, and the state (1, B, H) after them: NextPixelModel.forward without a
        gradient. ``state`` is the state after pixel start - 1 (None at pixel 0). ``logits=False``:
        the state alone (None for the logits; an MLP head's layers are not run)."""
        batch = len(canvas)
        if canvas.shape[1] < end:
            raise ValueError(f"fused GRU step: pixels up to {end} of a canvas of {canvas.shape[1]}")
        mirror = canvas[:, :end].t().float().contiguous()  # (end, B): the step reads pixels < t
        h = torch.zeros(batch, self.hidden) if state is None else state[0].float().clone()
        h_matmul = h.to(self.dtype)  # h itself in fp32
        out = torch.empty(end - start, batch) if logits else None
        for t in range(start, end):  # in place: each step's GEMM has read h before it is written
            row = None if out is None else out[t - start]
            self.run(mirror, t, h, h_matmul, h, h_matmul, row, self.labels)
        return (None if out is None else out.t().contiguous()), h.unsqueeze(0)

    def read(self, canvas: torch.Tensor, end: int) -> torch.Tensor:
        """The state (1, B, H) after pixels 0..end-1 of ``canvas`` (B, >= end), as NextPixelModel.read.

        Until its first ink a digit's state is a blank canvas's (given its label), and digits
        start a few rows down. So the digits are sorted by first ink, a blank canvas is stepped
        once per label, and a digit joins the batch (from the blank state) at the pixel after its
        first ink: the digits stepped are always a growing prefix of the sorted batch.
        """
        batch, hidden = len(canvas), self.hidden
        if canvas.shape[1] < end:
            raise ValueError(f"fused GRU step: reading {end} pixels of a canvas of {canvas.shape[1]}")
        if batch == 0:
            return torch.zeros(1, 0, hidden)
        inked = canvas[:, :end] != 0
        first_ink = torch.where(inked.any(dim=1), inked.float().argmax(dim=1), end)
        first_ink, order = torch.sort(first_ink, stable=True)
        mirror = canvas[order, :end].t().float().contiguous()  # (end, B)
        labels = None if self.labels is None else self.labels[order].contiguous()
        if labels is None:
            blank_labels, group = None, torch.zeros(batch, dtype=torch.long)
        else:
            blank_labels, group = torch.unique(labels, return_inverse=True)
        blanks = 1 if blank_labels is None else len(blank_labels)
        blank_mirror = torch.zeros(end, blanks)
        h, blank = torch.zeros(batch, hidden), torch.zeros(blanks, hidden)
        h_matmul, blank_matmul = h.to(self.dtype), blank.to(self.dtype)  # themselves in fp32
        joins = torch.searchsorted(first_ink, torch.arange(end + 1), right=False).tolist()
        active = 0
        for t in range(end):
            joined = joins[t]  # digits with first ink before pixel t: count(first_ink < t)
            if joined > active:  # they start from their label's blank state after pixel t - 1
                h[active:joined] = blank[group[active:joined]]
                h_matmul[active:joined] = blank_matmul[group[active:joined]]
                active = joined
            if active:
                now, now_matmul = h[:active], h_matmul[:active]
                self.run(mirror, t, now, now_matmul, now, now_matmul, None, labels)
            self.run(blank_mirror, t, blank, blank_matmul, blank, blank_matmul, None, blank_labels)
        h[active:] = blank[group[active:]]  # no ink before ``end``: where the blank canvas is
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(batch)
        return h[inverse].unsqueeze(0)
