"""Progress for every stage that can take more than a few seconds, on a terminal or in a log file.

    for batch in progress(batches, "epoch 1/10", unit="batch"):
        ...
    with progress(total=284, desc="completing", unit="px") as bar:
        rollout(..., on_step=lambda: bar.update())

On a terminal: a tqdm bar, redrawn twice a second and erased when the stage ends. When stderr is
not a terminal (``nohup``, a log file, CI), a bar redrawn in place would pile up as fragments
glued together by carriage returns; there, each redraw is a whole plain line, one every
LOG_INTERVAL seconds once the stage has run that long, and a last line when it ends. Stages
shorter than that print nothing, so logs stay short.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

LIVE_INTERVAL = 0.5  # seconds between redraws on a terminal
LOG_INTERVAL = 10.0  # seconds before the first line, and between lines, in a log
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class _Lines:
    """A stream for tqdm that turns its in-place redraws (a carriage return, then the bar) into
    whole lines, and drops its erasing (blank redraws)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(
    iterable: Iterable[Any] | None = None,
    desc: str = "",
    unit: str = "it",
    total: float | None = None,
    enabled: bool = True,
    stream: IO[str] | None = None,
) -> tqdm:
    """A progress bar over ``iterable`` (or updated by hand up to ``total``) on ``stream``
    (stderr by default): live on a terminal, periodic plain lines elsewhere."""
    stream = sys.stderr if stream is None else stream
    common = {"desc": desc, "unit": unit, "total": total, "disable": not enabled}
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(
            iterable, file=stream, leave=False, dynamic_ncols=True, mininterval=LIVE_INTERVAL, **common
        )
    return tqdm(
        iterable,
        file=_Lines(stream),
        leave=True,  # a last line with where the stage ended (only if it printed any)
        mininterval=LOG_INTERVAL,
        delay=LOG_INTERVAL,
        miniters=1,  # check the clock every step: the interval is what spaces the lines
        bar_format=LOG_FORMAT,
        **common,
    )
