"""``noether train --nproc-per-node N``: the same command, started as ``N`` processes by ``torchrun``.

noether starts no process of its own: the options here become a ``torchrun`` command line (torch's
launcher, from the same Python), which then runs ``python -m noether_core train ...`` with the other
arguments once per process. With one machine (no ``--nnodes``, no ``--rdzv-endpoint``) torchrun runs
``--standalone``: it finds a free port itself, so runs started side by side do not collide.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from noether_core.errors import UsageError

#: The environment variable torchrun sets in every process it starts (and a plain process lacks).
TORCHRUN_MARKER = "TORCHELASTIC_RUN_ID"

#: The launcher's options: ``noether train`` takes them, and hands them to torchrun under the same names.
LAUNCHER_OPTIONS = ("nproc_per_node", "nnodes", "node_rank", "rdzv_endpoint", "rdzv_backend", "rdzv_id")


def add_launcher_options(parser: argparse.ArgumentParser) -> None:
    """``--nproc-per-node`` and the multi-machine options torchrun takes, on ``noether train``."""
    group = parser.add_argument_group(
        "several processes (the command is run again under torchrun, once per process)"
    )
    group.add_argument(
        "--nproc-per-node",
        type=_positive,
        metavar="N",
        help="start N processes on this machine (one per GPU with CUDA) under torchrun",
    )
    group.add_argument(
        "--nnodes", metavar="N|MIN:MAX", help="with --nproc-per-node: the number of machines (1)"
    )
    group.add_argument(
        "--node-rank", type=int, metavar="R", help="with --nproc-per-node: this machine's rank"
    )
    group.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="with --nproc-per-node: where the machines meet (c10d rendezvous unless --rdzv-backend)",
    )
    group.add_argument("--rdzv-backend", metavar="NAME", help="with --nproc-per-node: torchrun's rendezvous")
    group.add_argument(
        "--rdzv-id", metavar="ID", help="with --nproc-per-node: the job's id, the same on every machine"
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def launcher_requested(args: argparse.Namespace) -> bool:
    """Whether ``args`` ask for torchrun; a usage error when they name a launcher option without
    ``--nproc-per-node``, or when this process is one torchrun started already."""
    given = [name for name in LAUNCHER_OPTIONS if getattr(args, name, None) is not None]
    if not given:
        return False
    if args.nproc_per_node is None:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"{options} need --nproc-per-node N: the number of processes on each machine")
    if TORCHRUN_MARKER in os.environ:
        raise UsageError(
            "--nproc-per-node: this process was started by torchrun already; give the number of "
            "processes to torchrun or to noether train, not to both"
        )
    return True


def torchrun_command(args: argparse.Namespace, train_arguments: Sequence[str]) -> list[str]:
    """The torchrun command line that runs ``noether train TRAIN_ARGUMENTS`` as ``args`` ask."""
    launcher = ["--nproc-per-node", str(args.nproc_per_node)]
    if args.nnodes is None and args.rdzv_endpoint is None:
        launcher.append("--standalone")
    if args.nnodes is not None:
        launcher += ["--nnodes", str(args.nnodes)]
    if args.node_rank is not None:
        launcher += ["--node-rank", str(args.node_rank)]
    if args.rdzv_endpoint is not None:
        launcher += ["--rdzv-endpoint", args.rdzv_endpoint, "--rdzv-backend", args.rdzv_backend or "c10d"]
    elif args.rdzv_backend is not None:
        launcher += ["--rdzv-backend", args.rdzv_backend]
    if args.rdzv_id is not None:
        launcher += ["--rdzv-id", args.rdzv_id]
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "noether_core", *train_arguments]


def run_torchrun(command: Sequence[str], *, replace_process: bool) -> int:
    """Run ``command``: in place of this process (``exec``: signals reach torchrun, which forwards
    them to every process) when it is the ``noether`` command itself, else as a child process whose
    exit status is returned (``noether_core.cli.main`` called from Python)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if replace_process:
        os.execv(command[0], list(command))
    return subprocess.run(list(command), check=False).returncode


__all__ = [
    "LAUNCHER_OPTIONS",
    "TORCHRUN_MARKER",
    "add_launcher_options",
    "launcher_requested",
    "run_torchrun",
    "torchrun_command",
]
