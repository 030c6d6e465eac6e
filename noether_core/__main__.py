"""``python -m noether_core`` is the ``noether`` command (``torchrun -m noether_core train ...``)."""

from noether_core.cli import main

raise SystemExit(main())
