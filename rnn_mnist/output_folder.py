"""One evaluation's output folder: every file in it from one run, whatever stops the run.

    check_replaceable(Path("plots/gru-128"), "--out-dir")  # before any work: nothing but our files
    with OutputFolder(Path("plots/gru-128")) as outputs:   # locked: a second evaluation here stops
        ...write every file into outputs.staging...         # plots/.gru-128.tmp-<pid>
        outputs.keep_log(metrics)                           # evaluations.jsonl: the old lines + this one
        outputs.swap_in()                                   # the whole folder replaced at once
    read_log(Path("plots/gru-128"))                         # every evaluation into it, oldest first

The files are written into a fresh folder beside the target (so on the same file system), which
then takes the target's place: in one step on Linux (renameat2 RENAME_EXCHANGE swaps the two
folders), elsewhere by two renames, and should a kill fall between them the next evaluation puts
the old folder back before it starts. So a kill at any moment leaves at the target the complete old
outputs or the complete new ones, never a mix, and no old GIF outlives a new evaluation. What a
killed evaluation left beside the target is removed by the next one into the same folder, under
its lock: no other evaluation can be writing it then.

One file outlives the evaluations: evaluations.jsonl, a line per evaluation into the folder (its
metrics), carried into the new folder with the new evaluation's line appended, under the lock, so
that it arrives with the swap: an earlier evaluation is kept, never silently replaced.

The lock is rnn_mnist/experiment_lock.py's flock on ``.<name>.lock`` beside the target (not in it:
the target is replaced). Since the whole folder is replaced, one holding files that evaluate.py
does not write is refused rather than emptied.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

from rnn_mnist.checkpoint import atomic_write, check_writable_folder, json_bytes
from rnn_mnist.errors import RnnMnistError
from rnn_mnist.experiment_lock import ExperimentLock

# What evaluate.py writes (rnn_mnist/evaluation.py, rnn_mnist/reading.py): completions, a GIF per
# digit and sample (<label>-<index>[-<sample>].gif), a reading's figures, the log of evaluations,
# and half-written files atomic_write left when an older version was killed (.<name>.<random>.tmp).
EVALUATIONS_LOG = "evaluations.jsonl"
COMPLETION_FILES = ("metrics.json", "completions.npz", "completions.png")
READING_FILES = ("metrics.json", "confusion.png", "misread.png", "accuracy-by-pixels.png")
OUTPUT_FILES = frozenset((*COMPLETION_FILES, *READING_FILES, EVALUATIONS_LOG))
# What the log leaves out of an evaluation's metrics: per-class and per-digit detail, in metrics.json.
UNLOGGED = frozenset({"per_class", "misread", "confusion_matrix", "accuracy_by_pixels_read", "against"})
OUTPUT_PATTERN = re.compile(r"\d+-\d+(-\d+)?\.gif|\..+\.[^.]+\.tmp")
SHOWN_FOREIGN = 3  # names shown in the refusal

_AT_FDCWD = -100  # <fcntl.h>: paths relative to the working directory
_RENAME_EXCHANGE = 2  # <linux/fs.h>


def is_output(entry: Path) -> bool:
    """Whether ``entry`` is a file evaluate.py writes."""
    return entry.is_file() and (entry.name in OUTPUT_FILES or bool(OUTPUT_PATTERN.fullmatch(entry.name)))


def check_replaceable(out_dir: Path, what: str) -> None:
    """Refuse, before any work, an output folder that replacing whole would harm: the root of a file
    system, or a folder holding anything evaluate.py does not write (it would go with the old outputs)."""
    target = Path(out_dir).resolve()
    if target.parent == target:
        raise RnnMnistError(f"{what} {out_dir} is the root of a file system: give a folder of its own")
    # The new folder is made, and renamed into place, beside the target.
    check_writable_folder(target.parent, f"{what} {out_dir} cannot be replaced: its parent folder")
    if not target.is_dir():
        return
    foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in target.iterdir() if not is_output(p))
    if foreign:
        listed = ", ".join(foreign[:SHOWN_FOREIGN]) + (", ..." if len(foreign) > SHOWN_FOREIGN else "")
        raise RnnMnistError(
            f"{what} {out_dir} holds files evaluate.py does not write ({listed}); an evaluation replaces "
            "its whole folder: give a folder of its own"
        )


class OutputFolder:
    """The evaluation's lock on ``target``, and the folder ``staging`` that will replace it."""

    def __init__(self, target: Path) -> None:
        shown = Path(target)
        self.target = shown.resolve()  # a symlinked folder is replaced where it lives
        self.staging = self._beside("tmp", os.getpid())
        lock_name, what = f".{self.target.name}.lock", f"output folder {shown}"
        self._lock = ExperimentLock(self.target.parent, lock_name, what=what, holder="evaluation")
        self._swapped = False

    def _beside(self, kind: str, pid: int) -> Path:
        return self.target.parent / f".{self.target.name}.{kind}-{pid}"

    def __enter__(self) -> OutputFolder:
        self._lock.acquire()
        try:
            self._clear_leftovers()
            self.staging.mkdir()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if not self._swapped:  # stopped before its outputs were complete: the old ones stay
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self._lock.release()

    def swap_in(self) -> None:
        """Put the complete ``staging`` in the target's place, and remove the old outputs."""
        if not os.path.lexists(self.target):
            os.rename(self.staging, self.target)
        elif _exchange(self.staging, self.target):
            shutil.rmtree(self.staging, ignore_errors=True)  # it holds the old outputs now
        else:
            aside = self._beside("old", os.getpid())
            os.rename(self.target, aside)
            try:  # killed before this rename: the next evaluation puts `aside` back
                os.rename(self.staging, self.target)
            except OSError:
                os.rename(aside, self.target)
                raise
            shutil.rmtree(aside, ignore_errors=True)
        self._swapped = True

    def keep_log(self, metrics: dict[str, Any]) -> None:
        """Write the target's evaluations.jsonl, with this evaluation's ``metrics`` appended (less
        UNLOGGED), into ``staging``: the log arrives with the swap, whole. A folder evaluated before
        there was a log starts it with its metrics.json, so that this evaluation does not drop that one."""
        try:
            kept = (self.target / EVALUATIONS_LOG).read_bytes()
        except FileNotFoundError:
            kept = b"".join(_line(e) for e in _previous_metrics(self.target))
        if kept and not kept.endswith(b"\n"):  # a line cut short by hand: left as it is, on its own
            kept += b"\n"
        atomic_write(self.staging / EVALUATIONS_LOG, lambda f: f.write(kept + _line(metrics)))

    def _clear_leftovers(self) -> None:
        """Undo what killed evaluations into the target left: put back an old folder set aside just
        before a kill, remove half-written ones. Safe only under the lock, which the caller holds."""
        pattern = re.compile(rf"\.{re.escape(self.target.name)}\.(tmp|old)-\d+")
        kinds = {p: m.group(1) for p in self.target.parent.iterdir() if (m := pattern.fullmatch(p.name))}
        leftovers = list(kinds)
        set_aside = sorted((p for p, kind in kinds.items() if kind == "old"), key=lambda p: p.stat().st_mtime)
        if set_aside and not os.path.lexists(self.target):
            os.rename(set_aside[-1], self.target)
            leftovers.remove(set_aside[-1])
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)


def read_log(folder: Path) -> list[dict[str, Any]]:
    """The evaluations logged in ``folder``'s evaluations.jsonl, oldest first; lines that are not
    a JSON object are passed over (none: an empty list)."""
    try:
        lines = (Path(folder) / EVALUATIONS_LOG).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


def _line(metrics: dict[str, Any]) -> bytes:
    """One line of the log: the metrics less UNLOGGED, strict JSON (json_bytes: a NaN as null)."""
    entry = json.loads(json_bytes({k: v for k, v in metrics.items() if k not in UNLOGGED}))
    return json.dumps(entry, separators=(",", ":")).encode() + b"\n"


def _previous_metrics(target: Path) -> list[dict[str, Any]]:
    """The metrics.json of an evaluation made before the log existed, as the log's first entry."""
    try:
        metrics = json.loads((target / "metrics.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return []
    return [metrics] if isinstance(metrics, dict) else []


@lru_cache(maxsize=1)
def _renameat2():
    """libc's renameat2 (Linux, glibc 2.28 on), or None."""
    with contextlib.suppress(OSError, AttributeError):
        function = ctypes.CDLL(None, use_errno=True).renameat2
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        return function
    return None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step; False where the system or file system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))
