"""The ``noether`` verbs that do not train: ``config validate``, ``config example``, ``schedule``,
``hooks``, ``plugins show``, and the usage errors of ``train``.

The bad-config corpus (``tests/bad_configs/*.yaml``, one user mistake each) is checked against the
golden file ``tests/golden/bad_configs.txt``: for every file, the exact stderr of
``noether config validate bad_configs/<file>`` run from ``tests/``, and its exit status (always 2).
After an intended change of the messages, rewrite the golden file and review its diff::

    NOETHER_UPDATE_GOLDEN=1 pytest tests/test_cli.py -k golden

Most runs call :func:`noether_core.cli.main` in this process (fast); a few go through the real
console script in a subprocess. In-process runs see a fixed plugin registry (``Recorder``, ``StopAt``,
``heartbeat`` from ``tests/``), so the messages do not depend on which distributions are installed;
the corpus otherwise names plugins by import path (``sample_plugins:Recorder``).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import pytest
import yaml

import noether_core.cli
from noether_core.cli import main
from noether_core.example import example_yaml
from noether_core.plugins.registry import PluginRegistry, PluginSource

TESTS = Path(__file__).resolve().parent
BAD_CONFIGS = TESTS / "bad_configs"
GOLDEN = TESTS / "golden" / "bad_configs.txt"
CORPUS = sorted(p.name for p in BAD_CONFIGS.glob("*.yaml"))
UPDATE_GOLDEN = os.environ.get("NOETHER_UPDATE_GOLDEN", "") not in ("", "0")

Cli = Callable[..., subprocess.CompletedProcess[str]]


@attrs.frozen
class Result:
    status: int
    out: str
    err: str


def fixed_registry() -> PluginRegistry:
    return PluginRegistry(
        [
            PluginSource("Recorder", "sample_plugins:Recorder", "noether-test-plugins", "1.0.0"),
            PluginSource("StopAt", "sample_plugins:StopAt", "noether-test-plugins", "1.0.0"),
            PluginSource("heartbeat", "sample_function_plugin", "noether-test-plugins", "1.0.0"),
        ]
    )


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """``noether ARGS`` in this process, from ``tests/``, with :func:`fixed_registry` as the environment."""

    class Registry(PluginRegistry):
        @classmethod
        def from_environment(cls) -> PluginRegistry:
            return fixed_registry()

    monkeypatch.setattr(noether_core.cli, "PluginRegistry", Registry)
    monkeypatch.chdir(TESTS)

    def run(*args: str | os.PathLike[str]) -> Result:
        capsys.readouterr()
        status = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(status, captured.out, captured.err)

    return run


def explain(result: Result | subprocess.CompletedProcess[str]) -> str:
    status = result.status if isinstance(result, Result) else result.returncode
    out = result.out if isinstance(result, Result) else result.stdout
    err = result.err if isinstance(result, Result) else result.stderr
    return f"exit status {status}\n--- stdout\n{out}\n--- stderr\n{err}"


# ------------------------------------------------------------------------------- bad-config corpus


def validate_bad(cli: Callable[..., Result], name: str) -> Result:
    return cli("config", "validate", f"bad_configs/{name}")


def normalised(err: str) -> str:
    """Stable across platforms: forward slashes in the file path."""
    return err.replace(f"bad_configs{os.sep}", "bad_configs/")


def golden_block(name: str, status: int, err: str) -> str:
    return f"### bad_configs/{name} -> exit {status}\n{normalised(err).rstrip()}\n\n"


def parse_golden(text: str) -> dict[str, str]:
    """``bad_configs/<name>`` -> its block, as :func:`golden_block` wrote it."""
    blocks = {}
    for block in re.split(r"\n(?=### )", text.strip()):
        head = block.splitlines()[0]
        name = head.removeprefix("### bad_configs/").split(" -> ")[0]
        blocks[name] = block.rstrip() + "\n\n"
    return blocks


PROBLEM_LINE = re.compile(
    r"^  ([a-z_]+(\.[a-z_]+|\[\d+\])*: "  # a path: trainer.max_epochs, callbacks[0].kind, datasets
    r"|YAML syntax error at line \d+, column \d+: "
    r"|the file )"
)


def test_corpus_is_there() -> None:
    assert len(CORPUS) >= 20, CORPUS


@pytest.mark.parametrize("name", CORPUS)
def test_each_bad_config_gives_one_clear_message_and_exit_status_2(
    cli: Callable[..., Result], name: str
) -> None:
    result = validate_bad(cli, name)
    assert result.status == 2, explain(result)
    assert result.out == "", explain(result)
    assert "Traceback" not in result.err
    lines = normalised(result.err).splitlines()
    assert lines[0] == f"noether: error: invalid config in bad_configs/{name} (1 problem):", explain(result)
    assert len(lines) == 2, explain(result)
    # the problem names its path (or, for the file as a whole, says what is wrong with it)
    assert re.match(PROBLEM_LINE, lines[1]), explain(result)


def test_bad_configs_match_the_golden_file(cli: Callable[..., Result]) -> None:
    text = "".join(
        golden_block(name, result.status, result.err)
        for name in CORPUS
        for result in [validate_bad(cli, name)]
    )
    if UPDATE_GOLDEN:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert GOLDEN.exists(), f"{GOLDEN} is missing; create it with NOETHER_UPDATE_GOLDEN=1"
    expected = GOLDEN.read_text(encoding="utf-8")
    assert text == expected, (
        "the messages changed; if that is intended, rewrite the golden file with "
        "NOETHER_UPDATE_GOLDEN=1 pytest tests/test_cli.py -k golden and review its diff"
    )


@pytest.mark.parametrize(
    "name",
    # independent of the installed plugins: callbacks are named by import path, or there are none
    ["float_for_int.yaml", "yaml_syntax_error.yaml", "interval_zero.yaml"],
)
def test_real_cli_prints_the_golden_message(noether_cli: Cli, name: str) -> None:
    proc = noether_cli(
        ["config", "validate", f"bad_configs/{name}"], pythonpath=str(TESTS), cwd=TESTS, timeout=120
    )
    assert proc.returncode == 2, explain(proc)
    assert proc.stdout == ""
    assert (
        golden_block(name, proc.returncode, proc.stderr)
        == parse_golden(GOLDEN.read_text(encoding="utf-8"))[name]
    )


def test_several_mistakes_are_reported_together(cli: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(
        """\
trainer:
  max_epochs: 2.5
  batch_size: 0
  precision: fp64
model:
  kind: mlp
datasets:
  train: {kind: blobs, kwargs: {size: 64}}
callbacks:
  - {kind: "sample_plugins:Recorder", every_n_updates: 5, lable: x}
  - {kind: "sample_plugins:StopAt", every_n_updates: 5}
  - {kind: "sample_plugins:Recorder", name: r2, every_n_epochs: 0}
  - {kind: "sample_function_plugin:", name: beat}
"""
    )
    result = cli("config", "validate", path)
    assert result.status == 2, explain(result)
    assert result.err.splitlines() == [
        f"noether: error: invalid config in {path} (7 problems):",
        "  trainer.max_epochs: expected int, got 2.5 (float)",
        "  trainer.precision: expected one of 'fp32', 'bf16', 'fp16', got 'fp64' (str); did you mean 'fp16'?",
        "  trainer.batch_size: must be >= 1, got 0",
        "  callbacks[0].lable: unknown field; did you mean 'label'?",
        "  callbacks[1].every_n_updates: 'sample_plugins:StopAt' is not periodic (it does not implement "
        "at_eval), so an interval has no effect; remove it",
        "  callbacks[2].every_n_epochs: must be >= 1, got 0",
        "  callbacks[3]: 'sample_function_plugin:' runs periodically (it implements at_eval): "
        "set exactly one of every_n_epochs, every_n_updates, every_n_samples",
    ]


def test_model_and_dataset_mistakes_are_reported_together(cli: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "build.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "trainer": {"max_updates": 4, "batch_size": 4},
                "model": {
                    "kind": "composite",
                    "parts": {"enc": {"kind": "mlpp"}, "head": {"kwargs": {"x": 1}}},
                },
                "datasets": {"val": {"kind": "blobs", "kwargs": {"sise": 3}}},
            }
        )
    )
    result = cli("config", "validate", path)
    assert result.status == 2, explain(result)
    lines = result.err.splitlines()
    assert lines[0] == f"noether: error: invalid config in {path} (4 problems):"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "model.parts.enc.kind",
        "model.parts.head.kind",
        "datasets",
        "datasets.val.kwargs",
    ]


# ------------------------------------------------------------------------------- config validate / example


def test_config_example_is_valid_yaml_that_validates(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # the installed environment, not the fixed registry: the example names the built-in callbacks
    assert main(["config", "example"]) == 0
    out = capsys.readouterr().out
    assert out == example_yaml()
    assert {"trainer", "model", "optimizer", "datasets", "callbacks"} <= set(yaml.safe_load(out))
    path = tmp_path / "my_run.yaml"
    path.write_text(out)
    assert main(["config", "validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == f"{path}: valid (4 callback entries, max_epochs=10)\n"


def test_real_cli_validates_the_example_with_overrides(noether_cli: Cli, tmp_path: Path) -> None:
    example = noether_cli(["config", "example"], timeout=120)
    assert example.returncode == 0, explain(example)
    path = tmp_path / "run.yaml"
    path.write_text(example.stdout)
    proc = noether_cli(
        ["config", "validate", path, "--set", "trainer.max_epochs=3", "--set", "trainer.batch_size=32"],
        timeout=120,
    )
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.strip().endswith("valid (4 callback entries, max_epochs=3)")


def example_without_callbacks() -> str:
    """The bundled example for the fixed test registry, which does not have the built-in kinds."""
    raw = yaml.safe_load(example_yaml())
    raw["callbacks"] = []
    return yaml.safe_dump(raw)


def test_set_mistakes_are_usage_errors(cli: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(example_without_callbacks())
    for bad, message in [
        ("trainer..max_epochs=3", "noether: error: --set 'trainer..max_epochs': cannot parse the key"),
        ("callbacks[3].name=x", "noether: error: --set 'callbacks[3].name=x': callbacks.3 does not exist"),
        ("max_epochs", "noether: error: --set 'max_epochs': expected KEY=VALUE"),
    ]:
        result = cli("config", "validate", path, "--set", bad)
        assert result.status == 2, explain(result)
        assert result.err.startswith(message), explain(result)
        assert "Traceback" not in result.err


def test_set_value_mistakes_are_config_errors(cli: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(example_without_callbacks())
    result = cli(
        "config", "validate", path, "--set", "trainer.max_epochs=3.5", "--set", "trainer.max_epoch=3"
    )
    assert result.status == 2, explain(result)
    assert result.err.splitlines()[1:] == [
        "  trainer.max_epochs: expected int, got 3.5 (float)",
        "  trainer.max_epoch: unknown field; did you mean 'max_epochs'?",
    ]


def test_missing_config_file_is_a_usage_error(cli: Callable[..., Result]) -> None:
    result = cli("config", "validate", "bad_configs/no_such_file.yaml")
    assert result.status == 2
    assert result.err == "noether: error: config file 'bad_configs/no_such_file.yaml' does not exist\n"


def test_argparse_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["config", "validate"], ["frobnicate"], ["plugins"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert "usage: noether" in capsys.readouterr().err


# ------------------------------------------------------------------------------- schedule


SCHEDULE_CONFIG = """\
trainer: {max_epochs: 3, batch_size: 16, add_default_callbacks: false}
model: {kind: mlp}
datasets: {train: {kind: blobs, kwargs: {size: 64}}}     # 4 updates per epoch, 12 in all
callbacks:
  - {kind: "sample_plugins:Recorder", name: rec5, every_n_updates: 5}
  - {kind: "sample_function_plugin:", name: beat, every_n_epochs: 1}
  - {kind: "sample_plugins:Recorder", name: rec40, every_n_samples: 40}
  - {kind: "sample_plugins:StopAt", update: 100}        # not periodic: never in the timeline
"""

TIMELINE_LINE = re.compile(r"^U(?P<update>\d+)  +(?P<due>.*?)(?:  end of epoch (?P<epoch>\d+))?$")


def parse_timeline(out: str) -> dict[int, tuple[int | None, list[str]]]:
    timeline = {}
    for line in out.splitlines():
        m = TIMELINE_LINE.match(line)
        if m:
            epoch = int(m["epoch"]) if m["epoch"] else None
            timeline[int(m["update"])] = (epoch, m["due"].split(", "))
    return timeline


EXPECTED_TIMELINE = {
    3: (None, ["rec40"]),  # 48 samples: crossed 40
    4: (1, ["beat"]),
    5: (None, ["rec5", "rec40"]),  # 80 samples
    8: (2, ["beat", "rec40"]),  # 128 samples: crossed 120
    10: (None, ["rec5", "rec40"]),  # 160 samples
    12: (3, ["beat"]),
}


def test_schedule_prints_when_each_entry_fires(cli: Callable[..., Result], tmp_path: Path) -> None:
    path = tmp_path / "schedule.yaml"
    path.write_text(SCHEDULE_CONFIG)
    result = cli("schedule", path)
    assert result.status == 0, explain(result)
    lines = result.out.splitlines()
    assert lines[0] == "max_epochs=3: 12 updates, 4 per epoch, effective batch size 16"
    assert "  rec5: every_n_updates=5, fires 2 times" in lines
    assert "  beat: every_n_epochs=1, fires 3 times" in lines
    assert "  rec40: every_n_samples=40, fires 4 times" in lines
    assert parse_timeline(result.out) == EXPECTED_TIMELINE
    assert "StopAt" not in result.out


def test_real_cli_schedule(noether_cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "schedule.yaml"
    path.write_text(SCHEDULE_CONFIG)
    proc = noether_cli(["schedule", path], pythonpath=str(TESTS), timeout=120)
    assert proc.returncode == 0, explain(proc)
    assert parse_timeline(proc.stdout) == EXPECTED_TIMELINE


def test_schedule_of_a_bad_config_is_a_config_error(cli: Callable[..., Result]) -> None:
    result = cli("schedule", "bad_configs/model_kwarg_typo.yaml")
    assert result.status == 2, explain(result)
    assert result.err.splitlines() == [
        "noether: error: invalid config in bad_configs/model_kwarg_typo.yaml (1 problem):",
        "  model.kwargs: unknown argument 'hiden'; did you mean 'hidden'?",
    ]


# ------------------------------------------------------------------------------- hooks


def test_hooks_lists_the_six_events(cli: Callable[..., Result]) -> None:
    result = cli("hooks")
    assert result.status == 0, explain(result)
    heads = [line.split()[0] for line in result.out.splitlines() if line and not line.startswith(" ")]
    assert heads[:6] == [
        "before_training",
        "after_accumulation",
        "after_update",
        "after_epoch",
        "at_eval",
        "after_training",
    ]
    assert "at_eval  + interval" in result.out.splitlines()
    assert "after_training  + status" in result.out.splitlines()
    assert "Every event also passes: trainer, model, counter, config, state." in result.out


# ------------------------------------------------------------------------------- plugins show


def test_plugins_show_a_class_plugin(cli: Callable[..., Result]) -> None:
    result = cli("plugins", "show", "sample_plugins:Recorder")
    assert result.status == 0, explain(result)
    lines = result.out.splitlines()
    assert "kind:          sample_plugins:Recorder" in lines
    assert "style:         class, stateful" in lines
    all_hooks = "before_training, after_accumulation, after_update, after_epoch, at_eval, after_training"
    assert f"hooks:         {all_hooks}" in lines
    assert lines[lines.index("scheduled:     yes (set one every_n_* in its entry)") - 1].startswith("hooks:")
    fields = lines[lines.index("config fields:") + 1 :]
    for expected in [
        "  kind: str (required)",
        "  name: str | None (default None)",
        "  every_n_updates: int | None (default None)",
        "  label: str (default 'rec')",
    ]:
        assert expected in fields, result.out
    assert "Records every event it receives" in result.out


def test_plugins_show_a_registered_function_plugin(cli: Callable[..., Result]) -> None:
    result = cli("plugins", "show", "heartbeat")
    assert result.status == 0, explain(result)
    lines = result.out.splitlines()
    assert "distribution:  noether-test-plugins 1.0.0" in lines
    assert "style:         functions" in lines
    assert "hooks:         at_eval" in lines


def test_plugins_show_unknown_kind(cli: Callable[..., Result]) -> None:
    result = cli("plugins", "show", "NoSuchKind")
    assert result.status == 2, explain(result)
    assert result.out == ""
    assert result.err.startswith(
        "noether: error: unknown plugin kind 'NoSuchKind': no installed plugin provides it"
    )
    assert "did you mean" not in result.err.lower()
    assert "noether plugins list" in result.err
    assert len(result.err.splitlines()) == 1


def test_plugins_show_a_typo_suggests_the_kind(cli: Callable[..., Result]) -> None:
    result = cli("plugins", "show", "Recordr")
    assert result.status == 2, explain(result)
    assert "Did you mean 'Recorder'?" in result.err


# ------------------------------------------------------------------------------- train usage errors


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--checkpoint", "latest"],
        ["train", "bad_configs/../bad_configs/float_for_int.yaml", "--checkpoint", "E1_U4_S64"],
    ],
)
def test_checkpoint_without_resume_is_a_usage_error(
    cli: Callable[..., Result], argv: Sequence[str], tmp_path: Path
) -> None:
    result = cli(*argv, "--output-dir", tmp_path / "runs")
    assert result.status == 2, explain(result)
    assert result.err == "noether: error: --checkpoint only makes sense with --resume RUN_DIR\n"
    assert not (tmp_path / "runs").exists()
