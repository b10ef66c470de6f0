"""rnn-mnist: recurrent next-pixel models on binarised MNIST.

One module per concern: ``config`` (every option, once) with ``options`` and ``parsers`` (the
flags derived from it), ``data`` (digits as tensors), ``models`` (the models), ``steps`` (which
kernel runs them) over ``kernels/`` (arrays in, arrays out), ``runtime`` (device, seeds, compute
settings), ``training`` and ``tasks`` (the loop), ``checkpoint`` and ``resume`` (files),
``rollout`` (completion), ``likelihood`` (exact NLLs, Bayes' rule), ``evaluation``, ``scoring``
and ``reading`` (metrics), ``output_folder`` (an evaluation's folder, replaced whole),
``visualise`` (pictures), ``cli`` (what the scripts share).
"""
