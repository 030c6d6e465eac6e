"""``noether plugins new``: the plugin distribution it writes, and what it refuses.

The fast tests generate into ``tmp_path`` and load the generated plugins the way a run does, from the
folder put on ``sys.path``. The test marked ``venv`` does what a user does next: a fresh virtual
environment, ``pip install -e`` of the generated package, its own tests, ``noether plugins list`` and
``noether config validate`` through the environment's ``noether`` script.
"""

from __future__ import annotations

import importlib.util
import json
import os
import site
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import attrs
import pytest
import yaml
from conftest import _setuptools_can_build_here
from test_architecture import face_offences
from tiny_runs import UPE, tiny_config, train

from noether_core import CallbackConfig
from noether_core.cli import main
from noether_core.io.trackers import read_metrics
from noether_core.plugins.registry import PluginRegistry

NAME = "noether-gradient-tools"
PACKAGE = "noether_gradient_tools"
COUNTER = "NoetherGradientToolsCounter"
HEARTBEAT = "noether_gradient_tools_heartbeat"

FILES = {
    "pyproject.toml",
    "README.md",
    ".gitignore",
    f"{PACKAGE}/__init__.py",
    f"{PACKAGE}/py.typed",
    f"{PACKAGE}/counter.py",
    f"{PACKAGE}/heartbeat.py",
    "tests/test_plugins.py",
}


def new(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["plugins", "new", *args])
    out, err = capsys.readouterr()
    return status, out, err


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``noether-gradient-tools`` generated into ``tmp_path``, importable for this test only."""
    assert main(["plugins", "new", NAME, "--dir", str(tmp_path)]) == 0
    root = tmp_path / NAME
    monkeypatch.syspath_prepend(str(root))
    yield root
    for module in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
        del sys.modules[module]


# ------------------------------------------------------------------------------- what it writes


def test_new_writes_the_package_and_says_what_next(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = new(NAME, "--dir", str(tmp_path), capsys=capsys)

    assert (status, err) == (0, "")
    root = tmp_path / NAME
    assert files_under(root) == FILES
    for file in FILES:
        assert file in out
    assert f"cd {root}" in out
    assert "pip install -e '.[test]'" in out
    assert "python -m pytest" in out


def test_new_writes_into_the_current_folder_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    status, out, _ = new("my_plugins", capsys=capsys)
    assert status == 0
    assert (tmp_path / "my_plugins" / "my_plugins" / "counter.py").is_file()
    assert "cd my_plugins\n" in out


def test_new_accepts_an_existing_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / NAME).mkdir()
    assert new(NAME, "--dir", str(tmp_path), capsys=capsys)[0] == 0
    assert files_under(tmp_path / NAME) == FILES


def test_the_pyproject_registers_both_kinds(generated: Path) -> None:
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((generated / "pyproject.toml").read_text())
    assert meta["build-system"]["build-backend"] == "setuptools.build_meta"
    project = meta["project"]
    assert (project["name"], project["version"]) == (NAME, "0.1.0")
    assert project["dependencies"] == ["noether"]
    assert any(req.startswith("pytest") for req in project["optional-dependencies"]["test"])
    assert project["entry-points"]["noether.callbacks"] == {
        COUNTER: f"{PACKAGE}.counter:{COUNTER}",
        HEARTBEAT: f"{PACKAGE}.heartbeat",
    }
    assert meta["tool"]["setuptools"]["packages"] == [PACKAGE]


def test_the_readme_says_how_to_install_enable_and_test(generated: Path) -> None:
    readme = (generated / "README.md").read_text()
    for expected in ("pip install -e .", f"kind: {COUNTER}", f"kind: {HEARTBEAT}", "python -m pytest"):
        assert expected in readme


def test_the_generated_plugins_pass_noethers_checks(generated: Path) -> None:
    registry = PluginRegistry([])
    counter = registry.load(f"{PACKAGE}.counter:{COUNTER}")
    assert counter.is_class
    assert counter.stateful
    assert counter.scheduled
    assert counter.hooks == ("after_update", "at_eval")
    assert not counter.needs_eval_mode
    assert issubclass(counter.config_class, CallbackConfig)
    assert "metric" in attrs.fields_dict(counter.config_class)

    heartbeat = registry.load(f"{PACKAGE}.heartbeat:")
    assert not heartbeat.is_class
    assert heartbeat.scheduled
    assert heartbeat.hooks == ("at_eval",)
    assert heartbeat.config_class is heartbeat.target.Config
    assert "label" in attrs.fields_dict(heartbeat.config_class)

    # what a third-party plugin may import: the public face and nothing below it
    assert face_offences(generated / PACKAGE) == []


def test_the_generated_plugins_count_log_and_keep_state(generated: Path, tmp_path: Path) -> None:
    """Both generated kinds in a real run (named by import path: the package is not installed here),
    through a SIGTERM and a resume: each count goes on where it stopped."""
    raw = tiny_config()
    raw["callbacks"] = [
        {"kind": f"{PACKAGE}.counter:NoetherGradientToolsCounter", "every_n_updates": 4, "metric": "steps"},
        {"kind": f"{PACKAGE}.heartbeat:", "every_n_epochs": 1},
        {"kind": "sample_plugins:SignalAt", "update": UPE + 5},
    ]
    assert train(tmp_path, raw, "r") == 130
    assert main(["train", "--resume", str(tmp_path / "r"), "--set", "callbacks[2].update=0"]) == 0
    records = read_metrics(tmp_path / "r" / "metrics.jsonl")
    steps = {r["update"]: r["steps/U4"] for r in records if "steps/U4" in r}
    beats = {r["update"]: r[f"{PACKAGE}/heartbeat/E1"] for r in records if f"{PACKAGE}/heartbeat/E1" in r}
    assert steps == {u: u for u in range(4, 2 * UPE + 1, 4)}  # every update counted, the resume too
    assert beats == {UPE: 1, 2 * UPE: 2}


@pytest.mark.parametrize("name", [NAME, "my_plugins", "My Plugins", "x"])
def test_the_generated_code_is_ruff_clean(tmp_path: Path, name: str) -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[lint]')")
    assert main(["plugins", "new", name, "--dir", str(tmp_path)]) == 0
    (root,) = tmp_path.iterdir()
    # the generated pyproject's own settings, as in the package's own checkout
    for check in (["check"], ["format", "--check"]):
        proc = subprocess.run(
            [sys.executable, "-m", "ruff", *check, "--no-cache", "."],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("name", "distribution", "package", "counter"),
    [
        (NAME, NAME, PACKAGE, COUNTER),
        ("my_plugins", "my_plugins", "my_plugins", "MyPluginsCounter"),
        ("My.Fancy Plugins", "My.Fancy-Plugins", "my_fancy_plugins", "MyFancyPluginsCounter"),
        ("gradient--tools2", "gradient--tools2", "gradient_tools2", "GradientTools2Counter"),
    ],
)
def test_names_derive_from_the_distribution_name(
    tmp_path: Path, name: str, distribution: str, package: str, counter: str
) -> None:
    assert main(["plugins", "new", name, "--dir", str(tmp_path)]) == 0
    root = tmp_path / distribution
    assert (root / package / "counter.py").is_file()
    text = (root / "pyproject.toml").read_text()
    assert f'{counter} = "{package}.counter:{counter}"' in text
    assert f'{package}_heartbeat = "{package}.heartbeat"' in text


# ------------------------------------------------------------------------------- what it refuses


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("", "cannot name a plugin distribution ''"),
        ("-tools", "starting and ending with a letter or digit"),
        ("tools/extra", "use ASCII letters, digits"),
        ("café", "use ASCII letters, digits"),
        ("3d-tools", "package name '3d_tools' does not start with a letter"),
        ("class", "is a Python keyword"),
        ("json", "would hide the standard library's module"),
        ("noether", "is taken by noether"),
        ("noether-core", "is taken by noether"),
        ("tests", "is taken by noether or by the package's tests folder"),
    ],
)
def test_a_name_that_makes_no_package_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, expected: str
) -> None:
    status, out, err = new("--dir", str(tmp_path), "--", name, capsys=capsys)
    assert status == 2
    assert out == ""
    assert err.startswith("noether: error: ")
    assert err.count("\n") == 1, err
    assert expected in err
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_is_not_empty_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / NAME
    root.mkdir()
    (root / "notes.txt").write_text("mine")

    status, out, err = new(NAME, "--dir", str(tmp_path), capsys=capsys)

    assert (status, out) == (2, "")
    assert err == f"noether: error: cannot create the plugin package: {root} exists and is not empty; " + (
        "choose another NAME or --dir\n"
    )
    assert files_under(root) == {"notes.txt"}


def test_plugins_new_imports_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from noether_core.cli import main; "
        f"main(['plugins', 'new', 'x', '--dir', {str(tmp_path)!r}]); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "False"


# ------------------------------------------------------------------------------- as a user installs it


def _make_venv(venv: Path) -> Path:
    """A fresh venv that sees the packages of the environment running the tests (torch, noether,
    pip, setuptools, pytest): nothing is downloaded. Returns its python."""
    # --system-site-packages reaches the base interpreter's packages only; when the tests run in a
    # venv (the dev .venv), that venv's site-packages are chained in with a .pth file, which runs
    # site.addsitedir so that its own .pth files (noether's editable install) take effect too
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv])
    python = venv / "bin" / "python"
    if sys.prefix != sys.base_prefix:
        purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
        own = [d for d in site.getsitepackages() if Path(d).is_relative_to(sys.prefix)]
        lines = [f"import site; site.addsitedir({d!r})" for d in own]
        (Path(purelib) / "_outer_environment.pth").write_text("\n".join(lines) + "\n")
    # the environment's own `noether` script: the one pip wrote for the test's environment, run by
    # the new venv's python (--system-site-packages makes noether importable, but writes no script)
    outer = Path(sys.executable).parent / "noether"
    if not outer.is_file():
        pytest.fail(f"{outer} is missing; install the project: pip install -c constraints.txt -e '.[test]'")
    _, _, body = outer.read_text().partition("\n")
    script = venv / "bin" / "noether"
    script.write_text(f"#!{python}\n{body}")
    script.chmod(0o755)
    return python


def _environment(venv: Path) -> dict[str, str]:
    # nothing of the outer environment's paths or of the outer pytest run leaks into the venv's
    leaks = ("PYTHONPATH", "PYTHONHOME", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")
    env = {k: v for k, v in os.environ.items() if k not in leaks and not k.startswith("PYTEST_XDIST")}
    env.update(
        VIRTUAL_ENV=str(venv),
        PATH=os.pathsep.join([str(venv / "bin"), env.get("PATH", "")]),
        OMP_NUM_THREADS="1",
        PIP_NO_INPUT="1",
        NO_COLOR="1",
    )
    return env


def run(
    args: Sequence[str | os.PathLike[str]],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run ``args`` and return its stdout; fail the test, with all of its output, if it fails."""
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"$ {' '.join(map(str, args))}\nexit status {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc.stdout


@pytest.mark.venv
def test_a_generated_package_installs_tests_and_registers_in_a_fresh_venv(tmp_path: Path) -> None:
    if os.name == "nt":
        pytest.skip("the venv is laid out and its console script written the POSIX way")
    if not _setuptools_can_build_here():
        pytest.skip("pip cannot build without downloading setuptools here (--no-build-isolation)")
    assert main(["plugins", "new", NAME, "--dir", str(tmp_path)]) == 0
    package = tmp_path / NAME
    venv = tmp_path / "venv"
    python = _make_venv(venv)
    env = _environment(venv)

    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run([*pip, "--no-deps", "--no-build-isolation", "--no-index", "-e", package], env=env)

    # the package's own tests: a short training run with both kinds enabled by name
    out = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=package, env=env)
    assert "2 passed" in out

    noether = venv / "bin" / "noether"
    rows = json.loads(run([noether, "plugins", "list", "--json"], cwd=tmp_path, env=env))
    mine = {row["kind"]: row for row in rows if row["distribution"] == NAME}
    assert set(mine) == {COUNTER, HEARTBEAT}
    for row in mine.values():
        assert (row["version"], row["status"]) == ("0.1.0", "available"), row

    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"kind": "mlp"},
                "datasets": {"train": {"kind": "blobs", "kwargs": {"size": 128}}},
                "trainer": {"max_updates": 8, "batch_size": 16, "add_default_callbacks": False},
                "callbacks": [
                    {"kind": COUNTER, "every_n_updates": 4, "metric": "updates"},
                    {"kind": HEARTBEAT, "every_n_epochs": 1, "label": "beat"},
                ],
            }
        )
    )
    out = run([noether, "config", "validate", config], cwd=tmp_path, env=env)
    assert "valid (2 callback entries" in out
