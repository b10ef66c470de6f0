"""Which code ran: the git commit of the checkout the package is tracked in, and whether it differed.

    code_version()   # {"git_commit": "4e78446...", "git_dirty": False}; both None outside a checkout

Every training epoch records it (in its ``compute`` record: rnn_mnist/training.py), so that a number
in metrics.json can be traced back to the code that produced it. "Dirty" means ``git status`` lists
something: a changed, staged or untracked file anywhere in the checkout (git-ignored outputs such as
experiments/ do not count). Git is asked with a short timeout; without git, outside a checkout, or
when the package is an installed copy that no checkout tracks, both values are None.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent
GIT_TIMEOUT_S = 5.0
UNKNOWN = {"git_commit": None, "git_dirty": None}


def code_version(package: Path = PACKAGE) -> dict[str, Any]:
    """The commit (40 hex digits) and dirtiness of the checkout tracking ``package``'s folder."""
    # The package's own file must be tracked: an installed copy inside some other checkout (a .venv
    # in the project folder) is not the code that commit holds.
    if _git(package, "ls-files", "--error-unmatch", "--", "__init__.py") is None:
        return dict(UNKNOWN)
    commit = _git(package, "rev-parse", "HEAD")
    if commit is None:  # a repository without commits yet
        return dict(UNKNOWN)
    status = _git(package, "status", "--porcelain")
    return {"git_commit": commit.strip(), "git_dirty": None if status is None else bool(status.strip())}


def _git(folder: Path, *args: str) -> str | None:
    """git's output in ``folder``, or None if git is missing, fails or takes too long."""
    # No optional locks: `git status` must not take index.lock from under the user's own git commands.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None
