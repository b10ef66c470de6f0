"""The next-pixel model: a recurrent network that reads what came before pixel t and predicts it.

    model = NextPixelModel(ModelConfig(cell="gru", hidden_size=128))
    logits = model.teacher_forced_logits(pixels)               # (B, 784): one logit per pixel
    state = model.read(model.features(canvas, 0, 500))         # prime the state with a visible prefix
    logit, state = model.step(canvas, 500, state)              # then one pixel at a time

At step t the input is pixel t-1 (a learned start value at t = 0) and, if configured, the three
pixels above pixel t, its row and column, and the digit's label: all known before pixel t, so the
logits give p(x_t | x_<t) for every pixel and their BCE summed over the 784 pixels is the image's
exact NLL.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from rnn_mnist.data import IMAGE_SIDE, NUM_PIXELS

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}
# Pixels per chunk when only the final state is wanted on the CPU (see NextPixelModel.read).
CPU_READ_CHUNK = 8

# GRU/RNN carry a tensor (layers, B, H); LSTM carries a pair (h, c) of them.
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in the checkpoint as a plain dict."""

    cell: str = "gru"
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.0
    context: bool = False  # also read the pixels above-left, above and above-right of pixel t
    position: bool = False  # also read pixel t's row and column (one-hot)
    num_classes: int = 0  # > 0: condition on the digit's label (one-hot at every step)

    @property
    def input_size(self) -> int:
        return 1 + 3 * self.context + 2 * IMAGE_SIDE * self.position + self.num_classes

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, not {self.cell!r}")
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError("hidden_size and num_layers must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.num_classes < 0:
            raise ValueError("num_classes must be 0 (unconditioned) or more")

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
        self.head = nn.Linear(config.hidden_size, 1)
        position = torch.arange(NUM_PIXELS)
        row, col = position // IMAGE_SIDE, position % IMAGE_SIDE
        # Pixels above-left, above and above-right of pixel t, as offsets back from t, and where
        # each exists (not in the first row, not across the left or right edge).
        self.context_offsets = (IMAGE_SIDE + 1, IMAGE_SIDE, IMAGE_SIDE - 1)
        exists = torch.stack([(row > 0) & (col > 0), row > 0, (row > 0) & (col < IMAGE_SIDE - 1)], dim=1)
        self.register_buffer("context_exists", exists.float(), persistent=False)  # (784, 3)
        one_hot = nn.functional.one_hot
        rows_cols = torch.cat([one_hot(row, IMAGE_SIDE), one_hot(col, IMAGE_SIDE)], dim=1)
        self.register_buffer("position_one_hot", rows_cols.float(), persistent=False)  # (784, 56)

    def features(
        self, canvas: torch.Tensor, start: int, end: int, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Inputs (B, end - start, F) that predict pixels start..end-1 of ``canvas`` (B, >= end - 1).

        Reads ``canvas`` only before each predicted pixel, so the result never depends on
        pixels start..end-1 themselves; that is what keeps the model causal.
        """
        batch, device = canvas.shape[0], canvas.device
        t = torch.arange(start, end, device=device)
        prev = canvas[:, (t - 1).clamp(min=0)]
        if start == 0:  # pixel 0 reads the start value instead
            prev = torch.cat([self.start_pixel.to(canvas.dtype).expand(batch, 1), prev[:, 1:]], dim=1)
        parts = [prev.unsqueeze(-1)]
        if self.config.context:
            above = torch.stack([canvas[:, (t - k).clamp(min=0)] for k in self.context_offsets], dim=-1)
            parts.append(above * self.context_exists[start:end])
        if self.config.position:
            parts.append(self.position_one_hot[start:end].expand(batch, -1, -1))
        if self.config.num_classes:
            if labels is None:
                raise ValueError("this model is conditioned on the digit's label: pass labels")
            one_hot = nn.functional.one_hot(labels.to(device).long(), self.config.num_classes)
            parts.append(one_hot.to(canvas.dtype)[:, None, :].expand(-1, end - start, -1))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def forward(self, features: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits (B, T) for the pixels that ``features`` (B, T, F) predict, and the final state."""
        out, state = self.rnn(features, state)  # (B, T, H)
        logits = self.head(self.dropout(out)).squeeze(-1)  # (B, T)
        return logits, state

    def read(self, features: torch.Tensor, state: State | None = None) -> State:
        """Feed ``features`` (B, T, F) and return only the final state, computing no logits.

        On the CPU the sequence goes in chunks of a few pixels: one long pass writes (B, T, H)
        outputs that fall out of cache, and chunks measured about 2x faster for a 500-pixel
        prefix at batch 1000 (bench/rollout_speed.py). On a GPU the fused whole-sequence kernel wins.
        """
        chunk = CPU_READ_CHUNK if features.device.type == "cpu" else max(features.shape[1], 1)
        for start in range(0, features.shape[1], chunk):
            _, state = self.rnn(features[:, start : start + chunk], state)
        return state

    def teacher_forced_logits(self, pixels: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T) of p(x_t = 1 | x_<t) for every pixel, given the true pixels (B, T)."""
        logits, _ = self(self.features(pixels, 0, pixels.shape[1], labels))
        return logits

    def step(
        self, canvas: torch.Tensor, t: int, state: State | None, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """The logit (B,) of pixel t given ``canvas`` before t and the state after pixel t-1."""
        logits, state = self(self.features(canvas, t, t + 1, labels), state)
        return logits.squeeze(1), state


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
