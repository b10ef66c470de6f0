"""The next-pixel model: a recurrent network that reads what came before pixel t and predicts it.

    model = NextPixelModel(ModelConfig(cell="gru", hidden_size=128))
    logits = model.teacher_forced_logits(pixels)     # (B, 784): one logit per pixel
    state = model.read(canvas, 500)                  # prime the state with a visible prefix
    logit, state = model.step(canvas, 500, state)    # then one pixel at a time

At step t the input is pixel t-1 (a learned start value at t = 0) and, if configured, pixels of
the rows above pixel t, its row and column, and the digit's label: all known before pixel t, so the
logits give p(x_t | x_<t) for every pixel and their BCE summed over the 784 pixels is the image's
exact NLL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from rnn_mnist import steps
from rnn_mnist.cli import fraction, non_negative_int, positive_int
from rnn_mnist.data import IMAGE_SIDE, NUM_PIXELS
from rnn_mnist.kernels import fast_step
from rnn_mnist.kernels.gru import GRULayer, gru_layers
from rnn_mnist.kernels.weights import StepWeights, gather_pixels
from rnn_mnist.options import option, when
from rnn_mnist.runtime import recurrent_autocast
from rnn_mnist.steps import State, Stepper

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}
# Pixels per chunk when only the final state is wanted on the CPU (see NextPixelModel.read).
CPU_READ_CHUNK = 8


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in the checkpoint as a plain dict."""

    cell: str = option("gru", "--cell", choices=sorted(CELLS), help="recurrent cell", group="model")
    hidden_size: int = option(
        128, "--hidden", "--hidden-size", kind=positive_int, help="hidden units per layer", group="model"
    )
    num_layers: int = option(1, "--layers", kind=positive_int, help="stacked recurrent layers", group="model")
    dropout: float = option(
        0.0, "--dropout", kind=fraction, help="dropout between layers and before the output", group="model"
    )
    context: bool = option(  # also read pixels of the rows above pixel t (a causal 2-D context)
        False, "--context", group="model", task="next-pixel",
        help="also feed pixels of the rows above the next one (causal 2-D context)",
    )  # fmt: skip
    context_rows: int = option(  # how many rows above
        1, "--context-rows", kind=positive_int, help="with --context: how many rows above", group="model",
        only=when("context"),
    )  # fmt: skip
    context_width: int = option(  # how many pixels of each, centred on t's column (odd); 1 x 3 by default
        3, "--context-width", kind=positive_int, group="model", only=when("context"),
        help="with --context: how many pixels of each row, centred on the next pixel's column (odd)",
    )  # fmt: skip
    position: bool = option(  # also read pixel t's row and column (one-hot)
        False, "--position", help="also feed the next pixel's row and column", group="model",
        task="next-pixel",
    )  # fmt: skip
    num_classes: int = 0  # > 0: condition on the digit's label (one-hot at every step); --condition label
    head_hidden: int = option(  # > 0: the output is an MLP with one hidden ReLU layer this wide, not linear
        0, "--head-hidden", kind=non_negative_int, group="model", task="next-pixel",
        help="width of a hidden ReLU layer between the recurrent state and the logit (0: linear)",
    )  # fmt: skip

    @property
    def num_context(self) -> int:
        return self.context_rows * self.context_width if self.context else 0

    @property
    def input_size(self) -> int:
        return 1 + self.num_context + 2 * IMAGE_SIDE * self.position + self.num_classes

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, not {self.cell!r}")
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError("hidden_size and num_layers must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.num_classes < 0 or self.head_hidden < 0:
            raise ValueError("num_classes and head_hidden must be 0 (none) or more")
        if not 1 <= self.context_rows < IMAGE_SIDE:
            raise ValueError(f"context_rows must be in 1..{IMAGE_SIDE - 1}")
        if not (1 <= self.context_width <= 2 * IMAGE_SIDE - 1 and self.context_width % 2 == 1):
            raise ValueError(f"context_width must be odd, in 1..{2 * IMAGE_SIDE - 1}")

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """Rebuild from ``asdict`` output, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


class NextPixelModel(nn.Module):
    """Recurrent next-pixel model returning logits and its recurrent state."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # The input before the first pixel: learned, so the model can tell "no pixel yet" apart
        # from a black pixel.
        self.start_pixel = nn.Parameter(torch.full((1,), 0.5))
        self.rnn = CELLS[config.cell](
            input_size=config.input_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.dropout = nn.Dropout(config.dropout)
        if config.head_hidden:
            self.head = nn.Sequential(
                nn.Linear(config.hidden_size, config.head_hidden), nn.ReLU(), nn.Linear(config.head_hidden, 1)
            )
        else:
            self.head = nn.Linear(config.hidden_size, 1)
        position = torch.arange(NUM_PIXELS)
        row, col = position // IMAGE_SIDE, position % IMAGE_SIDE
        # The pixels that pixel t reads, as offsets back from t: the previous pixel, then the
        # context rows above, nearest first, left to right (1 x 3: above-left, above,
        # above-right); and where each exists (not before pixel 0, not above the first row, not
        # across the left or right edge). One gather reads them all.
        half = config.context_width // 2
        above = [(r, c) for r in range(1, config.context_rows + 1) for c in range(-half, half + 1)]
        above = above if config.context else []
        offsets = torch.tensor([1] + [r * IMAGE_SIDE - c for r, c in above])
        exists = [position >= 1] + [(row >= r) & (col + c >= 0) & (col + c < IMAGE_SIDE) for r, c in above]
        index = (position[:, None] - offsets[None, :]).clamp(min=0)
        self.register_buffer("pixel_index", index, persistent=False)  # (784, 1 + C)
        self.register_buffer("pixel_exists", torch.stack(exists, dim=1).float(), persistent=False)
        one_hot = nn.functional.one_hot
        rows_cols = torch.cat([one_hot(row, IMAGE_SIDE), one_hot(col, IMAGE_SIDE)], dim=1)
        self.register_buffer("position_one_hot", rows_cols.float(), persistent=False)  # (784, 56)
        # Runtime switches, not part of the config (rnn_mnist/steps.py reads them): False runs GRUs
        # on nn.GRU on the CPU too (the reference the fast path is tested and benchmarked against);
        # and False keeps passes without a gradient (rollouts, reads, evaluation NLLs) on torch ops
        # rather than the fused C step (rnn_mnist/kernels/native.py).
        self.fast_gru = True
        self.fused_step = True

    def pixel_inputs(self, canvas: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """The pixels (B, end - start, 1 + C) that predict pixels start..end-1: the previous one
        (0 before pixel 0) and the C context pixels above. Reads ``canvas`` only before each."""
        return gather_pixels(self.pixel_index, self.pixel_exists, canvas, start, end)

    def features(
        self, canvas: torch.Tensor, start: int, end: int, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Inputs (B, end - start, F) that predict pixels start..end-1 of ``canvas`` (B, >= end - 1).

        Reads ``canvas`` only before each predicted pixel, so the result never depends on
        pixels start..end-1 themselves; that is what keeps the model causal.
        """
        batch, device = canvas.shape[0], canvas.device
        pixels = self.pixel_inputs(canvas, start, end)
        if start == 0:  # pixel 0 reads the start value instead of a previous pixel
            first = torch.cat([self.start_pixel.to(canvas.dtype).expand(batch, 1), pixels[:, 0, 1:]], dim=1)
            pixels = torch.cat([first.unsqueeze(1), pixels[:, 1:]], dim=1)
        parts = [pixels]
        if self.config.position:
            parts.append(self.position_one_hot[start:end].expand(batch, -1, -1))
        if self.config.num_classes:
            if labels is None:
                raise ValueError("this model is conditioned on the digit's label: pass labels")
            one_hot = nn.functional.one_hot(labels.to(device).long(), self.config.num_classes)
            parts.append(one_hot.to(canvas.dtype)[:, None, :].expand(-1, end - start, -1))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def forward(
        self,
        canvas: torch.Tensor,
        start: int = 0,
        end: int | None = None,
        labels: torch.Tensor | None = None,
        state: State | None = None,
        logits: bool = True,
    ) -> tuple[torch.Tensor | None, State]:
        """Logits (B, end - start) for pixels start..end-1 of ``canvas`` and the state after them.

        ``model(pixels)`` is every pixel's logit, teacher-forced (``end`` None: to the end of
        ``canvas``); integer pixels are read as floats. ``state`` is the state after pixel start-1
        (None at the start of an image). With ``logits=False`` only the state is computed. Which
        backend runs it is rnn_mnist/steps.py's call.
        """
        end = canvas.shape[1] if end is None else end
        if not canvas.is_floating_point():  # uint8 digits as the data module gives them
            canvas = canvas.float()
        backend = steps.choose(self, canvas.device)
        if backend == steps.FUSED:  # no gradient wanted: the fused C step
            return steps.fused_step(self, labels).forward(canvas, start, end, state, logits)
        if backend == steps.FAST:
            weights, dropout, training = self.step_weights(), self.rnn.dropout, self.training
            out, state = fast_step.sequence(weights, canvas, start, end, labels, state, dropout, training)
            out = out.transpose(0, 1)  # (B, T, H)
        else:
            with recurrent_autocast(canvas.device, self.rnn):
                out, state = self.rnn(self.features(canvas, start, end, labels).float(), state)  # (B, T, H)
        if not logits:
            return None, state
        with torch.autocast(canvas.device.type, enabled=False):  # the head stays fp32
            return self.head(self.dropout(out.float())).squeeze(-1), state

    def step_weights(self) -> StepWeights:
        """A GRU's weights as plain tensors (views of its parameters), split as the fast and fused
        steps read them: W_ih's columns for the pixel inputs, the position and the label apart."""
        config, weight, num_pixel_inputs = self.config, self.rnn.weight_ih_l0, self.pixel_index.shape[1]
        position_end = num_pixel_inputs + 2 * IMAGE_SIDE * config.position  # W_ih's columns as in features()
        labels_end = position_end + config.num_classes
        linears = [self.head] if isinstance(self.head, nn.Linear) else [self.head[0], self.head[2]]
        return StepWeights(
            pixel_index=self.pixel_index,
            pixel_exists=self.pixel_exists,
            input_columns=weight[:, :num_pixel_inputs],
            position_columns=weight[:, num_pixel_inputs:position_end] if config.position else None,
            label_columns=weight[:, position_end:labels_end] if config.num_classes else None,
            start_pixel=self.start_pixel,
            layers=gru_layers_of(self.rnn),
            head=tuple((linear.weight, linear.bias) for linear in linears),
        )

    def read(
        self, canvas: torch.Tensor, end: int, labels: torch.Tensor | None = None, state: State | None = None
    ) -> State:
        """Feed pixels 0..end-1 of ``canvas`` and return only the final state, computing no logits.

        On the fused C step (rnn_mnist/kernels/native.py) the digits share their blank starts pixel by
        pixel. Otherwise, on the CPU, the sequence goes in chunks of a few pixels: one long pass
        writes (B, T, H) outputs that fall out of cache, and chunks measured about 2x faster for a
        500-pixel prefix at batch 1000 (bench/rollout_speed.py). On a GPU the fused whole-sequence
        kernel wins.
        """
        if state is None and end > 0 and steps.choose(self, canvas.device) == steps.FUSED:
            return steps.fused_step(self, labels).read(canvas, end)
        chunk = self.read_chunk(canvas.device, end)
        if state is None and end > chunk and len(canvas) > 1:
            return self._read_from_blank(canvas, end, labels, chunk)
        for start in range(0, end, chunk):
            _, state = self(canvas, start, min(start + chunk, end), labels, state, logits=False)
        return state

    def _read_from_blank(
        self, canvas: torch.Tensor, end: int, labels: torch.Tensor | None, chunk: int
    ) -> State:
        """``read`` from pixel 0, sharing the work of blank starts.

        Until its first ink a digit's state is that of a blank canvas (with its label), and MNIST
        digits start a few rows down. So a blank canvas is read once per label, and each digit
        joins the batched read at the last chunk boundary before its first ink, starting from
        the blank state there: digits sorted by that boundary are a growing prefix of the batch.
        """
        inked = canvas[:, :end] != 0
        first_ink = torch.where(inked.any(dim=1), inked.float().argmax(dim=1), end)
        joins, order = torch.sort(torch.div(first_ink, chunk, rounding_mode="floor") * chunk, stable=True)
        canvas = canvas[order]
        if labels is None:
            blank_labels, group = None, torch.zeros(len(order), dtype=torch.long, device=canvas.device)
        else:
            labels = labels.to(canvas.device)[order]
            blank_labels, group = torch.unique(labels, return_inverse=True)
        blank = canvas.new_zeros(1 if blank_labels is None else len(blank_labels), end)
        zeros = canvas.new_zeros(self.config.num_layers, len(order), self.config.hidden_size)
        state = (zeros, zeros.clone()) if self.config.cell == "lstm" else zeros  # before pixel 0
        blank_state = None
        active = 0  # digits [0, active) of the sorted batch are being read
        for start in range(0, end, chunk):
            joining = int(torch.searchsorted(joins, start, right=True))
            if blank_state is not None and joining > active:  # they start from their label's blank state
                assign_state(state, slice(active, joining), select_state(blank_state, group[active:joining]))
            active = max(active, joining)
            stop = min(start + chunk, end)
            if active:
                rows = None if labels is None else labels[:active]
                now = select_state(state, slice(0, active))
                _, read = self(canvas[:active], start, stop, rows, now, logits=False)
                assign_state(state, slice(0, active), read)
            _, blank_state = self(blank, start, stop, blank_labels, blank_state, logits=False)
        # Digits with no ink before ``end`` end where the blank canvas does.
        assign_state(state, slice(active, None), select_state(blank_state, group[active:]))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return select_state(state, inverse)

    def read_chunk(self, device: torch.device, length: int = NUM_PIXELS) -> int:
        """How many pixels a batched pass over known pixels should take at a time: a few on the
        CPU's torch-op path (see ``read``), all of them on the fused step and on a GPU."""
        if device.type == "cpu" and steps.choose(self, device) != steps.FUSED:
            return CPU_READ_CHUNK
        return max(length, 1)

    def teacher_forced_logits(self, pixels: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T) of p(x_t = 1 | x_<t) for every pixel, given the true pixels (B, T)."""
        logits, _ = self(pixels, 0, pixels.shape[1], labels)
        return logits

    def step(
        self, canvas: torch.Tensor, t: int, state: State | None, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """The logit (B,) of pixel t given ``canvas`` before t and the state after pixel t-1."""
        logits, state = self(canvas, t, t + 1, labels, state)
        return logits.squeeze(1), state

    def stepper(self, labels: torch.Tensor | None, batch: int, device: torch.device) -> Stepper:
        """``step`` for a rollout of ``batch`` digits, prepared once (rnn_mnist/steps.py chooses it)."""
        return steps.stepper(self, labels, batch, device)


def gru_input_bias(rnn: nn.GRU, layer: int) -> torch.Tensor:
    """b_ih plus the r and z parts of b_hh (3H,): the biases that add to a layer's input gates.
    The n part of b_hh stays apart, because the GRU scales it by r."""
    b_hh = getattr(rnn, f"bias_hh_l{layer}")
    return getattr(rnn, f"bias_ih_l{layer}") + torch.cat(
        [b_hh[: -rnn.hidden_size], b_hh.new_zeros(rnn.hidden_size)]
    )


def gru_layers_of(rnn: nn.GRU) -> tuple[GRULayer, ...]:
    """``rnn``'s layers as plain tensors (views of its parameters) for rnn_mnist/kernels/gru.py."""
    hidden = rnn.hidden_size
    return tuple(
        GRULayer(
            w_ih=getattr(rnn, f"weight_ih_l{layer}"),
            input_bias=gru_input_bias(rnn, layer),
            w_hh=getattr(rnn, f"weight_hh_l{layer}"),
            b_hn=getattr(rnn, f"bias_hh_l{layer}")[2 * hidden :],
        )
        for layer in range(rnn.num_layers)
    )


READOUTS = ("last", "mean")
CLASSIFIER_KIND = "sequence classifier"


@dataclass
class ClassifierConfig:
    """A sequence classifier: the recurrent core reads the 784 pixels (in ``reading_order``) and a
    linear head names the digit. Stored in the checkpoint as a plain dict; ``kind`` tells it apart
    from a next-pixel model's config."""

    kind: str = CLASSIFIER_KIND
    cell: str = ModelConfig.cell  # the recurrent core's flags are the next-pixel model's
    hidden_size: int = ModelConfig.hidden_size
    num_layers: int = ModelConfig.num_layers
    dropout: float = ModelConfig.dropout
    num_classes: int = 10
    readout: str = option(  # last: the head reads the final state; mean: the mean of the states
        "last", "--readout", choices=READOUTS, group="classify", task="classify",
        help="the linear head reads the final state (last) or the mean of the 784 states (mean)",
    )  # fmt: skip
    permutation_seed: int | None = None  # None: raster order; else one fixed permutation from this seed

    def __post_init__(self) -> None:
        if self.kind != CLASSIFIER_KIND:
            raise ValueError(f"not a {CLASSIFIER_KIND} config (kind {self.kind!r})")
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, not {self.cell!r}")
        if self.hidden_size < 1 or self.num_layers < 1 or self.num_classes < 2:
            raise ValueError("hidden_size and num_layers must be at least 1, num_classes at least 2")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, not {self.readout!r}")

    @classmethod
    def from_dict(cls, values: dict) -> ClassifierConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


def pixel_permutation(seed: int) -> torch.Tensor:
    """The fixed order (784,) in which permuted sequential MNIST reads the pixels."""
    return torch.randperm(NUM_PIXELS, generator=torch.Generator().manual_seed(seed))


def check_reading_order(order: object, permutation_seed: int | None) -> None:
    """A ValueError unless ``order`` is a reading order a classifier of this config can have: an
    integer tensor (784,) holding every pixel index 0..783 once, and raster order without a
    permutation seed.

    With a seed the order is not compared with ``pixel_permutation(seed)``: the checkpoint holds
    the order the model was trained on because torch's randperm may draw another one in another
    torch version, and such a checkpoint must still load.
    """
    if not isinstance(order, torch.Tensor):
        raise ValueError(f"reading_order is a {type(order).__name__}, not a tensor")
    if order.shape != (NUM_PIXELS,) or order.dtype.is_floating_point or order.dtype.is_complex:
        raise ValueError(
            f"reading_order must be {NUM_PIXELS} integer pixel indices, "
            f"not {order.dtype} {tuple(order.shape)}"
        )
    order = order.detach().cpu().long()
    every_pixel_once = torch.equal(torch.sort(order).values, torch.arange(NUM_PIXELS))
    if not every_pixel_once:
        raise ValueError(f"reading_order is not a permutation of the pixels 0..{NUM_PIXELS - 1}")
    if permutation_seed is None and not torch.equal(order, torch.arange(NUM_PIXELS)):
        raise ValueError("reading_order is not raster order, but the config has no permutation seed")


class SequenceClassifier(nn.Module):
    """Sequential MNIST: the same recurrent core as NextPixelModel reads pixel t at step t (no
    shift: the class is predicted after the whole image), and a linear head maps the final state,
    or the mean of the states, to class logits.

        model = SequenceClassifier(ClassifierConfig(hidden_size=128))
        logits = model(images)                      # images (B, 784) float in [0, 1] -> (B, 10)
        every = model.logits_after_each_pixel(images)   # (B, 784, 10): the head after t pixels read
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.rnn = CELLS[config.cell](
            input_size=1,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.num_classes)
        seed = config.permutation_seed
        order = torch.arange(NUM_PIXELS) if seed is None else pixel_permutation(seed)
        # Persistent: the checkpoint holds the very order the model was trained on.
        self.register_buffer("reading_order", order)
        self.fast_gru = True  # as NextPixelModel.fast_gru: False runs GRUs on nn.GRU on the CPU too

    def load_state_dict(self, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        """``nn.Module.load_state_dict``, refusing (ValueError) a reading order that is not a
        permutation of the pixels: an index out of range would fail mid-read, a repeated one would
        silently read some pixels twice and others never."""
        if "reading_order" in state_dict:
            check_reading_order(state_dict["reading_order"], self.config.permutation_seed)
        return super().load_state_dict(state_dict, *args, **kwargs)

    def states(self, images: torch.Tensor) -> torch.Tensor:
        """The top layer's state after each pixel (B, 784, H), pixels read in ``reading_order``."""
        x = images[:, self.reading_order]  # (B, T)
        if self.fast_gru and self.config.cell == "gru" and images.device.type == "cpu":
            # Layer 0's input gates: one scalar input per step, so a broadcast multiply, no GEMM.
            layers = gru_layers_of(self.rnn)
            gates = layers[0].input_bias + x.t().unsqueeze(2) * self.rnn.weight_ih_l0[:, 0]
            out, _ = gru_layers(layers, gates.float(), None, self.rnn.dropout, self.training)  # (T, B, H)
            return out.transpose(0, 1)
        with recurrent_autocast(images.device, self.rnn):
            out, _ = self.rnn(x.unsqueeze(2).float())
        return out

    def _head(self, states: torch.Tensor) -> torch.Tensor:
        with torch.autocast(states.device.type, enabled=False):  # the head stays fp32
            return self.head(self.dropout(states.float()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (B, classes) of images (B, 784) in raster order."""
        states = self.states(images)
        summary = states[:, -1] if self.config.readout == "last" else states.mean(dim=1)
        return self._head(summary)

    def logits_after_each_pixel(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 784, classes): what the head says after 1, 2, ..., 784 pixels have been read (the
        state then, or the mean of the states so far); the last equals ``forward``."""
        states = self.states(images)
        if self.config.readout == "mean":
            counts = torch.arange(1, states.shape[1] + 1, device=states.device, dtype=states.dtype)
            states = states.cumsum(dim=1) / counts[:, None]
        return self._head(states)


def select_state(state: State, index: slice | torch.Tensor) -> State:
    """The states of the digits ``index`` (a state is (layers, B, H), or an LSTM's pair of them)."""
    return tuple(s[:, index] for s in state) if isinstance(state, tuple) else state[:, index]


def assign_state(state: State, rows: slice, value: State) -> None:
    """Write ``value`` into the digits ``rows`` of ``state`` (layers, B, H), in place."""
    pairs = zip(state, value, strict=True) if isinstance(state, tuple) else [(state, value)]
    for target, source in pairs:
        target[:, rows] = source


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
