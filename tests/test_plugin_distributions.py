"""Third-party plugins as users ship them: real distributions (``tests/plugin_dists``) installed with pip
and found through their ``noether.callbacks`` entry points by the real ``noether`` CLI.

``noether-example-plugin`` 1.2.3 provides ``ExampleCounter`` (a class) and ``example_heartbeat`` (a
module of hook functions); ``noether-broken-plugin`` 0.0.1 provides ``BrokenCallback``, which fails to
import; ``noether-conflicting-plugin`` 0.1.0 claims ``ExampleCounter`` too. The conflicting one is on
``PYTHONPATH`` only in the tests about conflicts.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import attrs
import pluggy
import pytest
import yaml

from noether_core import CallbackConfig
from noether_core.plugins import hookspecs
from noether_core.plugins.markers import PROJECT_NAME

EXAMPLE = "noether-example-plugin"
BROKEN = "noether-broken-plugin"
CONFLICTING = "noether-conflicting-plugin"
BASE = (EXAMPLE, BROKEN)
WITH_CONFLICT = (EXAMPLE, BROKEN, CONFLICTING)

PLUGIN_PACKAGES = ("noether_example_plugin", "noether_broken_plugin", "noether_conflicting_plugin")
ROW_KEYS = {"kind", "value", "distribution", "version", "status", "error"}

Cli = Callable[..., CompletedProcess[str]]


def config_file(tmp_path: Path, callbacks: list[dict[str, Any]]) -> Path:
    """A minimal valid run config with the given ``callbacks`` entries."""
    path = tmp_path / "config.yaml"
    doc = {
        "trainer": {"max_updates": 10, "batch_size": 4},
        "model": {"kind": "mlp"},
        "datasets": {"train": {"kind": "blobs", "kwargs": {"size": 64}}},
        "callbacks": callbacks,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def output(proc: CompletedProcess[str]) -> str:
    return f"{proc.stdout}\n{proc.stderr}"


def explain(proc: CompletedProcess[str]) -> str:
    return f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def rows_by_kind(proc: CompletedProcess[str]) -> dict[str, list[dict[str, Any]]]:
    assert proc.returncode == 0, explain(proc)
    rows = json.loads(proc.stdout)
    assert isinstance(rows, list), proc.stdout
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        assert set(row) >= ROW_KEYS, row
        by_kind.setdefault(row["kind"], []).append(row)
    return by_kind


@pytest.fixture
def plugin_imports(plugin_dists: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The installed test distributions importable in this process, for this test only."""
    for name in WITH_CONFLICT:
        monkeypatch.syspath_prepend(str(plugin_dists.target(name)))
    yield
    for module in [m for m in sys.modules if m.split(".")[0] in PLUGIN_PACKAGES]:
        del sys.modules[module]


class FakeWriter:
    def __init__(self) -> None:
        self.scalars: dict[str, float] = {}

    def add_scalar(self, key: str, value: float) -> None:
        self.scalars[key] = value


@attrs.define
class FakeTrainer:
    writer: FakeWriter = attrs.Factory(FakeWriter)


@attrs.define
class FakeCounter:
    update: int = 0


# The distributions themselves: metadata and plugin code, independent of the CLI.


@pytest.mark.parametrize(
    ("name", "version", "entry_points"),
    [
        (
            EXAMPLE,
            "1.2.3",
            {
                "ExampleCounter": "noether_example_plugin.counter:ExampleCounter",
                "example_heartbeat": "noether_example_plugin.heartbeat",
            },
        ),
        (BROKEN, "0.0.1", {"BrokenCallback": "noether_broken_plugin.broken:BrokenCallback"}),
        (CONFLICTING, "0.1.0", {"ExampleCounter": "noether_conflicting_plugin.counter:ConflictingCounter"}),
    ],
)
def test_installed_distribution_declares_its_kinds(
    plugin_dists: Any, name: str, version: str, entry_points: dict[str, str]
) -> None:
    [dist] = metadata.distributions(path=[str(plugin_dists.target(name))])
    assert dist.metadata["Name"] == name
    assert dist.version == version
    assert dist.requires is None or dist.requires == []
    declared = {ep.name: ep.value for ep in dist.entry_points if ep.group == "noether.callbacks"}
    assert declared == entry_points


@pytest.mark.usefixtures("plugin_imports")
def test_example_plugins_implement_the_hook_specs() -> None:
    from noether_conflicting_plugin.counter import ConflictingCounter
    from noether_example_plugin import heartbeat
    from noether_example_plugin.counter import ExampleCounter

    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    counter = ExampleCounter(ExampleCounter.Config(kind="ExampleCounter", every_n_updates=10))
    conflicting = ConflictingCounter(ConflictingCounter.Config(kind="ExampleCounter"))
    # pluggy refuses an implementation whose arguments the spec does not have
    for plugin in (counter, heartbeat, conflicting):
        pm.register(plugin)
    pm.check_pending()
    assert {impl.plugin for impl in pm.hook.after_update.get_hookimpls()} == {counter, conflicting}
    assert {impl.plugin for impl in pm.hook.at_eval.get_hookimpls()} == {counter, heartbeat}


@pytest.mark.usefixtures("plugin_imports")
def test_example_counter_counts_logs_and_round_trips_its_state() -> None:
    from noether_example_plugin.counter import ExampleCounter

    config_class = ExampleCounter.Config
    assert issubclass(config_class, CallbackConfig)
    config = config_class(kind="ExampleCounter", every_n_updates=10, label="steps")
    assert config_class(kind="ExampleCounter", every_n_updates=10).label == "count"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.label = "other"
    with pytest.raises(TypeError):
        config_class("ExampleCounter")  # kw_only

    plugin = ExampleCounter(config)
    trainer, counter = FakeTrainer(), FakeCounter()
    for update in range(1, 4):
        counter.update = update
        plugin.after_update(counter=counter)
    plugin.at_eval(trainer=trainer, counter=counter)
    assert trainer.writer.scalars == {"steps/U10": 3}

    resumed = ExampleCounter(config)
    resumed.load_state_dict(plugin.state_dict())
    resumed.after_update(counter=counter)
    assert resumed.count == 4


@pytest.mark.usefixtures("plugin_imports")
def test_example_heartbeat_logs_the_update_under_its_interval() -> None:
    from noether_example_plugin import heartbeat

    trainer = FakeTrainer()
    heartbeat.at_eval(
        trainer=trainer,
        counter=FakeCounter(update=6),
        config=CallbackConfig(kind="example_heartbeat", every_n_samples=12),
    )
    assert trainer.writer.scalars == {"heartbeat/S12": 6}


@pytest.mark.usefixtures("plugin_imports")
def test_broken_plugin_fails_at_import() -> None:
    with pytest.raises(ImportError, match="noether_dependency_that_is_not_installed"):
        importlib.import_module("noether_broken_plugin.broken")


# The CLI: `noether plugins list|show`, `noether config validate` against installed distributions.


def test_plugins_list_reads_metadata_without_importing(plugin_dists: Any, noether_cli: Cli) -> None:
    proc = noether_cli(["plugins", "list", "--json"], pythonpath=plugin_dists.pythonpath(BASE))
    by_kind = rows_by_kind(proc)

    [counter] = by_kind["ExampleCounter"]
    assert counter["value"] == "noether_example_plugin.counter:ExampleCounter"
    assert (counter["distribution"], counter["version"]) == (EXAMPLE, "1.2.3")
    assert (counter["status"], counter["error"]) == ("available", None)
    [heartbeat] = by_kind["example_heartbeat"]
    assert heartbeat["value"] == "noether_example_plugin.heartbeat"
    assert (heartbeat["distribution"], heartbeat["version"]) == (EXAMPLE, "1.2.3")
    assert (heartbeat["status"], heartbeat["error"]) == ("available", None)
    # listed from metadata alone: the broken module is never imported, so it is not an error yet
    [broken] = by_kind["BrokenCallback"]
    assert (broken["distribution"], broken["version"]) == (BROKEN, "0.0.1")
    assert broken["value"] == "noether_broken_plugin.broken:BrokenCallback"
    assert broken["status"] == "available"
    assert broken["error"] is None


def test_plugins_list_check_imports_each_plugin(plugin_dists: Any, noether_cli: Cli) -> None:
    proc = noether_cli(["plugins", "list", "--json", "--check"], pythonpath=plugin_dists.pythonpath(BASE))
    by_kind = rows_by_kind(proc)

    for kind in ("ExampleCounter", "example_heartbeat"):
        [row] = by_kind[kind]
        assert (row["status"], row["error"]) == ("ok", None), row
    [broken] = by_kind["BrokenCallback"]
    assert broken["status"] == "error"
    assert isinstance(broken["error"], str)
    assert "noether_dependency_that_is_not_installed" in broken["error"]
    assert (broken["distribution"], broken["version"]) == (BROKEN, "0.0.1")


def test_plugins_list_marks_a_kind_claimed_twice(plugin_dists: Any, noether_cli: Cli) -> None:
    proc = noether_cli(["plugins", "list", "--json"], pythonpath=plugin_dists.pythonpath(WITH_CONFLICT))
    by_kind = rows_by_kind(proc)

    claims = by_kind["ExampleCounter"]
    assert {row["status"] for row in claims} == {"conflict"}, claims
    assert {(row["distribution"], row["version"]) for row in claims} == {
        (EXAMPLE, "1.2.3"),
        (CONFLICTING, "0.1.0"),
    }
    assert [row["status"] for row in by_kind["example_heartbeat"]] == ["available"]


def test_plugins_show_a_class_plugin(plugin_dists: Any, noether_cli: Cli) -> None:
    proc = noether_cli(["plugins", "show", "ExampleCounter"], pythonpath=plugin_dists.pythonpath(BASE))
    assert proc.returncode == 0, explain(proc)
    for expected in ("ExampleCounter", EXAMPLE, "1.2.3", "after_update", "at_eval"):
        assert expected in proc.stdout, explain(proc)
    # the plugin's own config field, with its default
    assert re.search(r"^.*\blabel\b.*\bcount\b", proc.stdout, re.MULTILINE), explain(proc)


def test_plugins_show_a_module_plugin(plugin_dists: Any, noether_cli: Cli) -> None:
    proc = noether_cli(["plugins", "show", "example_heartbeat"], pythonpath=plugin_dists.pythonpath(BASE))
    assert proc.returncode == 0, explain(proc)
    for expected in ("example_heartbeat", EXAMPLE, "1.2.3", "at_eval"):
        assert expected in proc.stdout, explain(proc)
    assert "after_update" not in proc.stdout, explain(proc)


def test_plugins_show_a_broken_plugin_exits_3_without_traceback(plugin_dists: Any, noether_cli: Cli) -> None:
    proc = noether_cli(["plugins", "show", "BrokenCallback"], pythonpath=plugin_dists.pythonpath(BASE))
    assert proc.returncode == 3, explain(proc)
    for expected in ("BrokenCallback", BROKEN, "0.0.1"):
        assert expected in proc.stderr, explain(proc)
    assert "Traceback" not in output(proc), explain(proc)


@pytest.mark.parametrize(
    ("dists", "callbacks"),
    [
        pytest.param(BASE, [{"kind": "example_heartbeat", "every_n_updates": 2}], id="module-plugin"),
        pytest.param(
            BASE,
            [
                {"kind": "ExampleCounter", "every_n_updates": 5, "label": "steps"},
                {"kind": "example_heartbeat", "name": "beat", "every_n_epochs": 1},
            ],
            id="class-plugin-with-fields",
        ),
        # a broken and a conflicting distribution break only the configs that name their kinds
        pytest.param(
            WITH_CONFLICT,
            [{"kind": "example_heartbeat", "every_n_updates": 2}],
            id="unaffected-by-broken-and-conflicting",
        ),
    ],
)
def test_config_validate_accepts(
    plugin_dists: Any, noether_cli: Cli, tmp_path: Path, dists: tuple[str, ...], callbacks: list[Any]
) -> None:
    config = config_file(tmp_path, callbacks)
    proc = noether_cli(["config", "validate", config], pythonpath=plugin_dists.pythonpath(dists))
    assert proc.returncode == 0, explain(proc)


def test_config_validate_rejects_a_conflicting_kind(
    plugin_dists: Any, noether_cli: Cli, tmp_path: Path
) -> None:
    config = config_file(tmp_path, [{"kind": "ExampleCounter", "every_n_updates": 5}])
    proc = noether_cli(["config", "validate", config], pythonpath=plugin_dists.pythonpath(WITH_CONFLICT))
    assert proc.returncode == 3, explain(proc)
    for expected in ("ExampleCounter", EXAMPLE, CONFLICTING):
        assert expected in output(proc), explain(proc)
    assert "Traceback" not in output(proc), explain(proc)


def test_config_validate_rejects_a_broken_plugin(plugin_dists: Any, noether_cli: Cli, tmp_path: Path) -> None:
    config = config_file(tmp_path, [{"kind": "BrokenCallback", "every_n_updates": 5}])
    proc = noether_cli(["config", "validate", config], pythonpath=plugin_dists.pythonpath(BASE))
    assert proc.returncode == 3, explain(proc)
    for expected in ("BrokenCallback", BROKEN, "0.0.1"):
        assert expected in output(proc), explain(proc)
    assert "Traceback" not in output(proc), explain(proc)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param(
            {"kind": "ExampleCounter", "every_n_updates": 5, "lable": "steps"}, "lable", id="unknown-field"
        ),
        # ExampleCounter implements at_eval and its Config gives no default interval
        pytest.param({"kind": "ExampleCounter", "label": "steps"}, "every_n_", id="missing-interval"),
    ],
)
def test_config_validate_checks_plugin_fields(
    plugin_dists: Any, noether_cli: Cli, tmp_path: Path, entry: dict[str, Any], expected: str
) -> None:
    config = config_file(tmp_path, [entry])
    proc = noether_cli(["config", "validate", config], pythonpath=plugin_dists.pythonpath(BASE))
    assert proc.returncode == 2, explain(proc)
    assert "callbacks[0]" in output(proc), explain(proc)
    assert expected in output(proc), explain(proc)
    assert "Traceback" not in output(proc), explain(proc)
