"""The exception types the command-line scripts turn into a short error message, and the one line
they print for a failed file operation."""

from __future__ import annotations

import errno
from pathlib import Path


class RnnMnistError(Exception):
    """A problem the user can fix (bad input, missing data, corrupt checkpoint).

    The scripts print ``error: <message>`` and exit non-zero instead of showing a traceback.
    """

    exit_code = 2
    quiet = False  # said by another process already (rank 0 of a torchrun run): print nothing


class TrainingInterrupted(RnnMnistError):
    """Ctrl-C during training; the last complete checkpoint is intact."""

    exit_code = 130


class NonFiniteLoss(RnnMnistError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


def describe_os_error(exc: OSError) -> str:
    """One line for a failed file operation: what failed, where, and what it means here."""
    path = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device while writing {path}; free some space and try again"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{reason}: {path}; check its permissions or choose another folder"
    if exc.errno == errno.ENAMETOOLONG:
        return f"a name in {path} is too long for the file system ({reason})"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and exc.filename is not None:
        blocking = _first_file(Path(path))
        if blocking is not None:
            what = "" if blocking == Path(path) else f": it cannot hold {path}"
            return f"{blocking} is a file, not a folder{what}"
    return f"{reason}: {path}"


def _first_file(path: Path) -> Path | None:
    """The outermost part of ``path`` that exists as a file (where a folder was expected)."""
    for part in [*reversed(path.parents), path]:
        try:
            if part.is_file():
                return part
        except OSError:
            return None
    return None
