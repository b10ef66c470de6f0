"""The one exception type the command-line scripts turn into a short error message."""


class RnnMnistError(Exception):
    """A problem the user can fix (bad input, missing data, corrupt checkpoint).

    The scripts print ``error: <message>`` and exit non-zero instead of showing a traceback.
    """

    exit_code = 2


class TrainingInterrupted(RnnMnistError):
    """Ctrl-C during training; the last complete checkpoint is intact."""

    exit_code = 130


class NonFiniteLoss(RnnMnistError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3
