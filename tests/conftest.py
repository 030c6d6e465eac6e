"""Shared test set-up: the quick switch for slow tests, the plugin distributions of
``tests/plugin_dists`` installed into throwaway folders, and a fixture for the real ``noether`` CLI.
The tiny runs tests share, and the helpers that run them, are in :mod:`tiny_runs`.

``NOETHER_QUICK=1`` (set by ``.ci/run``) asks tests marked ``slow`` for their quick variant: they read
the ``quick`` fixture and shrink their sizes, they are not skipped.

The suite is a CPU suite on every machine: its tiny runs leave ``trainer.device`` at ``auto`` and
assert what a CPU run does (gloo ranks, RSS peaks, CPU tensors), so on a machine with GPUs it hides them
(``CUDA_VISIBLE_DEVICES=""``, inherited by every subprocess). ``NOETHER_TEST_CUDA=1 pytest -m cuda``
leaves them visible and runs the tests marked ``cuda``; ``benchmarks/gpu_check.py`` checks the rest of
the GPU paths with real runs.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from tiny_runs import noether_loggers_restored

try:
    import fcntl
except ImportError:  # not POSIX: each xdist worker installs its own copies
    fcntl = None  # type: ignore[assignment]

QUICK = os.environ.get("NOETHER_QUICK", "") not in ("", "0")
PLUGIN_DISTS = Path(__file__).parent / "plugin_dists"

TEST_CUDA = os.environ.get("NOETHER_TEST_CUDA", "") not in ("", "0")
if not TEST_CUDA:  # before anything asks torch for a device: CUDA reads it once, when it starts
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

# Under pytest-xdist every worker is a process of its own; one math thread each keeps a 2-core machine
# from being oversubscribed (CLI subprocesses inherit it). Set before any test imports torch.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_report_header() -> list[str]:
    if QUICK:
        lines = ["NOETHER_QUICK=1: tests marked slow run in their quick variant"]
    else:
        lines = ["NOETHER_QUICK unset: tests marked slow run at full size"]
    if TEST_CUDA:
        lines.append("NOETHER_TEST_CUDA=1: GPUs visible; run with -m cuda (the other tests assume a CPU)")
    return lines


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cuda") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device (NOETHER_TEST_CUDA=1 on a machine with one)")


@pytest.fixture(autouse=True)
def _restore_noether_loggers() -> Iterator[None]:
    """The ``noether`` loggers as they were before every test, after it (see
    :func:`tiny_runs.noether_loggers_restored`)."""
    with noether_loggers_restored():
        yield


@pytest.fixture(scope="session")
def quick() -> bool:
    """Whether slow tests should shrink their sizes (``NOETHER_QUICK=1``)."""
    return QUICK


def _setuptools_can_build_here() -> bool:
    """Whether pip can build a wheel with this interpreter's own setuptools (``--no-build-isolation``).

    Before 70.1, setuptools needs the ``wheel`` package for that.
    """
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(part) for part in version.split(".")[:2])
    if (major, minor) >= (70, 1):
        return True
    try:
        importlib.metadata.version("wheel")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


class PluginDists:
    """The distributions under ``tests/plugin_dists``, each installed on first use into a folder of its
    own with ``pip install --no-deps --target``, so a test puts on ``PYTHONPATH`` exactly the ones it
    wants (the conflicting one only where a conflict is the point)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._targets: dict[str, Path] = {}

    def target(self, name: str) -> Path:
        """The folder ``name`` (e.g. ``noether-example-plugin``) is installed in."""
        if name not in self._targets:
            self._targets[name] = self._install_once(name)
        return self._targets[name]

    def _install_once(self, name: str) -> Path:
        if fcntl is None:
            return self._install(name)
        # xdist workers share self._root: the first one to ask installs, the others wait for it
        self._root.mkdir(parents=True, exist_ok=True)
        with open(self._root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            done = self._root / f"{name}.installed"
            if done.exists():
                return Path(done.read_text())
            target = self._install(name)
            done.write_text(str(target))
            return target

    def pythonpath(self, names: Iterable[str]) -> str:
        return os.pathsep.join(str(self.target(name)) for name in names)

    def _install(self, name: str) -> Path:
        source = PLUGIN_DISTS / name
        if not (source / "pyproject.toml").is_file():
            raise ValueError(f"no plugin distribution {name!r} under {PLUGIN_DISTS}")
        # build from a copy: setuptools writes build/ and *.egg-info/ beside the sources
        work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self._root))
        copy = work / "src"
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        target = work / "site"
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        cmd += ["--no-deps", "--no-compile", "--target", str(target)]
        if _setuptools_can_build_here():
            # offline and fast; otherwise pip fetches setuptools for an isolated build
            cmd += ["--no-build-isolation", "--no-index"]
        cmd.append(str(copy))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            pytest.fail(f"installing {name} failed:\n$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        return target


@pytest.fixture(scope="session")
def plugin_dists(tmp_path_factory: pytest.TempPathFactory) -> PluginDists:
    """Installer of the test plugin distributions; each is installed once per test session, shared by
    the xdist workers, and only when a test asks for it."""
    base = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        base = base.parent  # the folder all workers of this session share
    return PluginDists(base / "plugin_dists")


@pytest.fixture(scope="session")
def noether_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """:func:`tiny_runs.run_noether`, for tests that run the CLI."""
    from tiny_runs import run_noether  # imports torch: after OMP_NUM_THREADS is set above

    return run_noether
