"""YAML -> :class:`RunConfig`: strict scalars, ``--set`` overrides, plugin ``Config`` classes for
``callbacks`` entries, seed spellings of kinds, every problem reported at once, and the round trip
through :func:`unstructure_config` that writes a run's ``config.yaml``.

Registries here are built from explicit :class:`PluginSource` values pointing at ``sample_plugins``, so
nothing depends on which plugin distributions are installed.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import attrs
import pytest
import sample_plugins
import yaml

from noether_core import CallbackConfig, ConfigError, RunConfig, UsageError, hookimpl
from noether_core.config.loader import (
    apply_overrides,
    load_config,
    make_converter,
    parse_yaml,
    structure_config,
    unstructure_config,
)
from noether_core.config.schema import ScheduleConfig
from noether_core.errors import EXIT_USAGE
from noether_core.example import example_yaml
from noether_core.plugins.registry import PluginRegistry, PluginSource
from noether_core.plugins.scheduling import Interval

DEFAULTS_MODULE = "noether_test_default_interval"


class EveryEpoch:
    """A periodic plugin whose ``Config`` supplies a default interval (every epoch)."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        every_n_epochs: int | None = 1
        patience: int = attrs.field(default=3, validator=attrs.validators.ge(1))

    def __init__(self, config: Config) -> None:
        self.config = config

    @hookimpl
    def at_eval(self, counter: Any) -> None:
        pass


@pytest.fixture(autouse=True)
def default_interval_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """``EveryEpoch`` importable as ``noether_test_default_interval:EveryEpoch``."""
    module = types.ModuleType(DEFAULTS_MODULE)
    module.EveryEpoch = EveryEpoch  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, DEFAULTS_MODULE, module)


@pytest.fixture
def registry() -> PluginRegistry:
    return PluginRegistry(
        [
            PluginSource("Recorder", "sample_plugins:Recorder", "noether-test-plugins", "1.0.0"),
            PluginSource("StopAt", "sample_plugins:StopAt", "noether-test-plugins", "1.0.0"),
            PluginSource("heartbeat", "sample_function_plugin", "noether-test-plugins", "1.0.0"),
            PluginSource("EveryEpoch", f"{DEFAULTS_MODULE}:EveryEpoch", "noether-test-plugins", "1.0.0"),
        ]
    )


def base(**sections: Any) -> dict[str, Any]:
    """A small valid raw config; ``sections`` replace whole sections."""
    raw: dict[str, Any] = {
        "trainer": {"max_epochs": 2, "batch_size": 8},
        "model": {"kind": "mlp", "kwargs": {"hidden": 8}},
        "datasets": {"train": {"kind": "blobs", "kwargs": {"size": 64}}},
        "callbacks": [
            {"kind": "Recorder", "every_n_updates": 4},
            {"kind": "StopAt", "update": 5},
        ],
    }
    raw.update(sections)
    return raw


def problems(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [str(issue) for issue in exc.value.issues]


def structure_fails(raw: Any, registry: PluginRegistry) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        structure_config(raw, registry)
    assert exc.value.exit_status == EXIT_USAGE
    return problems(exc)


# ------------------------------------------------------------------------------------- strict scalars


def test_base_config_is_valid(registry: PluginRegistry) -> None:
    config = structure_config(base(), registry)
    assert config.trainer.max_epochs == 2
    assert [e.kind for e in config.callbacks] == ["Recorder", "StopAt"]
    assert isinstance(config.callbacks[0], sample_plugins.Recorder.Config)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_epochs", 3.7, "trainer.max_epochs: expected int, got 3.7 (float)"),
        ("max_epochs", 3.0, "trainer.max_epochs: expected int, got 3.0 (float)"),
        ("max_epochs", True, "trainer.max_epochs: expected int, got True (bool)"),
        ("max_epochs", "3", "trainer.max_epochs: expected int, got '3' (str); remove the quotes"),
        ("skip_nan_loss", "false", "trainer.skip_nan_loss: expected bool (true/false), got 'false' (str)"),
        ("skip_nan_loss", 0, "trainer.skip_nan_loss: expected bool (true/false), got 0 (int)"),
        ("clip_grad_norm", True, "trainer.clip_grad_norm: expected number, got True (bool)"),
        ("device", 0, "trainer.device: expected string, got 0 (int)"),
        ("precision", "FP16", "trainer.precision: expected one of 'fp32', 'bf16', 'fp16', got 'FP16' (str)"),
    ],
)
def test_scalars_are_strict(registry: PluginRegistry, field: str, value: Any, expected: str) -> None:
    raw = base()
    raw["trainer"][field] = value
    (problem,) = structure_fails(raw, registry)
    assert problem.startswith(expected)


def test_false_in_quotes_is_never_true(registry: PluginRegistry) -> None:
    raw = base()
    raw["trainer"]["add_default_callbacks"] = "false"
    (problem,) = structure_fails(raw, registry)
    assert problem == (
        "trainer.add_default_callbacks: expected true, false or a list of kinds, got 'false' (str); "
        "remove the quotes"
    )


def test_an_int_is_a_valid_float(registry: PluginRegistry) -> None:
    config = structure_config(base(optimizer={"lr": 1}), registry)
    assert config.optimizer.lr == 1.0
    assert isinstance(config.optimizer.lr, float)


def test_exponent_without_a_dot_explains_yaml(registry: PluginRegistry) -> None:
    raw = parse_yaml("optimizer: {lr: 1e-3}\n", "<text>")
    (problem,) = structure_fails(base(optimizer=raw["optimizer"]), registry)
    assert problem == (
        "optimizer.lr: expected number, got '1e-3' (str); "
        "YAML reads an exponent without a dot as a string, write 1.0e-3"
    )


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"trainer": None}, "trainer: expected a mapping of fields, got None (NoneType)"),
        ({"model": "mlp"}, "model: expected a mapping of fields, got 'mlp' (str)"),
        ({"datasets": ["train"]}, "datasets: expected a mapping, got ['train'] (list)"),
        ({"callbacks": "Recorder"}, "callbacks: expected a list, got 'Recorder' (str)"),
        ({"optimizer": {"betas": 0.9}}, "optimizer.betas: expected a list of 2 items, got 0.9 (float)"),
        ({"optimizer": {"betas": [0.9]}}, "optimizer.betas: expected a list of 2 items, got 1: [0.9] (list)"),
    ],
)
def test_sections_of_the_wrong_shape_are_named(
    registry: PluginRegistry, sections: dict[str, Any], expected: str
) -> None:
    assert structure_fails(base(**sections), registry) == [expected]


def test_betas_from_a_yaml_list_become_a_tuple(registry: PluginRegistry) -> None:
    config = structure_config(base(optimizer={"betas": [0.8, 0.9]}), registry)
    assert config.optimizer.betas == (0.8, 0.9)


# ------------------------------------------------------------------------------------- unknown fields


def test_unknown_fields_suggest_the_close_name(registry: PluginRegistry) -> None:
    raw = base(optimiser={"lr": 0.1})
    raw["trainer"]["max_epoch"] = 3
    raw["callbacks"][0]["lable"] = "x"
    assert structure_fails(raw, registry) == [
        "trainer.max_epoch: unknown field; did you mean 'max_epochs'?",
        "callbacks[0].lable: unknown field; did you mean 'label'?",
        "optimiser: unknown field; did you mean 'optimizer'?",
    ]


def test_unknown_field_without_a_close_name_lists_the_known_ones(registry: PluginRegistry) -> None:
    raw = base()
    raw["callbacks"][1]["zzz"] = 1
    (problem,) = structure_fails(raw, registry)
    assert problem.startswith("callbacks[1].zzz: unknown field; known fields: kind, name, id, ")
    assert problem.endswith(", update")


def test_entry_without_kind(registry: PluginRegistry) -> None:
    raw = base()
    raw["callbacks"].append({"every_n_updates": 2})
    assert structure_fails(raw, registry) == ["callbacks[2].kind: required field missing"]


def test_unknown_kind_suggests_the_registered_one(registry: PluginRegistry) -> None:
    raw = base()
    raw["callbacks"][0]["kind"] = "Recordr"
    (problem,) = structure_fails(raw, registry)
    assert problem.startswith("callbacks[0].kind: unknown kind 'Recordr': ")
    assert "Did you mean 'Recorder'?" in problem


# ------------------------------------------------------------------------------------- many problems


def test_every_problem_is_reported_at_once_with_its_path(registry: PluginRegistry) -> None:
    """Type mistakes, range mistakes and entry checks come from different passes; all are reported,
    in the order of the file's sections."""
    raw = base()
    raw["trainer"].update(max_epochs=2.5, batch_size=0)
    raw["callbacks"] = [
        {"kind": "Recorder", "every_n_updates": 5, "lable": "x"},
        {"kind": "StopAt", "every_n_updates": 5},
        {"kind": "Recorder", "name": "r2", "every_n_epochs": 0},
        {"kind": "heartbeat"},
        {"kind": "Recorder", "name": "r2", "every_n_epochs": 1, "every_n_updates": 3},
    ]
    assert structure_fails(raw, registry) == [
        "trainer.max_epochs: expected int, got 2.5 (float)",
        "trainer.batch_size: must be >= 1, got 0",
        "callbacks[0].lable: unknown field; did you mean 'label'?",
        "callbacks[1].every_n_updates: 'StopAt' is not periodic (it does not implement at_eval), "
        "so an interval has no effect; remove it",
        "callbacks[2].every_n_epochs: must be >= 1, got 0",
        "callbacks[3]: 'heartbeat' runs periodically (it implements at_eval): "
        "set exactly one of every_n_epochs, every_n_updates, every_n_samples",
        "callbacks[4]: set exactly one of every_n_epochs, every_n_updates, every_n_samples; "
        "got every_n_epochs, every_n_updates",
        "callbacks[4].name: the name 'r2' is already used by callbacks[2]; give each entry a unique 'name' "
        "(its state is saved under that name)",
    ]


def test_the_error_message_has_one_line_per_problem(registry: PluginRegistry) -> None:
    raw = base()
    raw["trainer"]["batch_size"] = -1
    raw["callbacks"][0]["every_n_updates"] = 0
    with pytest.raises(ConfigError) as exc:
        structure_config(raw, registry, source="run.yaml")
    assert str(exc.value).splitlines() == [
        "invalid config in run.yaml (2 problems):",
        "  trainer.batch_size: must be >= 1, got -1",
        "  callbacks[0].every_n_updates: must be >= 1, got 0",
    ]


def test_unnamed_stateful_entries_of_one_kind_collide(registry: PluginRegistry) -> None:
    raw = base()
    raw["callbacks"].append({"kind": "Recorder", "every_n_updates": 2})
    (problem,) = structure_fails(raw, registry)
    assert problem.startswith("callbacks[2]: the name 'Recorder' is already used by callbacks[0]")


def test_unnamed_stateless_entries_of_one_kind_do_not_collide(registry: PluginRegistry) -> None:
    raw = base()
    raw["callbacks"] += [{"kind": "StopAt", "update": 7}, {"kind": "heartbeat", "every_n_updates": 2}]
    raw["callbacks"].append({"kind": "heartbeat", "every_n_epochs": 1})
    assert len(structure_config(raw, registry).callbacks) == 5


# ------------------------------------------------------------------------------------- intervals


def test_plugin_default_interval_applies_when_none_is_set(registry: PluginRegistry) -> None:
    config = structure_config(base(callbacks=[{"kind": "EveryEpoch"}]), registry)
    (entry,) = config.callbacks
    assert isinstance(entry, EveryEpoch.Config)
    assert entry.interval == Interval("epoch", 1)


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("every_n_updates", Interval("update", 5)),
        ("every_n_samples", Interval("sample", 5)),
        ("every_n_epochs", Interval("epoch", 5)),
    ],
)
def test_user_interval_replaces_the_plugin_default(
    registry: PluginRegistry, field: str, expected: Interval
) -> None:
    config = structure_config(base(callbacks=[{"kind": "EveryEpoch", field: 5}]), registry)
    (entry,) = config.callbacks
    assert entry.interval == expected
    assert [f for f in ("every_n_epochs", "every_n_updates", "every_n_samples") if getattr(entry, f)] == [
        field
    ]


def test_plugin_config_validators_run(registry: PluginRegistry) -> None:
    raw = base(callbacks=[{"kind": "EveryEpoch", "patience": 0}])
    assert structure_fails(raw, registry) == ["callbacks[0].patience: must be >= 1, got 0"]


# ------------------------------------------------------------------------------------- kinds


@pytest.mark.parametrize(
    "spelling",
    ["Recorder", "noether.core.callbacks.Recorder", "noether.training.callbacks.Recorder"],
)
def test_seed_spellings_resolve_to_the_registered_kind(registry: PluginRegistry, spelling: str) -> None:
    config = structure_config(
        base(callbacks=[{"kind": spelling, "every_n_updates": 2, "label": "s"}]), registry
    )
    (entry,) = config.callbacks
    assert entry.kind == "Recorder"
    assert entry.key == "Recorder"
    assert type(entry) is sample_plugins.Recorder.Config


def test_import_path_kind_keeps_its_spelling(registry: PluginRegistry) -> None:
    config = structure_config(
        base(callbacks=[{"kind": "sample_plugins:Recorder", "every_n_updates": 2}]), registry
    )
    assert config.callbacks[0].kind == "sample_plugins:Recorder"


def test_entries_come_with_their_paths(registry: PluginRegistry) -> None:
    config = structure_config(base(), registry)
    assert [(p, e.kind) for p, e in config.entries()] == [
        ("callbacks[0]", "Recorder"),
        ("callbacks[1]", "StopAt"),
    ]


# ------------------------------------------------------------------------------------- round trip


def test_unstructure_round_trips(registry: PluginRegistry) -> None:
    raw = base(
        optimizer={
            "kind": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "lr_schedule": {"kind": "linear", "warmup_updates": 3},
        },
        callbacks=[
            {"kind": "noether.core.callbacks.Recorder", "name": "rec", "every_n_samples": 16, "label": "r"},
            {"kind": "StopAt", "update": 5},
            {"kind": "EveryEpoch", "every_n_updates": 3},
            {"kind": "sample_function_plugin:", "every_n_epochs": 1},
        ],
        tracker=[],
    )
    raw["datasets"]["val"] = {"kind": "blobs", "kwargs": {"size": 32, "seed": 1}, "num_workers": 0}
    config = structure_config(raw, registry)
    plain = unstructure_config(config, registry)
    # plain YAML: what a run writes to config.yaml and reads back on resume
    text = yaml.safe_dump(plain, sort_keys=False)
    again = structure_config(yaml.safe_load(text), registry)
    assert again == config
    assert make_converter(registry).structure(plain, RunConfig) == config
    assert plain["callbacks"][0]["kind"] == "Recorder"
    assert plain["optimizer"]["lr_schedule"] == attrs.asdict(ScheduleConfig(kind="linear", warmup_updates=3))


# ------------------------------------------------------------------------------------- --set


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(base(), sort_keys=False))
    return path


def test_set_overrides_values_parsed_as_yaml(config_file: Path, registry: PluginRegistry) -> None:
    config = load_config(
        config_file,
        registry,
        [
            "trainer.max_epochs=3",
            "callbacks[0].every_n_updates=5",
            "callbacks.0.name=x",
            "callbacks[1].update=9",
            "trainer.skip_nan_loss=true",
            "model.kwargs={hidden: 3, depth: 1}",
            "datasets.val.kind=blobs",
        ],
    )
    assert config.trainer.max_epochs == 3
    assert config.trainer.skip_nan_loss is True
    rec, stop = config.callbacks
    assert (rec.name, rec.interval) == ("x", Interval("update", 5))
    assert stop.update == 9  # type: ignore[attr-defined]
    assert config.model.kwargs == {"hidden": 3, "depth": 1}
    assert set(config.datasets) == {"train", "val"}


def test_set_can_replace_an_interval_with_one_of_another_unit(
    config_file: Path, registry: PluginRegistry
) -> None:
    config = load_config(
        config_file, registry, ["callbacks[0].every_n_updates=null", "callbacks[0].every_n_epochs=1"]
    )
    assert config.callbacks[0].interval == Interval("epoch", 1)


def test_set_values_are_checked_like_the_file(config_file: Path, registry: PluginRegistry) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(
            config_file,
            registry,
            ["trainer.max_epochs=2.5", "trainer.max_epoch=3", "callbacks[0].every_n_epochs=1"],
        )
    assert problems(exc) == [
        "trainer.max_epochs: expected int, got 2.5 (float)",
        "trainer.max_epoch: unknown field; did you mean 'max_epochs'?",
        "callbacks[0]: set exactly one of every_n_epochs, every_n_updates, every_n_samples; "
        "got every_n_epochs, every_n_updates",
    ]


def test_set_builds_missing_mappings() -> None:
    assert apply_overrides(None, ["trainer.max_updates=4", "model.kind=mlp"]) == {
        "trainer": {"max_updates": 4},
        "model": {"kind": "mlp"},
    }


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("trainer.max_epochs", "expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("trainer..max_epochs=3", "cannot parse the key"),
        ("trainer.=3", "cannot parse the key"),
        ("callbacks[x].name=a", "cannot parse the key"),
        ("callbacks[7].name=a", "callbacks.7 does not exist (no list item 7)"),
        ("trainer[0]=a", "trainer.0 does not exist"),
        ("trainer.max_epochs.x=1", "trainer.max_epochs.x is inside a value that is not a mapping"),
    ],
)
def test_bad_set_is_a_usage_error(
    config_file: Path, registry: PluginRegistry, item: str, expected: str
) -> None:
    with pytest.raises(UsageError) as exc:
        load_config(config_file, registry, [item])
    assert exc.value.exit_status == EXIT_USAGE
    # names the item (or, for a key that does not parse, the key)
    assert str(exc.value).startswith(f"--set '{item.partition('=')[0]}")
    assert expected in str(exc.value)


# ------------------------------------------------------------------------------------- files


def test_yaml_syntax_error_names_line_and_column() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_yaml("trainer:\n  max_epochs: 3\n bad: [1, 2\n", "broken.yaml")
    (problem,) = problems(exc)
    assert problem.startswith("YAML syntax error at line 3, column 2: ")
    assert str(exc.value).startswith("invalid config in broken.yaml (1 problem):")


def test_missing_file_is_a_usage_error(tmp_path: Path, registry: PluginRegistry) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", registry)


def test_empty_file_says_so(tmp_path: Path, registry: PluginRegistry) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, registry)
    (problem,) = problems(exc)
    assert problem.startswith("the file is empty")


def test_top_level_must_be_a_mapping(registry: PluginRegistry) -> None:
    assert structure_fails(["trainer"], registry) == [
        "a config is a mapping of sections, got ['trainer'] (list)"
    ]


def test_bundled_example_validates() -> None:
    environment_registry = PluginRegistry.from_environment()
    config = load_config(None, environment_registry, text=example_yaml())
    assert config.trainer.max_epochs is not None
    assert {"train", "val", "test"} <= set(config.datasets)
    assert config.optimizer.lr_schedule is not None
    assert config.optimizer.lr_schedule.kind == "cosine"
    plain = unstructure_config(config, environment_registry)
    assert structure_config(plain, environment_registry) == config
