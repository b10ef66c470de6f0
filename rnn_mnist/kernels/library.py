"""gru_step.c's shared library: built with the system C compiler into a private cache, checked, loaded.

    compiler = compiler_command()                       # $CC or cc, found on PATH (None: none)
    library, path = load_library(source, flags, compiler)   # KernelUnavailable(why) where it cannot be had

The cache is ``$RNN_MNIST_CACHE`` or ``~/.cache/rnn_mnist``. A library there runs in the process
that loads it, so nothing is loaded that this process could not have built itself:
- the folder must be the user's and writable by nobody else (else the kernel is refused: nothing
  of it is read);
- each library ``gru_step-<setting>-<build>.so`` has a sidecar ``<library>.sha256``, written at
  build time; a library that is a link, is not the user's, is writable by others or does not hash
  to its sidecar (replaced, truncated, planted) is rebuilt over, never loaded. The bytes checked
  are the bytes loaded: the library is opened once and handed to the loader by its descriptor;
- a new build is loaded from its build folder before it is moved into place, so a compiler that
  makes junk is an error now and leaves nothing cached;
- the compiler runs in its own process group under a timeout ($RNN_MNIST_CC_TIMEOUT, 120 s), and
  the whole group is killed when it runs over or the build is interrupted;
- a build folder ``.build-<pid>-*`` whose process is gone (killed mid-build) or that is older than
  30 minutes is removed by the next build;
- a new build removes the older builds of its own compiler setting (the compiler command, the
  flags and the CPU: the ``<setting>`` part of the name) and legacy unchecked ones, never another
  setting's.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIMEOUT_ENV = "RNN_MNIST_CC_TIMEOUT"
DEFAULT_TIMEOUT_S = 120.0
ABANDONED_BUILD_AGE_S = 30 * 60  # no build takes this long: its folder is left over
# gru_step-<setting>-<build>.so; builds of earlier versions had no <setting> part and no sidecar
_LIBRARY_NAME = re.compile(r"gru_step-(?:(?P<setting>[0-9a-f]{8})-)?(?P<build>[0-9a-f]{16})\.so")
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class KernelUnavailable(Exception):
    """Why the library cannot be had here; the caller keeps the torch-op step."""


class _Unverified(Exception):
    """A cached library that must not be loaded (the reason says why); it is rebuilt."""


def cache_folder() -> Path:
    """$RNN_MNIST_CACHE, else ~/.cache/rnn_mnist."""
    return Path(os.environ.get("RNN_MNIST_CACHE") or Path.home() / ".cache" / "rnn_mnist")


def compiler_command() -> list[str] | None:
    """$CC (it may be "ccache gcc") or cc, its program found on PATH; None where there is none.
    Raises KernelUnavailable for a $CC that cannot be split into words."""
    text = os.environ.get("CC") or "cc"
    try:
        compiler = shlex.split(text)
    except ValueError as error:  # CC='gcc "'
        raise KernelUnavailable(f"CC={text!r} cannot be read: {error}") from None
    found = shutil.which(compiler[0]) if compiler else None
    return None if found is None else [found, *compiler[1:]]


def compiler_timeout() -> float:
    """Seconds a compiler run may take: $RNN_MNIST_CC_TIMEOUT, else 120."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise KernelUnavailable(f"{TIMEOUT_ENV}={text!r} is not a number of seconds above 0")
    return seconds


def load_library(source: Path, flags: list[str], compiler: list[str]) -> tuple[ctypes.CDLL, Path]:
    """The library of ``source`` built by ``compiler`` with ``flags``, and where it lies: the
    cached build when it checks out, else a new build. Raises KernelUnavailable."""
    timeout = compiler_timeout()
    folder = _private_folder(cache_folder())
    version = _run([*compiler, "--version"], timeout)[1]
    name = library_name(source, flags, compiler, version)
    path = folder / name
    try:
        return _load_checked(path), path
    except FileNotFoundError:
        pass
    except _Unverified as problem:  # replaced, truncated or planted: built over, never loaded
        print(f"note: {path} {problem}: building it again", file=sys.stderr)
    except (OSError, AttributeError) as error:  # checked, yet it does not load here
        raise KernelUnavailable(f"loading {path} failed: {error}") from None
    library = _build(source, flags, compiler, path, timeout)
    _remove_stale_builds(folder, name)
    return library, path


def library_name(source: Path, flags: list[str], compiler: list[str], version: str) -> str:
    """gru_step-<setting>-<build>.so: <setting> hashes what the user chooses and the machine (the
    compiler command, the flags, the CPU), <build> that and the source and the compiler's version."""
    setting = "\n".join([" ".join(compiler + flags), _cpu_fingerprint()])
    build = "\n".join([source.read_text(), " ".join(compiler + flags), version, _cpu_fingerprint()])
    digest = lambda text, size: hashlib.sha256(text.encode()).hexdigest()[:size]  # noqa: E731
    return f"gru_step-{digest(setting, 8)}-{digest(build, 16)}.so"


def _cpu_fingerprint() -> str:
    """What -march=native depends on: the CPU's model and flags (Linux), else the platform."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("flags", "model name"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _not_the_users_alone(info: os.stat_result) -> str | None:
    """Why a file or folder with this stat is not the user's alone, or None."""
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"belongs to another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by others (mode {stat.filemode(info.st_mode)})"
    return None


def _private_folder(folder: Path) -> Path:
    """``folder``, created (mode 0700) if missing, once it is checked to be the user's alone."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.stat(folder)
    except OSError as error:
        raise KernelUnavailable(f"the kernel cache {folder} cannot be used: {error}") from None
    problem = None if stat.S_ISDIR(info.st_mode) else "is not a folder"
    problem = problem or _not_the_users_alone(info)
    if problem:
        raise KernelUnavailable(
            f"the kernel cache {folder} {problem}; a library there could be anyone's. "
            "Make it yours alone (chmod go-w) or set RNN_MNIST_CACHE to a folder of yours"
        )
    return folder


def _sha256(fd: int) -> str:
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, 1 << 20, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def _open_checked(path: Path) -> int:
    """A descriptor of ``path``, a regular file of the user's alone (not a link). Raises
    FileNotFoundError where there is none, _Unverified where it is not."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as error:  # ELOOP: a symbolic link
        raise _Unverified(f"cannot be opened as a plain file ({error.strerror})") from None
    info = os.fstat(fd)
    problem = None if stat.S_ISREG(info.st_mode) else "is not a plain file"
    problem = problem or _not_the_users_alone(info)
    if problem:
        os.close(fd)
        raise _Unverified(problem)
    return fd


def _load_checked(path: Path) -> ctypes.CDLL:
    """The cached library at ``path``, once it hashes to its sidecar."""
    fd = _open_checked(path)
    try:
        sidecar = _open_checked(path.with_name(path.name + ".sha256"))
    except FileNotFoundError:
        os.close(fd)
        raise _Unverified("has no recorded hash") from None
    except _Unverified as problem:
        os.close(fd)
        raise _Unverified(f"has a hash file that {problem}") from None
    with os.fdopen(sidecar) as file:
        recorded = file.read(200).strip()
    if _sha256(fd) != recorded:
        os.close(fd)
        raise _Unverified("does not match the hash recorded when it was built")
    return _dlopen(fd, path)


def _dlopen(fd: int, path: Path) -> ctypes.CDLL:
    """The library open on ``fd``, loaded through that descriptor (Linux), so that what runs is what
    was checked even if the file's name is changed in between. The descriptor stays open with the
    library (a library is never unloaded): a later load cannot reuse its /proc/self/fd name."""
    name = f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else str(path)
    try:
        library = ctypes.CDLL(name)
        library.gru_step  # noqa: B018 (the symbol must be there)
    except (OSError, AttributeError):
        os.close(fd)
        raise
    library._checked_fd = fd  # type: ignore[attr-defined]
    return library


def _run(command: list[str], timeout: float) -> tuple[int, str, str]:
    """Run a compiler: (exit code, stdout, stderr). It runs in its own process group, killed whole
    when it takes over ``timeout`` seconds or this process is interrupted (a compiler driver's
    children would otherwise outlive it and hold its pipes open)."""
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except BaseException as error:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            process.kill()
            if isinstance(error, subprocess.TimeoutExpired):
                raise KernelUnavailable(
                    f"{Path(command[0]).name} ran over {timeout:g} s and was stopped, with what it "
                    f"started ({TIMEOUT_ENV} sets the limit)"
                ) from None
            raise
    return process.returncode, out, err


def _build(source: Path, flags: list[str], compiler: list[str], target: Path, timeout: float) -> ctypes.CDLL:
    """Compile and link in a build folder of this process, load the result there (a compiler that
    made junk fails here), record its hash, then move both into place (atomically: two processes
    may build at once).

    -ffast-math is for the compile only: linking a shared library with it would pull in startup
    code that switches the whole process to flush-to-zero."""
    folder = target.parent
    _remove_abandoned_builds(folder)
    build = Path(tempfile.mkdtemp(prefix=f".build-{os.getpid()}-", dir=folder))
    try:
        obj, lib = build / "gru_step.o", build / target.name
        for command in (
            [*compiler, *flags, "-c", str(source), "-o", str(obj)],
            [*compiler, "-shared", "-fopenmp", str(obj), "-o", str(lib)],
        ):
            code, _, err = _run(command, timeout)
            if code:
                message = (err.strip().splitlines() or [f"exit code {code}"])[-1]
                raise KernelUnavailable(f"building gru_step.c failed: {' '.join(compiler)} ...: {message}")
        fd = os.open(lib, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
        try:
            library = _dlopen(fd, lib)
        except (OSError, AttributeError) as error:
            made = f"{' '.join(compiler)} made a library that does not load"
            raise KernelUnavailable(f"building gru_step.c failed: {made} ({error})") from None
        sidecar = build / (target.name + ".sha256")
        sidecar.write_text(_sha256(fd) + "\n")
        os.chmod(lib, 0o755)  # writable by the user alone whatever the umask: else never reused
        os.chmod(sidecar, 0o644)
        os.replace(sidecar, folder / sidecar.name)  # the hash first: a library is never there without it
        os.replace(lib, target)
        return library
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: there
        return False
    return False


def _remove_abandoned_builds(folder: Path) -> None:
    """Build folders left by a process that was killed mid-build (or that are too old to be live)."""
    for build in folder.glob(".build-*"):
        pid = build.name.split("-")[1]
        try:
            age = time.time() - build.lstat().st_mtime
        except OSError:
            continue
        if not pid.isdigit() or _process_gone(int(pid)) or age > ABANDONED_BUILD_AGE_S:
            shutil.rmtree(build, ignore_errors=True)


def _remove_stale_builds(folder: Path, keep: str) -> None:
    """Older builds of ``keep``'s setting (an earlier source or compiler version) and unchecked builds
    of earlier versions of this code; another compiler setting's library stays (two settings sharing
    a cache would otherwise delete each other's on every build)."""
    setting = _LIBRARY_NAME.fullmatch(keep)["setting"]
    for path in folder.glob("gru_step-*.so"):
        match = _LIBRARY_NAME.fullmatch(path.name)
        if path.name != keep and match and match["setting"] in (None, setting):
            path.unlink(missing_ok=True)  # a process that has it loaded keeps its mapping
            path.with_name(path.name + ".sha256").unlink(missing_ok=True)
