"""Pictures of completions: animated GIF triptychs and a PNG grid.

    frames = triptych_frames(completed, target, label, mask=284)   # the last 284 pixels hidden
    frames = triptych_frames(completed, target, label, mask=hidden) # or any (784,) bool mask
    save_gif("plots/gru-128/7-0.gif", frames)
    grid = completion_grid(completed_nk, mask=284)   # (H, W, 3) uint8, for png_bytes

Given pixels are white, generated ones orange, pixels not yet generated (or hidden) slate blue,
so a reader always sees what the model drew and what it was told. A GIF fills the hidden pixels
in the order the model generated them.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from rnn_mnist.data import IMAGE_SIDE, NUM_PIXELS

GIVEN_ON, OFF = (255, 255, 255), (0, 0, 0)
GENERATED_ON, GENERATED_OFF = (255, 150, 30), (35, 20, 10)
HIDDEN = (45, 55, 85)
BACKGROUND = (24, 24, 24)
SCALE, GAP, TITLE_HEIGHT = 6, 8, 22
MAX_FRAMES, FRAME_MS, HOLD_MS = 90, 40, 2000


Mask = int | np.ndarray  # the number of hidden pixels at the end, or a (784,) bool mask (True = hidden)


def hidden_pixels(mask: Mask) -> np.ndarray:
    """The (784,) bool mask of ``mask``."""
    if isinstance(mask, int | np.integer):
        return np.arange(NUM_PIXELS) >= NUM_PIXELS - int(mask)
    return np.asarray(mask, dtype=bool).reshape(NUM_PIXELS)


def colour_pixels(pixels: np.ndarray, mask: Mask, generated_until: int = NUM_PIXELS) -> np.ndarray:
    """RGB (28, 28, 3) of one 784-pixel sequence: given, generated (before pixel
    ``generated_until``) and still hidden parts."""
    pixels = np.asarray(pixels).reshape(NUM_PIXELS).astype(bool)
    position = np.arange(NUM_PIXELS)
    rgb = np.empty((NUM_PIXELS, 3), dtype=np.uint8)
    given = ~hidden_pixels(mask)
    generated = ~given & (position < generated_until)
    rgb[given] = np.where(pixels[given, None], GIVEN_ON, OFF)
    rgb[generated] = np.where(pixels[generated, None], GENERATED_ON, GENERATED_OFF)
    rgb[~given & ~generated] = HIDDEN
    return rgb.reshape(IMAGE_SIDE, IMAGE_SIDE, 3)


def upscale(rgb: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """Crisp nearest-neighbour enlargement."""
    return rgb.repeat(scale, axis=0).repeat(scale, axis=1)


@lru_cache(maxsize=64)
def title_strip(titles: tuple[str, ...], panel_width: int) -> np.ndarray:
    """A (TITLE_HEIGHT, width, 3) strip with one centred title per panel, drawn by matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = len(titles) * panel_width + (len(titles) + 1) * GAP
    figure = Figure(figsize=(width / 100, TITLE_HEIGHT / 100), dpi=100, facecolor=np.array(BACKGROUND) / 255)
    canvas = FigureCanvasAgg(figure)
    for i, title in enumerate(titles):
        centre = (GAP + i * (panel_width + GAP) + panel_width / 2) / width
        figure.text(centre, 0.45, title, ha="center", va="center", color="white", fontsize=10)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def _side_by_side(panels: list[np.ndarray], titles: np.ndarray) -> np.ndarray:
    height = panels[0].shape[0]
    row = [np.full((height, GAP, 3), BACKGROUND, dtype=np.uint8)]
    for panel in panels:
        row += [panel, row[0]]
    body = np.concatenate(row, axis=1)
    bottom = np.full((GAP, body.shape[1], 3), BACKGROUND, dtype=np.uint8)
    return np.concatenate([titles, body, bottom], axis=0)


def triptych_frames(
    completed: np.ndarray, target: np.ndarray, label: int, mask: Mask, max_frames: int = MAX_FRAMES
) -> list[np.ndarray]:
    """Frames of given | completion drawn pixel by pixel | ground truth, the last one complete."""
    hidden = np.flatnonzero(hidden_pixels(mask))  # in the order they are generated
    given = upscale(colour_pixels(target, mask, generated_until=0))
    truth = upscale(colour_pixels(target, 0))
    titles = title_strip((f"given [{label}]", "completion", f"ground truth [{label}]"), given.shape[1])
    per_frame = math.ceil(len(hidden) / (max_frames - 1))
    steps = [*(int(hidden[i]) for i in range(0, len(hidden), per_frame)), NUM_PIXELS]
    return [
        _side_by_side([given, upscale(colour_pixels(completed, mask, until)), truth], titles)
        for until in steps
    ]


def save_gif(path: Path | str, frames: list[np.ndarray]) -> None:
    """An endlessly looping GIF that holds its last frame."""
    durations = [FRAME_MS] * (len(frames) - 1) + [HOLD_MS]
    iio.imwrite(path, np.stack(frames), extension=".gif", duration=durations, loop=0)


def completion_grid(
    completed: np.ndarray, mask: Mask, scale: int = 3, columns: int | None = None
) -> np.ndarray:
    """One RGB image tiling every completion (N, K, 784): a row per digit and a column per sample
    when K > 1, else ``columns`` per row (default: a square)."""
    n, k, _ = completed.shape
    columns = k if k > 1 else columns or math.ceil(math.sqrt(n))
    tiles = [upscale(colour_pixels(c, mask), scale) for c in completed.reshape(n * k, NUM_PIXELS)]
    rows = math.ceil(len(tiles) / columns)
    side = IMAGE_SIDE * scale
    grid = np.full((rows * (side + 2) + 2, columns * (side + 2) + 2, 3), BACKGROUND, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[
            2 + r * (side + 2) : 2 + r * (side + 2) + side, 2 + c * (side + 2) : 2 + c * (side + 2) + side
        ] = tile
    return grid


def stack_rows(images: list[np.ndarray]) -> np.ndarray:
    """RGB images one above the other, left-aligned on the background colour."""
    width = max(image.shape[1] for image in images)
    rows = [
        np.concatenate([image, np.full((image.shape[0], width - image.shape[1], 3), BACKGROUND, np.uint8)], 1)
        for image in images
    ]
    return np.concatenate(rows, axis=0)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG-encoded RGB image, for an atomic write."""
    return iio.imwrite("<bytes>", image, extension=".png")
