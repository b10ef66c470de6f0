"""The next-pixel model: a recurrent network that reads pixel t-1 and predicts pixel t.

    model = NextPixelModel(ModelConfig(cell="gru", hidden_size=128))
    logits = model.teacher_forced_logits(pixels)       # (B, 784): one logit per pixel
    state = model.read(model.shift_right(prefix))       # prime the state with a visible prefix
    logit, state = model.step(last_pixel, state)        # then one pixel at a time

Because the input at step t is pixel t-1 (a learned start value at t = 0), the logits give
p(x_t | x_<t) for every pixel, so their BCE summed over the 784 pixels is the image's exact NLL.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

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

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, not {self.cell!r}")
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError("hidden_size and num_layers must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")

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
            input_size=1,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, 1)

    def forward(self, inputs: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits (B, T) for the pixels that follow ``inputs`` (B, T), and the final state."""
        out, state = self.rnn(inputs.unsqueeze(-1), state)  # (B, T, H)
        logits = self.head(self.dropout(out)).squeeze(-1)  # (B, T)
        return logits, state

    def shift_right(self, pixels: torch.Tensor) -> torch.Tensor:
        """Inputs that predict ``pixels`` (B, T): the start value followed by pixels 0..T-2."""
        start = self.start_pixel.to(pixels.dtype).expand(pixels.shape[0], 1)
        return torch.cat([start, pixels[:, :-1]], dim=1)

    def teacher_forced_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits (B, T) of p(x_t = 1 | x_<t) for every pixel, given the true pixels (B, T)."""
        logits, _ = self(self.shift_right(pixels))
        return logits

    def read(self, inputs: torch.Tensor, state: State | None = None) -> State:
        """Feed ``inputs`` (B, T) and return only the final state, computing no logits.

        On the CPU the sequence goes in chunks of a few pixels: one long pass writes (B, T, H)
        outputs that fall out of cache, and chunks measured about 2x faster for a 500-pixel
        prefix at batch 1000 (bench/rollout_speed.py). On a GPU the fused whole-sequence kernel wins.
        """
        chunk = CPU_READ_CHUNK if inputs.device.type == "cpu" else max(inputs.shape[1], 1)
        for start in range(0, inputs.shape[1], chunk):
            _, state = self.rnn(inputs[:, start : start + chunk].unsqueeze(-1), state)
        return state

    def step(self, pixel: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """Feed one pixel (B,) and return the next pixel's logit (B,) and the new state."""
        logits, state = self(pixel.unsqueeze(1), state)
        return logits.squeeze(1), state


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
