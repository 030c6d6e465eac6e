"""The ported examples of ``docs/migration.md`` run as the page shows them.

Each Python block of the page that opens with a path comment (``# seed_port/accuracy.py``) is written
to that path on ``sys.path``, and trained with in a short real run, using the page's own YAML entry for
it. The code lives in the page only, so what readers copy is what is tested.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_runs import UPE, tiny_config, train

from noether_core import read_metrics

PAGE = Path(__file__).resolve().parent.parent / "docs" / "migration.md"
BLOCK = re.compile(r"^```(?P<lang>\w+)\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
PACKAGE = "seed_port"


def blocks(lang: str) -> list[str]:
    return [m["code"] for m in BLOCK.finditer(PAGE.read_text(encoding="utf-8")) if m["lang"] == lang]


def ported_modules() -> dict[str, str]:
    """``{"seed_port/accuracy.py": source}``: the page's Python blocks that open with a path comment."""
    out = {}
    for code in blocks("python"):
        first = code.splitlines()[0]
        if first.startswith(f"# {PACKAGE}/"):
            out[first.removeprefix("# ")] = code
    return out


def page_entry(kind: str) -> dict[str, Any]:
    """The page's ``callbacks`` entry for ``kind``."""
    entries = [e for code in blocks("yaml") for e in yaml.safe_load(code).get("callbacks", [])]
    (entry,) = [e for e in entries if e["kind"] == kind]
    return dict(entry)


@pytest.fixture
def seed_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The page's ported modules, importable as ``seed_port.*`` during the test."""
    root = tmp_path / "src"
    for path, code in ported_modules().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(code, encoding="utf-8")
    monkeypatch.syspath_prepend(str(root))
    yield
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def run_files(tmp_path: Path, run_id: str) -> tuple[list[dict[str, Any]], str, str]:
    """The records, the status and the log of a finished run."""
    run = tmp_path / run_id
    summary = yaml.safe_load((run / "summary.yaml").read_text(encoding="utf-8"))
    return read_metrics(run / "metrics.jsonl"), summary["status"], (run / "log.txt").read_text("utf-8")


def test_the_page_ports_both_seed_examples() -> None:
    assert sorted(ported_modules()) == [f"{PACKAGE}/accuracy.py", f"{PACKAGE}/running_average.py"]


@pytest.mark.parametrize("path", sorted(ported_modules()))
def test_a_port_imports_only_the_public_face(path: str) -> None:
    tree = ast.parse(ported_modules()[path])
    modules = [
        node.module or "" if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert {m for m in modules if m.startswith("noether")} == {"noether_core"}, modules


@pytest.mark.usefixtures("seed_port")
def test_the_ported_accuracy_callback_evaluates_and_keeps_going(tmp_path: Path) -> None:
    entry = page_entry("seed_port.accuracy:AccuracyCallback")
    assert entry["dataset_key"] == "val"
    del entry["stop_at_accuracy"]
    raw = tiny_config()
    raw["callbacks"] = [entry]

    assert train(tmp_path, raw, "full") == 0

    records, status, log = run_files(tmp_path, "full")
    accuracy = {r["update"]: r["accuracy/val"] for r in records if "accuracy/val" in r}
    assert status == "completed"
    assert sorted(accuracy) == [UPE, 2 * UPE]
    assert all(0.0 <= value <= 1.0 for value in accuracy.values())
    assert f"accuracy/val: {accuracy[2 * UPE]:.4f}" in log
    assert f"best accuracy/val: {max(accuracy.values()):.4f} (completed)" in log


@pytest.mark.usefixtures("seed_port")
def test_the_ported_accuracy_callback_stops_the_run(tmp_path: Path) -> None:
    entry = page_entry("seed_port.accuracy:AccuracyCallback")
    entry["stop_at_accuracy"] = 0.0  # reached at the first evaluation, whatever the accuracy
    raw = tiny_config()
    raw["callbacks"] = [entry]

    assert train(tmp_path, raw, "stopped") == 0

    records, status, log = run_files(tmp_path, "stopped")
    assert status == "stopped"
    assert [r["update"] for r in records if "accuracy/val" in r] == [UPE]
    assert max(r["update"] for r in records) == UPE
    assert "(stopped)" in log


@pytest.mark.usefixtures("seed_port")
def test_the_ported_running_average_is_the_online_loss(tmp_path: Path) -> None:
    """``avg_loss/E1`` is the mean total loss since the last log: what ``OnlineLossCallback`` logs."""
    entry = page_entry("seed_port.running_average:RunningAverageCallback")
    raw = tiny_config()
    raw["callbacks"] = [entry, {"kind": "OnlineLossCallback", "every_n_epochs": 1, "verbose": False}]

    assert train(tmp_path, raw, "avg") == 0

    records, status, log = run_files(tmp_path, "avg")
    logged = [r for r in records if "avg_loss/E1" in r]
    assert status == "completed"
    assert [r["update"] for r in logged] == [UPE, 2 * UPE]
    for record in logged:
        assert record["avg_loss/E1"] == pytest.approx(record["loss/online/total/E1"], rel=1e-5)
    assert f"avg_loss/E1: {logged[-1]['avg_loss/E1']:.5f}" in log
