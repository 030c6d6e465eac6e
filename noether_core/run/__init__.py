"""A run: its plan (``plan``), the trainer and its loop, resumable state, signals, data and device
movement, building models and datasets, the evaluator base, the ``Run`` protocol plugins see, and the
``train`` and ``eval`` commands (``launch``), the process group (``distributed``) and the torchrun
command line of ``noether train --nproc-per-node`` (``torchrun``)."""
