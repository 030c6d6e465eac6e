"""``noether runs list`` and ``noether plot``, on two tiny runs trained once for the whole module:
``run_a`` (4 updates) and ``run_b`` (6 updates, a higher learning rate), each with the default entries
(``loss/online/...``) and an offline loss on ``val`` every 2 updates (``loss/val/total``)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import tiny_config, train

from noether_core.cli import main
from noether_core.io.metrics_file import iter_metrics
from noether_core.io.plots import INSTALL_COMMAND
from noether_core.io.trackers import read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: matplotlib's first two line colours: one line per run
RUN_COLOURS = {"run_a": (0x1F, 0x77, 0xB4), "run_b": (0xFF, 0x7F, 0x0E)}

Cli = Callable[..., tuple[int, str, str]]
needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None,
    reason=f"draws with matplotlib, which is missing: {INSTALL_COMMAND}",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding ``run_a`` and ``run_b``."""
    folder = tmp_path_factory.mktemp("runs")
    for run_id, updates, lr in (("run_a", 4, 0.01), ("run_b", 6, 0.05)):
        raw = tiny_config(max_updates=updates, max_epochs=None, add_default_callbacks=True)
        raw["optimizer"]["lr"] = lr
        raw["callbacks"] = [{"kind": "OfflineLossCallback", "dataset_key": "val", "every_n_updates": 2}]
        assert train(folder, raw, run_id) == 0
    return folder


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """``noether ARGS`` in this process: exit status, stdout, stderr."""

    def run(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main([str(a) for a in args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which a PNG must start with."""
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# ------------------------------------------------------------------------------------------- plot


@needs_matplotlib
def test_plot_writes_a_png_of_sane_size_for_two_runs(runs: Path, cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    status, stdout, stderr = cli("plot", runs / "run_a", runs / "run_b", "--keys", "loss/*", "-o", out)
    assert (status, stdout, stderr) == (0, f"wrote {out}\n", "")
    data = out.read_bytes()
    assert 10_000 < len(data) < 2_000_000
    width, height = png_size(data)
    assert 600 <= width <= 4000
    assert 300 <= height <= 4000
    assert width > height  # two subplots, loss/online/total/U1 and loss/val/total, side by side

    import matplotlib.image

    pixels = np.asarray(matplotlib.image.imread(out))
    assert pixels.shape[:2] == (height, width)
    rgb = np.rint(pixels[..., :3] * 255).astype(int)
    for run_id, colour in RUN_COLOURS.items():
        assert (rgb == colour).all(axis=-1).sum() > 100, f"no line of {run_id}"


@needs_matplotlib
def test_plot_draws_loss_keys_by_default_and_makes_a_grid(runs: Path, cli: Cli, tmp_path: Path) -> None:
    status, _, stderr = cli("plot", runs / "run_a", "-o", tmp_path / "default.png")
    assert status == 0, stderr
    one_row = png_size((tmp_path / "default.png").read_bytes())
    # 8 train_time/... keys (forward, backward, data_wait, update; mean and max): 3 columns, 3 rows
    status, _, stderr = cli("plot", runs / "run_a", "--keys", "train_time/*", "-o", tmp_path / "grid.png")
    assert status == 0, stderr
    width, height = png_size((tmp_path / "grid.png").read_bytes())
    assert width > one_row[0]
    assert height == 3 * one_row[1]


def test_plot_of_a_key_no_run_has_lists_the_keys(runs: Path, cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    status, stdout, stderr = cli(
        "plot", runs / "run_a", runs / "run_b", "--keys", "loss/*", "--keys", "acc*", "-o", out
    )
    assert status == 2
    assert stdout == ""
    assert stderr.startswith(
        f"noether: error: no metric matches 'acc*' in {runs / 'run_a'}, {runs / 'run_b'}; the keys there: "
        "loss/online/total/U1, loss/val/total, optim/lr/model, "
    )
    assert len(stderr.splitlines()) == 1
    assert not out.exists()


def test_plot_of_a_missing_run_is_a_usage_error(runs: Path, cli: Cli, tmp_path: Path) -> None:
    status, _, stderr = cli("plot", runs / "run_a", runs / "nope", "-o", tmp_path / "out.png")
    assert status == 2
    assert (
        stderr
        == f"noether: error: run directory {str(runs / 'nope')!r} does not exist or is not a directory\n"
    )
    status, _, stderr = cli("plot", tmp_path, "-o", tmp_path / "out.png")
    assert status == 2
    assert (
        stderr
        == f"noether: error: {str(tmp_path)!r} is not a noether run directory (it has no config.yaml)\n"
    )


def test_plot_without_matplotlib_says_how_to_install_it(
    runs: Path, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    status, _, stderr = cli("plot", runs / "run_a", "-o", tmp_path / "out.png")
    assert status == 2
    assert stderr == (
        "noether: error: noether plot needs matplotlib, which is not installed: "
        "pip install -c constraints.txt -e '.[plot]'\n"
    )
    assert INSTALL_COMMAND in stderr
    assert not (tmp_path / "out.png").exists()


@needs_matplotlib
def test_plot_refuses_an_output_it_cannot_write(runs: Path, cli: Cli, tmp_path: Path) -> None:
    status, _, stderr = cli("plot", runs / "run_a", "-o", tmp_path / "out.nope")
    assert status == 2
    assert "name it with one of the suffixes" in stderr
    assert ", png, " in stderr
    status, _, stderr = cli("plot", runs / "run_a", "-o", tmp_path / "missing" / "out.png")
    assert status == 2
    assert "does not exist" in stderr


# ------------------------------------------------------------------------------------------- runs list


def table(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()]


def test_runs_list_shows_both_runs(runs: Path, cli: Cli) -> None:
    # by modification time, oldest first; set here, so the order does not depend on the clock
    for age, run_id in ((200, "run_b"), (100, "run_a")):
        stamp = (runs / run_id).stat().st_mtime - age
        os.utime(runs / run_id, (stamp, stamp))
    status, out, err = cli("runs", "list", runs)
    assert (status, err) == (0, "")
    header, *rows = table(out)
    assert header == ["run", "status", "epoch", "update", "sample", "loss/online/total/U1", "loss/val/total"]
    assert [row[:5] for row in rows] == [
        ["run_b", "completed", "0", "6", "96"],
        ["run_a", "completed", "0", "4", "64"],
    ]
    last = read_metrics(runs / "run_a" / "metrics.jsonl")[-1]
    assert float(rows[1][6]) == pytest.approx(last["loss/val/total"], rel=1e-5)
    # the columns line up: every value ends where its header does
    lines = out.splitlines()
    end = lines[0].index("update") + len("update")
    assert all(line[end - 1] != " " and line[end : end + 1] in ("", " ") for line in lines)


def test_runs_list_with_keys_and_json(runs: Path, cli: Cli) -> None:
    status, out, _ = cli("runs", "list", runs, "--keys", "optim/*", "--keys", "loss/val/*", "--json")
    assert status == 0
    rows = {row["run_id"]: row for row in json.loads(out)}
    assert set(rows) == {"run_a", "run_b"}
    assert rows["run_b"]["status"] == "completed"
    assert (rows["run_b"]["epoch"], rows["run_b"]["update"], rows["run_b"]["sample"]) == (0, 6, 96)
    assert rows["run_b"]["path"] == str(runs / "run_b")
    assert list(rows["run_b"]["metrics"]) == ["loss/val/total", "optim/lr/model"]


def test_runs_list_of_a_folder_without_runs(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "runs" / "not_a_run").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert cli("runs", "list") == (0, "no runs in runs (a run is a directory with a config.yaml)\n", "")
    status, _, err = cli("runs", "list", "elsewhere")
    assert status == 2
    assert err == "noether: error: directory 'elsewhere' does not exist or is not a directory\n"


def test_runs_list_says_running_until_the_summary_is_newer(runs: Path, cli: Cli, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(runs / "run_a", run)
    summary = (run / "summary.yaml").stat().st_mtime
    os.utime(run / "metrics.jsonl", (summary + 5, summary + 5))  # a resumed run is logging again
    assert table(cli("runs", "list", tmp_path)[1])[1][:2] == ["copy", "running"]
    (run / "summary.yaml").unlink()  # not written yet, or the process was killed outright
    assert table(cli("runs", "list", tmp_path)[1])[1][:2] == ["copy", "running"]
    (run / "metrics.jsonl").unlink()  # before the first record
    assert table(cli("runs", "list", tmp_path)[1]) == [
        ["run", "status", "epoch", "update", "sample"],
        ["copy", "running", "-", "-", "-"],
    ]


# ------------------------------------------------------------------------------------------- reading


def test_iter_metrics_reads_as_read_metrics_does(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"update": 1, "loss": "NaN"}\n\n'
        '{"update": 2, "loss": "Infinity", "x": "-Infinity"}\n'
        '{"update": 3, "lo'  # a crash mid-write
    )
    assert json.dumps(list(iter_metrics(path))) == json.dumps(read_metrics(path))
    assert len(read_metrics(path)) == 2
    path.write_text('{"update": 1}\n{"upd\n{"update": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON object") as ours:
        list(iter_metrics(path))
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON object") as theirs:
        read_metrics(path)
    assert str(ours.value) == str(theirs.value)


@needs_matplotlib
def test_listing_and_plotting_import_no_torch(runs: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from noether_core.cli import main\n"
        f"assert main(['runs', 'list', {str(runs)!r}]) == 0\n"
        f"assert main(['plot', {str(runs / 'run_a')!r}, '-o', {str(tmp_path / 'p.png')!r}]) == 0\n"
        "print('torch' in sys.modules, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip() == "False"
    assert (tmp_path / "p.png").exists()
