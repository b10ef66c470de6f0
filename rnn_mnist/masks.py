"""Which pixels of a digit are hidden: mask specs, parsed into a (784,) bool tensor (True = hidden).

    hidden = parse_mask("center:14")        # the 14 x 14 square in the middle
    runs(hidden)                           # [(0, 203, False), (203, 217, True), ...]

One mask serves every digit of a run, so that the visible stretches between holes can be read in
one batched pass for all of them. The kinds (rows and columns count from 0; ranges are inclusive):

    suffix:N           the last N pixels (what --mask-pixels N hides)
    rows:A-B           rows A..B
    cols:A-B           columns A..B
    box:R0,C0,R1,C1    rows R0..R1 of columns C0..C1
    center:S           an S x S square in the middle
    left:N / right:N   the N leftmost / rightmost columns
    random:F           a fraction F of the pixels, drawn with the given seed
"""

from __future__ import annotations

import torch

from rnn_mnist.data import IMAGE_SIDE, NUM_PIXELS
from rnn_mnist.errors import RnnMnistError

MASK_KINDS = ("suffix", "rows", "cols", "box", "center", "left", "right", "random")


def _ints(text: str, count: int, spec: str) -> list[int]:
    parts = text.replace("-", ",").split(",")
    if len(parts) != count or not all(p.strip().isdigit() for p in parts):
        raise RnnMnistError(f"mask {spec!r}: expected {count} whole numbers, got {text!r}")
    return [int(p) for p in parts]


def _span(a: int, b: int, what: str, spec: str) -> None:
    if not 0 <= a <= b < IMAGE_SIDE:
        raise RnnMnistError(f"mask {spec!r}: {what} must satisfy 0 <= first <= last <= {IMAGE_SIDE - 1}")


def parse_mask(spec: str, seed: int = 0) -> torch.Tensor:
    """The hidden pixels (784,) bool of a mask ``spec`` (see the module docstring); ``seed``
    draws ``random:F``. Raises RnnMnistError with a one-line reason for a bad spec."""
    kind, sep, arg = spec.partition(":")
    if not sep or kind not in MASK_KINDS:
        raise RnnMnistError(f"mask {spec!r}: expected KIND:ARGS with KIND one of {', '.join(MASK_KINDS)}")
    grid = torch.zeros(IMAGE_SIDE, IMAGE_SIDE, dtype=torch.bool)
    if kind == "suffix":
        (n,) = _ints(arg, 1, spec)
        if not 1 <= n <= NUM_PIXELS:
            raise RnnMnistError(f"mask {spec!r}: N must be in 1..{NUM_PIXELS}")
        grid.view(-1)[NUM_PIXELS - n :] = True
    elif kind in ("rows", "cols"):
        a, b = _ints(arg, 2, spec)
        _span(a, b, kind, spec)
        if kind == "rows":
            grid[a : b + 1] = True
        else:
            grid[:, a : b + 1] = True
    elif kind == "box":
        r0, c0, r1, c1 = _ints(arg, 4, spec)
        _span(r0, r1, "rows", spec)
        _span(c0, c1, "columns", spec)
        grid[r0 : r1 + 1, c0 : c1 + 1] = True
    elif kind in ("center", "left", "right"):
        (n,) = _ints(arg, 1, spec)
        if not 1 <= n <= IMAGE_SIDE:
            raise RnnMnistError(f"mask {spec!r}: the size must be in 1..{IMAGE_SIDE}")
        if kind == "center":
            first = (IMAGE_SIDE - n) // 2
            grid[first : first + n, first : first + n] = True
        elif kind == "left":
            grid[:, :n] = True
        else:
            grid[:, IMAGE_SIDE - n :] = True
    else:  # random
        try:
            fraction = float(arg)
        except ValueError:
            fraction = float("nan")
        if not 0 < fraction <= 1:
            raise RnnMnistError(f"mask {spec!r}: F must be a fraction in (0, 1]")
        generator = torch.Generator().manual_seed(seed)
        count = max(1, round(fraction * NUM_PIXELS))
        grid.view(-1)[torch.randperm(NUM_PIXELS, generator=generator)[:count]] = True
    return grid.view(-1)


def suffix_mask(mask_pixels: int) -> torch.Tensor:
    """The last ``mask_pixels`` pixels hidden: the mask of --mask-pixels."""
    return parse_mask(f"suffix:{mask_pixels}")


def runs(hidden: torch.Tensor) -> list[tuple[int, int, bool]]:
    """The mask as maximal runs (start, end, is_hidden) of pixels start..end-1, in pixel order."""
    flags = hidden.tolist()
    out, start = [], 0
    for t in range(1, len(flags) + 1):
        if t == len(flags) or flags[t] != flags[start]:
            out.append((start, t, bool(flags[start])))
            start = t
    return out


def is_suffix(hidden: torch.Tensor) -> bool:
    """Whether the mask hides exactly a (non-empty) run at the end of the digit."""
    pieces = runs(hidden)
    return pieces[-1][2] and len(pieces) <= 2
