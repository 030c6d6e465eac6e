"""The benchmark scripts still run: one tiny run of the default-plugins benchmark (its numbers are not
checked here; speed is measured by running the script, never asserted in a test), the GPU check,
which on a machine without CUDA skips, ``python -m benchmarks --quick``, which writes every row of
the report between its markers and nothing outside them, and the report's GPU section, whose code runs
on the CPU with ``--gpu-device cpu``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from noether_core import hookimpl

ROOT = Path(__file__).resolve().parent.parent


def test_default_plugins_overhead_runs_and_prints_its_table(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import default_plugins_overhead

    args = "--updates 40 --warmup 0 --log-every 10 --track-every 5 --block 10 --turn 5 --breakdown-runs 1"
    status = default_plugins_overhead.main(args.split())
    out = capsys.readouterr().out
    assert status == 0
    assert "log every 10 updates, track every 5" in out
    assert "4 timed blocks of 10 updates" in out
    for row in ("no plugins, µs/update", "default plugins, µs/update", "OnlineLossCallback/U5"):
        assert row in out


def test_noop_plugins_benchmark_runs_every_plugin_and_prints_the_per_plugin_rows(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import noop_plugins_overhead

    calls: list[str] = []

    @hookimpl
    def after_update(self: object) -> None:
        calls.append("u")

    monkeypatch.setattr(noop_plugins_overhead.NoOp, "after_update", after_update)
    args = "--updates 20 --warmup 0 --every 5 --block 10 --turn 5"
    status = noop_plugins_overhead.main(args.split())
    out = capsys.readouterr().out
    assert status == 0
    for row in ("no plugins, µs/update", "100 no-op plugins, µs/update", "one more plugin (20 -> 100)"):
        assert row in out
    assert "target: <= 1 µs/update per plugin" in out
    assert len(calls) == (20 + 100) * 20  # every entry of both trainers, on every update


def test_data_path_benchmark_prints_every_loop_and_the_target(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import data_path

    args = ["--blocks", "4", "--block", "10", "--turn", "5", "--warmup-blocks", "0", "--dataset-size", "256"]
    status = data_path.main(args)
    out = capsys.readouterr().out
    assert status == 0
    assert "load average (1/5/15 min): before" in out
    for row in ("DataLoader loop", "pre-batched loop", "noether, no plugins", "noether, defaults"):
        assert out.count(f"  {row}") == 2  # one row per model
    for model in ("tiny: Linear(32->32), batch 8", "mlp: MLP 256 wide (2 hidden layers), batch 64"):
        assert model in out
    assert out.count("within 5% of the pre-batched loop") == 2


def test_the_ema_breakdown_prints_each_way_of_averaging(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import ema_update

    assert ema_update.main(["--breakdown", "--rounds", "1", "--budget", "0.001"]) == 0
    out = capsys.readouterr().out
    rows = ("bound (add_, flat)", "lerp_, flat", "_foreach_lerp_, all 48 tensors", "the 16 large only")
    for row in (*rows, "32 small gathered + the large"):
        assert row in out
    assert out.count("of the bound") == 5


def test_the_checkpoint_breakdown_prints_each_part_of_a_save(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import checkpoint_save

    assert checkpoint_save.main(["--breakdown", "--rounds", "1", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = ("48 tensors, bytes dropped", "1 tensor of the same bytes", "synced in turn", "synced at once")
    for row in rows:
        assert row in out
    assert len(re.findall(r"\d+\.\d\d ms", out)) == 4
    assert list(tmp_path.iterdir()) == []  # its temporary directory is gone


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the script checks, it does not skip")
def test_the_gpu_check_skips_cleanly_without_cuda() -> None:
    script = ROOT / "benchmarks" / "gpu_check.py"
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no CUDA device here" in proc.stdout
    assert "skipping" in proc.stdout
    assert proc.stderr == ""


MARKED = re.compile(r"(<!-- benchmarks:begin (\w+) -->\n).*?(\n<!-- benchmarks:end \2 -->)", re.DOTALL)


def _stale(text: str) -> str:
    """``text`` with every marked section's content replaced by ``STALE``."""
    return MARKED.sub(r"\1STALE\3", text)


def test_the_report_command_writes_every_row_between_the_markers_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import report

    docs, readme = tmp_path / "performance.md", tmp_path / "README.md"
    docs.write_text(_stale((ROOT / "docs" / "performance.md").read_text(encoding="utf-8")), encoding="utf-8")
    readme.write_text(_stale((ROOT / "README.md").read_text(encoding="utf-8")), encoding="utf-8")
    docs_before, readme_before = docs.read_text(encoding="utf-8"), readme.read_text(encoding="utf-8")
    command = [sys.executable, "-m", "benchmarks", "--quick", "--docs", str(docs), "--readme", str(readme)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    docs_after, readme_after = docs.read_text(encoding="utf-8"), readme.read_text(encoding="utf-8")
    assert [m[1] for m in MARKED.findall(docs_after)] == ["overhead", "components", "gpu"]
    assert [m[1] for m in MARKED.findall(readme_after)] == ["headline"]
    assert "STALE" not in docs_after
    assert "STALE" not in readme_after
    # outside the markers, not a character changed
    assert _stale(docs_after) == docs_before
    assert _stale(readme_after) == readme_before

    overhead = docs_after.split("<!-- benchmarks:begin overhead -->")[1].split("<!-- benchmarks:end")[0]
    rows = [report.HAND, report.FLOOR, *report.NOETHER_ROWS]
    if report.lightning_available():
        rows += list(report.LIGHTNING_ROWS)
        assert "not installed" not in overhead
    else:
        assert overhead.count("Lightning: not installed") == 1
        assert "Lightning, " not in overhead
    for row in rows:
        assert overhead.count(f"\n| {row} | ") == 2, row  # one row per model
    for model in ("**tiny**: Linear(32->32), batch 8", "**mlp**: MLP 256 wide (2 hidden layers), batch 32"):
        assert model in overhead
    assert overhead.count("load average (1/5/15 min) before ") == 2
    assert "2 CPUs" in overhead or f"{os.cpu_count()} CPUs" in overhead

    components = docs_after.split("<!-- benchmarks:begin components -->")[1].split("<!-- benchmarks:end")[0]
    assert "| 1,055,744 | 48 |" in components  # EMA at 1M: parameters and tensors
    assert "| 1,055,744 | 4.2 MB |" in components  # a checkpoint of the same model
    gpu = docs_after.split("<!-- benchmarks:begin gpu -->")[1].split("<!-- benchmarks:end")[0]
    if not torch.cuda.is_available():
        assert "No GPU: not measured" in gpu

    headline = readme_after.split("<!-- benchmarks:begin headline -->")[1].split("<!-- benchmarks:end")[0]
    assert "| noether, no plugins | " in headline
    assert "| noether, defaults | " in headline
    assert ("| Lightning, defaults | " in headline) == report.lightning_available()


def test_the_report_refuses_a_file_without_its_markers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.__main__ import replace_marked

    text = (
        "# Performance\n\n<!-- benchmarks:begin overhead -->\nold\n<!-- benchmarks:end overhead -->\nrest\n"
    )
    assert replace_marked(text, "overhead", "new", tmp_path) == text.replace("\nold\n", "\nnew\n")
    with pytest.raises(SystemExit, match="expected one '<!-- benchmarks:begin gpu -->'"):
        replace_marked(text, "gpu", "new", tmp_path)


def test_the_gpu_section_runs_its_code_on_the_cpu_and_writes_nothing(tmp_path: Path) -> None:
    docs = tmp_path / "performance.md"
    docs.write_text("<!-- benchmarks:begin gpu -->\nold\n<!-- benchmarks:end gpu -->\n", encoding="utf-8")
    command = [sys.executable, "-m", "benchmarks", "--gpu-only", "--gpu-device", "cpu", "--quick"]
    proc = subprocess.run(
        [*command, "--docs", str(docs)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "the GPU section's code run on the CPU: a check of the code, not a GPU figure" in out
    assert "| no plugins | 0 | 0.000 | 0 |" in out  # the loop itself converts no tensor to a number
    assert re.search(r"\| defaults \(log U200, track U40\) \| \d+ \| [\d.]+ \| 2 \|", out)
    for row in ("| hand-written loop | ", "| noether, no plugins | ", "| 1,055,744 | "):
        assert out.count(row) == 1, row
    assert docs.read_text(encoding="utf-8").count("\nold\n") == 1  # a CPU run is no GPU figure


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the GPU section runs")
def test_gpu_only_without_a_gpu_says_so_and_fails(tmp_path: Path) -> None:
    docs = tmp_path / "performance.md"
    docs.write_text("<!-- benchmarks:begin gpu -->\nold\n<!-- benchmarks:end gpu -->\n", encoding="utf-8")
    command = [sys.executable, "-m", "benchmarks", "--gpu-only", "--docs", str(docs)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    assert "--gpu-only: no CUDA device here" in proc.stderr
    assert docs.read_text(encoding="utf-8").count("\nold\n") == 1
