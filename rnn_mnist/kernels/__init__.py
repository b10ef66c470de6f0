"""Hand-written kernels for a GRU next-pixel model: tensors and sizes in, tensors out; never the model.

    gru.py            the GRU recurrence with a hand-written backward pass (derived in gru_backward.md)
    weights.py        StepWeights: the model's weights as plain tensors, split as the steps read them
    fast_step.py      the fast torch step: input gates by table lookup, then gru.py
    native.py         the fused C step (gru_step.c), built with the system compiler on first use
    native_recurrence.py  gru.py's training recurrence on gru_step.c's C loops (fp32, CPU), forward
                      and backward; gru.py falls back to its torch ops where it cannot run
    library.py        its library: built into a private cache, checked against its build-time hash, loaded

rnn_mnist/steps.py chooses which of them runs a model; nothing here imports rnn_mnist.models.
"""
