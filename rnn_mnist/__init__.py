"""rnn-mnist: recurrent next-pixel models on binarised MNIST.

One module per concern: ``config`` (every option, once) with ``options`` and ``parsers`` (the
flags derived from it), ``data`` (digits as tensors), ``models`` (the models), ``steps`` (which
kernel runs them) over ``kernels/`` (arrays in, arrays out), ``runtime`` (device, seeds, compute
settings), ``training`` and ``tasks`` (the loop), ``checkpoint`` and ``resume`` (files),
``rollout`` (completion), ``likelihood`` (exact NLLs, Bayes' rule), ``evaluation``, ``scoring``
and ``reading`` (metrics), ``output_folder`` (an evaluation's folder, replaced whole),
``visualise`` (pictures), ``cli`` (what the scripts share); ``api`` (the Python API, below).

    import rnn_mnist
    model = rnn_mnist.load("pretrained/fast")
    digits, labels = rnn_mnist.test_digits(model, n=16)
    model.log_prob(digits)        # (16,) nats

``import rnn_mnist`` stays light: the API (and torch) are imported on first use of a name below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rnn_mnist.api import Model, load, test_digits
    from rnn_mnist.errors import RnnMnistError

__all__ = ["Model", "RnnMnistError", "load", "test_digits"]
_WHERE = {"Model": "api", "load": "api", "test_digits": "api", "RnnMnistError": "errors"}


def __getattr__(name: str) -> Any:
    """``rnn_mnist.load`` and the other names of ``__all__``, imported when first asked for."""
    if name not in _WHERE:
        raise AttributeError(f"module 'rnn_mnist' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"rnn_mnist.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
