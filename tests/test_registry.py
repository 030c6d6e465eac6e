"""Discovery and loading of plugins: :class:`PluginRegistry` over explicit sources, and
:func:`inspect_plugin`, which checks a plugin against the hook specs before pluggy ever sees it.

Registries are built from :class:`PluginSource` values directly; only the test of
:meth:`PluginRegistry.from_environment` goes through ``importlib.metadata``, with a throwaway
``.dist-info`` folder on ``sys.path``.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import sample_function_plugin
import sample_plugins

from noether_core import CallbackConfig, PluginLoadError, PluginValidationError, hookimpl
from noether_core.plugins import hookspecs
from noether_core.plugins.registry import (
    ENTRY_POINT_GROUP,
    Plugin,
    PluginRegistry,
    PluginSource,
    UnknownKindError,
    inspect_plugin,
)

RECORDER = PluginSource("Recorder", "sample_plugins:Recorder", "noether-test-plugins", "1.0.0")
STOP_AT = PluginSource("StopAt", "sample_plugins:StopAt", "noether-test-plugins", "1.0.0")
HEARTBEAT = PluginSource("heartbeat", "sample_function_plugin", "noether-test-plugins", "1.0.0")

BROKEN_MODULE = "noether_test_broken_plugin"
BROKEN_SOURCE = 'raise RuntimeError("boom: a dependency of the plugin is missing")\n'


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], str]:
    """Writes ``name.py`` into a folder on ``sys.path``; every module it wrote is forgotten afterwards."""
    folder = tmp_path / "modules"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))

    def write(name: str, source: str) -> str:
        (folder / f"{name}.py").write_text(source)
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name

    return write


def source_for(kind: str, target: Any) -> PluginSource:
    return PluginSource(
        kind, f"{getattr(target, '__module__', 'tests')}:{kind}", "noether-test-plugins", "1.0.0"
    )


# ------------------------------------------------------------------------------------------ discovery


def test_discovery_lists_a_broken_plugin_without_importing_it(module_dir: Callable[[str, str], str]) -> None:
    module_dir(BROKEN_MODULE, BROKEN_SOURCE)
    broken = PluginSource(
        "BrokenCallback", f"{BROKEN_MODULE}:BrokenCallback", "noether-broken-plugin", "0.0.1"
    )

    registry = PluginRegistry([broken, RECORDER, HEARTBEAT])

    assert registry.kinds() == ["BrokenCallback", "Recorder", "heartbeat"]
    assert registry.sources("BrokenCallback") == [broken]
    assert registry.source("BrokenCallback") == broken
    assert dict(registry)["BrokenCallback"] == [broken]
    assert BROKEN_MODULE not in sys.modules  # listing and looking up never import

    with pytest.raises(PluginLoadError) as info:
        registry.load("BrokenCallback")
    err = info.value
    assert not isinstance(err, (UnknownKindError, PluginValidationError))
    assert (err.kind, err.distribution, err.version) == ("BrokenCallback", "noether-broken-plugin", "0.0.1")
    assert err.exit_status == 3
    message = str(err)
    for part in ("'BrokenCallback'", "noether-broken-plugin 0.0.1", "RuntimeError", "boom"):
        assert part in message
    assert isinstance(err.__cause__, RuntimeError)

    # the broken kind breaks only itself
    assert registry.load("Recorder").target is sample_plugins.Recorder
    assert registry.load("heartbeat").target is sample_function_plugin
    # and keeps failing the same way, rather than being cached as half-imported
    with pytest.raises(PluginLoadError, match=r"noether-broken-plugin 0\.0\.1"):
        registry.load("BrokenCallback")
    assert BROKEN_MODULE not in sys.modules


def test_from_environment_reads_entry_points_with_distribution_and_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module_dir: Callable[[str, str], str]
) -> None:
    module_dir(BROKEN_MODULE, BROKEN_SOURCE)
    site = tmp_path / "site"
    dist_info = site / "noether_fake_plugin-2.5.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: noether-fake-plugin\nVersion: 2.5.0\n")
    (dist_info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        f"FakeBroken = {BROKEN_MODULE}:Broken\n"
        "FakeRecorder = sample_plugins:Recorder\n"
    )
    monkeypatch.syspath_prepend(str(site))

    registry = PluginRegistry.from_environment()

    assert {"FakeBroken", "FakeRecorder"} <= set(registry.kinds())
    assert registry.sources("FakeBroken") == [
        PluginSource("FakeBroken", f"{BROKEN_MODULE}:Broken", "noether-fake-plugin", "2.5.0")
    ]
    assert BROKEN_MODULE not in sys.modules
    with pytest.raises(PluginLoadError, match=r"'FakeBroken' from noether-fake-plugin 2\.5\.0"):
        registry.load("FakeBroken")
    plugin = registry.load("FakeRecorder")
    assert plugin.target is sample_plugins.Recorder
    assert (plugin.source.distribution, plugin.source.version) == ("noether-fake-plugin", "2.5.0")


def test_a_kind_claimed_by_two_distributions_fails_naming_both() -> None:
    first = PluginSource("ExampleCounter", "sample_plugins:Recorder", "noether-example-plugin", "1.2.3")
    second = PluginSource("ExampleCounter", "sample_plugins:StopAt", "noether-conflicting-plugin", "0.1.0")
    registry = PluginRegistry([first, second, RECORDER])

    assert registry.kinds() == ["ExampleCounter", "Recorder"]  # discovery itself does not fail
    assert registry.sources("ExampleCounter") == [first, second]
    with pytest.raises(PluginLoadError) as info:
        registry.load("ExampleCounter")
    assert not isinstance(info.value, UnknownKindError)
    assert info.value.kind == "ExampleCounter"
    assert info.value.exit_status == 3
    message = str(info.value)
    assert "noether-example-plugin 1.2.3" in message
    assert "noether-conflicting-plugin 0.1.0" in message
    assert registry.load("Recorder").target is sample_plugins.Recorder


def test_the_same_entry_point_seen_twice_is_not_a_conflict() -> None:
    # one distribution reachable through two sys.path entries reports its entry points twice
    registry = PluginRegistry([RECORDER, RECORDER])
    assert registry.sources("Recorder") == [RECORDER]
    assert registry.load("Recorder").target is sample_plugins.Recorder


# ------------------------------------------------------------------------------------- kind spellings


def test_unknown_kind_suggests_close_names() -> None:
    registry = PluginRegistry([RECORDER, STOP_AT])
    with pytest.raises(UnknownKindError) as info:
        registry.load("Recordr")
    err = info.value
    assert isinstance(err, PluginLoadError)
    assert err.kind == "Recordr"
    assert err.exit_status == 2  # a config mistake, not a broken plugin
    assert "Did you mean 'Recorder'?" in str(err)
    assert ENTRY_POINT_GROUP in str(err)


def test_unknown_kind_without_close_names_has_no_suggestion() -> None:
    registry = PluginRegistry([RECORDER])
    with pytest.raises(UnknownKindError) as info:
        registry.load("Zzzzzz")
    assert "Did you mean" not in str(info.value)


def test_unknown_seed_spelling_suggests_the_short_kind() -> None:
    registry = PluginRegistry([RECORDER])
    with pytest.raises(UnknownKindError, match="Did you mean 'Recorder'"):
        registry.load("noether.core.callbacks.Recordr")


@pytest.mark.parametrize(
    "spelling", ["noether.core.callbacks.Recorder", "noether.training.callbacks.Recorder"]
)
def test_seed_spellings_resolve_to_the_short_kind(spelling: str) -> None:
    registry = PluginRegistry([RECORDER])
    assert registry.canonical(spelling) == "Recorder"
    plugin = registry.load(spelling)
    assert plugin.kind == "Recorder"
    assert plugin is registry.load("Recorder")  # one plugin, loaded once


def test_import_path_kind_loads_without_an_entry_point() -> None:
    registry = PluginRegistry([])
    plugin = registry.load("sample_plugins:StopAt")
    assert plugin.target is sample_plugins.StopAt
    assert plugin.kind == "sample_plugins:StopAt"
    assert plugin.source.distribution is None
    assert plugin.config_class is sample_plugins.StopAt.Config
    assert registry.load("sample_plugins:StopAt") is plugin


def test_a_mistyped_import_path_is_an_unknown_kind() -> None:
    registry = PluginRegistry([])
    with pytest.raises(UnknownKindError, match="no module named 'noether_no_such_module'"):
        registry.load("noether_no_such_module:Thing")
    with pytest.raises(
        UnknownKindError, match=r"has no attribute 'Recordr'\. Did you mean sample_plugins:Recorder"
    ):
        registry.load("sample_plugins:Recordr")


def test_an_import_path_whose_module_is_broken_is_a_load_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "noether_broken_here.py").write_text("import noether_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginLoadError, match="noether_missing_dependency") as info:
        PluginRegistry([]).load("noether_broken_here:Thing")
    assert not isinstance(info.value, UnknownKindError)


# ------------------------------------------------------------------------------------ inspect_plugin


def test_class_plugin_with_config() -> None:
    plugin = inspect_plugin(RECORDER, sample_plugins.Recorder)
    assert plugin.is_class
    assert plugin.config_class is sample_plugins.Recorder.Config
    assert plugin.hooks == hookspecs.HOOK_NAMES  # hook spec order, not dir() order
    assert plugin.stateful
    assert plugin.scheduled
    assert plugin.needs_eval_mode  # unless the plugin says otherwise
    assert plugin.kind == "Recorder"

    config = plugin.config_class(kind="Recorder", every_n_updates=2, label="x")
    first, second = plugin.instantiate(config), plugin.instantiate(config)
    assert isinstance(first, sample_plugins.Recorder)
    assert first is not second
    assert first.config is config


def test_class_plugin_without_at_eval_or_state() -> None:
    plugin = inspect_plugin(STOP_AT, sample_plugins.StopAt)
    assert plugin.hooks == ("after_update",)
    assert not plugin.stateful
    assert not plugin.scheduled


def test_class_plugin_without_config_uses_the_base_config() -> None:
    class NoConfig:
        def __init__(self, config: CallbackConfig) -> None:
            self.config = config

        @hookimpl
        def after_epoch(self, counter: Any) -> None:
            pass

    plugin = inspect_plugin(source_for("NoConfig", NoConfig), NoConfig)
    assert plugin.config_class is CallbackConfig
    assert plugin.hooks == ("after_epoch",)


def test_needs_eval_mode_is_read_from_the_class_or_module(monkeypatch: pytest.MonkeyPatch) -> None:
    probe = inspect_plugin(
        source_for("TrainModeProbe", sample_plugins.TrainModeProbe), sample_plugins.TrainModeProbe
    )
    assert probe.needs_eval_mode is False
    monkeypatch.setattr(sample_function_plugin, "needs_eval_mode", False, raising=False)
    assert inspect_plugin(HEARTBEAT, sample_function_plugin).needs_eval_mode is False


def test_needs_eval_mode_must_be_a_bool() -> None:
    class Vague(sample_plugins.ModeProbe):
        needs_eval_mode = "no"

    with pytest.raises(PluginValidationError, match="needs_eval_mode must be True or False, got 'no'"):
        inspect_plugin(source_for("Vague", Vague), Vague)


def test_module_of_hook_functions() -> None:
    plugin = inspect_plugin(HEARTBEAT, sample_function_plugin)
    assert not plugin.is_class
    assert not plugin.stateful
    assert plugin.scheduled
    assert plugin.hooks == ("at_eval",)
    assert plugin.config_class is CallbackConfig

    config = CallbackConfig(kind="heartbeat", every_n_updates=2)
    first, second = plugin.instantiate(config), plugin.instantiate(config)
    assert first is not second
    assert first != second  # pluggy refuses a plugin equal to one already registered
    assert getattr(first, "at_eval") is sample_function_plugin.at_eval  # noqa: B009


def test_object_of_hook_functions() -> None:
    @hookimpl
    def after_update(counter: Any, grad_norm: Any) -> None:
        pass

    target = types.SimpleNamespace(after_update=after_update, helper=lambda: None)
    plugin = inspect_plugin(PluginSource("obj", "tests:obj"), target)
    assert plugin.hooks == ("after_update",)
    assert not plugin.is_class


def test_static_and_class_method_hooks_are_accepted() -> None:
    class Methods:
        def __init__(self, config: CallbackConfig) -> None:
            pass

        @staticmethod
        @hookimpl
        def after_epoch(counter: Any) -> None:
            pass

        @classmethod
        @hookimpl
        def after_update(cls, counter: Any) -> None:
            pass

        @hookimpl
        def before_training(this, counter: Any) -> None:  # noqa: N805 - the first name is free
            pass

    plugin = inspect_plugin(source_for("Methods", Methods), Methods)
    assert plugin.hooks == ("before_training", "after_update", "after_epoch")


def test_misspelled_hook_is_an_error_with_a_suggestion() -> None:
    source = PluginSource("Misspelled", "sample_plugins:Misspelled", "noether-test-plugins", "1.0.0")
    with pytest.raises(PluginValidationError) as info:
        inspect_plugin(source, sample_plugins.Misspelled)
    err = info.value
    assert isinstance(err, PluginLoadError)
    assert (err.kind, err.distribution, err.version) == ("Misspelled", "noether-test-plugins", "1.0.0")
    assert "'after_updat'" in str(err)
    assert "did you mean 'after_update'" in str(err)
    assert "noether-test-plugins 1.0.0" in str(err)


def test_unknown_argument_is_an_error_naming_it() -> None:
    with pytest.raises(PluginValidationError) as info:
        inspect_plugin(
            source_for("UnknownArgument", sample_plugins.UnknownArgument), sample_plugins.UnknownArgument
        )
    message = str(info.value)
    assert "after_update()" in message
    assert "'lossez'" in message
    assert "losses" in message  # what the event does pass
    assert "'counter'" not in message.split("which the event")[0]


def test_core_argument_config_is_accepted_everywhere() -> None:
    class TakesEverything:
        @hookimpl
        def at_eval(self, trainer: Any, model: Any, counter: Any, config: Any, interval: str) -> None:
            pass

        @hookimpl
        def after_training(self, config: Any, status: str, **rest: Any) -> None:
            pass

    plugin = inspect_plugin(source_for("TakesEverything", TakesEverything), TakesEverything)
    assert plugin.hooks == ("at_eval", "after_training")


def test_hook_named_method_without_hookimpl_is_an_error() -> None:
    with pytest.raises(
        PluginValidationError, match=r"'after_update' has the name of a hook but is not marked"
    ):
        inspect_plugin(source_for("Unmarked", sample_plugins.Unmarked), sample_plugins.Unmarked)


def test_config_that_is_not_attrs_is_an_error() -> None:
    target = sample_plugins.NotAnAttrsConfig
    with pytest.raises(PluginValidationError, match=r"NotAnAttrsConfig\.Config must be an attrs class"):
        inspect_plugin(source_for("NotAnAttrsConfig", target), target)


def test_attrs_config_not_extending_callback_config_is_an_error() -> None:
    class Standalone:
        @attrs.frozen(kw_only=True)
        class Config:
            kind: str = "x"

        @hookimpl
        def after_update(self) -> None:
            pass

    with pytest.raises(PluginValidationError, match=r"extending noether_core\.CallbackConfig"):
        inspect_plugin(source_for("Standalone", Standalone), Standalone)


def test_plain_function_target_is_an_error() -> None:
    source = PluginSource("fn", "sample_function_plugin:at_eval")
    with pytest.raises(PluginValidationError, match="is a function"):
        inspect_plugin(source, sample_function_plugin.at_eval)


def test_plain_function_import_path_fails_to_load() -> None:
    with pytest.raises(PluginValidationError, match="is a function"):
        PluginRegistry([]).load("sample_function_plugin:at_eval")


def test_an_old_style_hookwrapper_is_refused_with_a_pointer_to_wrapper() -> None:
    class Wrapper:
        @hookimpl(hookwrapper=True)
        def after_update(self) -> Any:
            yield

    with pytest.raises(PluginValidationError, match=r"old-style wrapper; write @hookimpl\(wrapper=True\)"):
        inspect_plugin(source_for("Wrapper", Wrapper), Wrapper)


def test_a_new_style_wrapper_is_a_wrapper_not_a_hook() -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def after_update(self) -> Any:
            yield

    plugin = inspect_plugin(source_for("Wrapper", Wrapper), Wrapper)
    assert plugin.wrappers == ("after_update",)
    assert plugin.hooks == ()
    assert not plugin.scheduled


def test_a_wrapper_must_be_a_generator() -> None:
    class NotAGenerator:
        @hookimpl(wrapper=True)
        def after_update(self) -> None:
            pass

    with pytest.raises(PluginValidationError, match="must be a generator that yields once"):
        inspect_plugin(source_for("NotAGenerator", NotAGenerator), NotAGenerator)


@pytest.mark.parametrize("option", ["tryfirst", "trylast"])
def test_ordering_options_are_refused(option: str) -> None:
    class Eager:
        @hookimpl(**{option: True})
        def after_update(self) -> None:
            pass

    with pytest.raises(PluginValidationError, match=f"{option}=True.*order of the config's callbacks list"):
        inspect_plugin(source_for("Eager", Eager), Eager)


def test_specname_implements_a_hook_under_another_name() -> None:
    class Named:
        @hookimpl(specname="after_update")
        def count_update(self, counter: Any) -> None:
            pass

        @hookimpl(specname="after_updat")  # the typo is the point
        def typo(self) -> None:
            pass

    with pytest.raises(PluginValidationError, match="'after_updat' is not a noether hook"):
        inspect_plugin(source_for("Named", Named), Named)
    del Named.typo
    plugin = inspect_plugin(source_for("Named", Named), Named)
    assert plugin.hooks == ("after_update",)
    assert plugin.members == (("count_update", "after_update"),)


def test_a_module_of_functions_may_have_a_config() -> None:
    module = types.ModuleType("noether_test_function_config")

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        label: str = "beat"

    @hookimpl
    def after_update(counter: Any, config: Any) -> None:
        pass

    module.Config = Config  # type: ignore[attr-defined]
    module.after_update = after_update  # type: ignore[attr-defined]
    assert inspect_plugin(source_for("beat", module), module).config_class is Config
    module.Config = dict  # type: ignore[attr-defined]
    with pytest.raises(PluginValidationError, match=r"noether_test_function_config\.Config must be an attrs"):
        inspect_plugin(source_for("beat", module), module)


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(type("Empty", (), {"helper": lambda self: None}), id="class"),
        pytest.param(types.SimpleNamespace(value=1), id="object"),
        pytest.param(types.ModuleType("empty_module"), id="module"),
    ],
)
def test_target_without_hooks_is_an_error(target: Any) -> None:
    with pytest.raises(PluginValidationError, match="implements none of the hooks"):
        inspect_plugin(PluginSource("Empty", "tests:Empty"), target)


def test_registry_load_validates() -> None:
    registry = PluginRegistry(
        [PluginSource("Misspelled", "sample_plugins:Misspelled", "noether-test-plugins", "1.0.0"), RECORDER]
    )
    with pytest.raises(PluginValidationError, match="did you mean 'after_update'"):
        registry.load("Misspelled")
    assert isinstance(registry.load("Recorder"), Plugin)
