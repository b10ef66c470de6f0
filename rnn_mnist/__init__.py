"""rnn-mnist: recurrent next-pixel models on binarised MNIST.

One module per concern: ``data`` (digits as tensors), ``models`` (config + model), ``training``
(the loop), ``checkpoint`` (files), ``rollout`` (completion), ``evaluation`` and ``visualise``
(metrics and pictures), ``cli`` (what the scripts share).
"""
