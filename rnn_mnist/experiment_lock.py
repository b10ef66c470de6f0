"""One writer per experiment folder: an exclusive lock held for a training run's lifetime.

    with ExperimentLock(paths.root):   # a second run here gets a one-line error naming this one
        ...train...

The same lock, under another name and wording, keeps two evaluations out of one output folder
(rnn_mnist/output_folder.py).

The lock is ``fcntl.flock`` on ``<folder>/.lock``. The kernel drops it when the process ends, by
Ctrl-C, a crash or SIGKILL alike, so a lock is never left stale; the file only says who holds it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from rnn_mnist.errors import RnnMnistError, describe_os_error

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not protected from each other
    fcntl = None

LOCK_NAME = ".lock"


class ExperimentBusy(RnnMnistError):
    """Another run holds the experiment folder."""


class ExperimentLock:
    """Exclusive, non-blocking lock on one experiment folder, created if it does not exist.

    On release the lock file is removed, and so is the folder if this lock created it and nothing
    else was written there (a run refused before its first save leaves no trace).
    """

    def __init__(
        self, folder: Path, name: str = LOCK_NAME, what: str | None = None, holder: str = "run"
    ) -> None:
        """``name``: the lock file in ``folder``; ``what`` is locked and ``holder`` holds it, as the
        refusal words them ("experiment <folder> is in use by another run (pid ...)")."""
        self.folder = Path(folder)
        self.path = self.folder / name
        self.what = what or f"experiment {self.folder}"
        self.holder = holder
        self._folder_words = "the experiment folder" if what is None else "the folder"
        self._fd: int | None = None
        self._created_folder = False

    def acquire(self) -> None:
        if fcntl is None:
            return
        # Another run may remove the lock file between our open and our flock (it removes it on
        # release); then we would hold a lock on a file nobody else can find. Retry until the
        # file we locked is the one at the path.
        for _ in range(100):
            self._created_folder = self._created_folder or not self.folder.exists()
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:
                continue  # the folder was removed under us by a run that gave up: make it again
            except OSError as exc:
                raise RnnMnistError(
                    f"cannot write to {self._folder_words} {self.folder} ({describe_os_error(exc)})"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise ExperimentBusy(
                    f"{self.what} is in use by another {self.holder} ({holder}); wait for it to "
                    "end or stop it, then try again"
                ) from None
            try:
                same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:
                os.close(fd)
                continue
            self._fd = fd
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode())
            except OSError as exc:
                self.release()
                raise RnnMnistError(
                    f"cannot write to {self._folder_words} {self.folder} ({exc.strerror or exc})"
                ) from None
            return
        raise RnnMnistError(f"could not lock {self._folder_words} {self.folder}: it keeps changing")

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding the lock: whoever opened the old file sees that it is gone.
        with contextlib.suppress(OSError):  # a folder made read-only meanwhile: an unheld file is harmless
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
        if self._created_folder:
            with contextlib.suppress(OSError):  # only succeeds if the run wrote nothing
                self.folder.rmdir()

    def __enter__(self) -> ExperimentLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """What the lock file says about the run holding it."""
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "its pid is not recorded yet"
