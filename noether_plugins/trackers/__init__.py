"""Built-in trackers, registered in the ``noether.trackers`` entry-point group like any third-party
tracker: ``tensorboard``, ``mlflow``, ``wandb`` and ``csv``.

Each imports its library only when a config creates it, so importing these modules never fails; a
tracker whose library is missing is a config error naming the ``pip install`` that brings it (the
extras ``noether[tensorboard]``, ``noether[mlflow]``, ``noether[wandb]``, or ``noether[trackers]`` for
all three; ``csv`` needs nothing).
"""
