"""The generated reference is complete: every hook spec, public name and built-in kind has a docstring,
and every field of a built-in kind's ``Config`` has help (the attribute docstring on the line after it).

The checks use the very readers that generate the pages (``docs/hooks/``), loaded the way MkDocs loads
them, so the tests and the docs cannot disagree about what is documented. Those readers work on the
source with ``ast``; the tests below also hold them to the imported objects.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pytest

import noether_core
from noether_core import CallbackConfig
from noether_core.plugins import hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOCS_HOOKS = ROOT / "docs" / "hooks"


def docs_hook(name: str) -> ModuleType:
    """``docs/hooks/{name}.py``, loaded as MkDocs loads a hook: with its folder on ``sys.path`` while it
    runs, so that it finds its sibling ``static_source``."""
    spec = importlib.util.spec_from_file_location(f"docs_hooks_{name}", DOCS_HOOKS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    saved = sys.path.copy()
    sys.path.insert(0, str(DOCS_HOOKS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


api_reference = docs_hook("api_reference")
config_reference = docs_hook("config_reference")
static_source = api_reference.static_source
TREE = static_source.SourceTree()

#: Public names that need no docstring of their own, and why.
EXEMPT = {
    "__version__": "the version string",
    "EvalInterval": "a Literal type alias whose values say it all; at_eval's hook spec explains them",
    "RunStatus": "a Literal type alias whose values say it all; after_training's hook spec explains them",
    "CORE_ARGUMENTS": "a tuple of argument names, each documented by the hook specs' :param lines",
    "HOOK_NAMES": "a tuple of event names, each documented by its own hook spec",
    "TrainStep": "a Callable type alias, explained by the docstring of noether_core.run.train_step",
}


def _public_names() -> list[str]:
    return [name for name in noether_core.__all__ if name not in EXEMPT]


# ------------------------------------------------------------------------------------ hooks and face


@pytest.mark.parametrize("name", hookspecs.HOOK_NAMES)
def test_every_hook_spec_has_a_docstring(name: str) -> None:
    assert static_source.docstring_of(TREE, static_source.HOOKSPECS_MODULE, name), name


@pytest.mark.parametrize("name", _public_names())
def test_every_public_name_has_a_docstring(name: str) -> None:
    face = {entry.name: entry.module for entry in static_source.public_face(TREE)}
    assert static_source.docstring_of(TREE, face[name], name), (
        f"noether_core.{name} ({face[name]}) has no docstring (for an assigned name: a string literal on "
        "the line after the assignment)"
    )


def test_the_exemptions_name_public_names() -> None:
    assert set(EXEMPT) <= set(noether_core.__all__)


def test_the_source_readers_see_what_python_sees() -> None:
    assert static_source.hook_names(TREE) == hookspecs.HOOK_NAMES
    assert static_source.public_all(TREE) == noether_core.__all__
    face = {entry.name: entry.module for entry in static_source.public_face(TREE)}
    assert face == noether_core._FACE


def test_the_api_pages_cover_the_face_and_the_hooks() -> None:
    face = api_reference.face_markdown(TREE)
    for entry in static_source.public_face(TREE):
        assert f"\n::: {entry.module}.{entry.name}\n" in f"\n{face}"
    assert face.startswith("## Writing a plugin\n")
    hooks = api_reference.hooks_markdown(TREE)
    for name in hookspecs.HOOK_NAMES:
        assert f"::: noether_core.plugins.hookspecs.{name}\n" in hooks
    assert api_reference.FACE_MARKER in (ROOT / "docs" / "reference" / "api.md").read_text()
    assert api_reference.HOOKS_MARKER in (ROOT / "docs" / "reference" / "hooks.md").read_text()


# ------------------------------------------------------------------------------------ built-in kinds

KINDS = config_reference.kinds(TREE)


def test_the_kinds_are_the_registered_entry_points() -> None:
    registered = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="noether.callbacks")}
    builtin = {k.name: k.target for k in KINDS}
    assert builtin.items() <= registered.items()
    assert len(builtin) >= 16


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_every_builtin_kind_has_a_docstring(kind: Any) -> None:
    assert config_reference.kind_summary(kind), f"{kind.target} has no docstring"


def test_every_config_field_has_help() -> None:
    assert config_reference.undocumented_fields(KINDS) == [], (
        "give each field an attribute docstring: a string literal on the line right after it"
    )


def _runtime_default(field: attrs.Attribute[Any]) -> str | None:
    default = field.default
    if default is attrs.NOTHING:
        return None
    factory = getattr(default, "factory", None)  # an attrs.Factory
    return json.dumps(default if factory is None else factory())


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_the_config_read_from_source_is_the_one_attrs_builds(kind: Any) -> None:
    """The fields, their order and their defaults, as read with ``ast``, against the imported class."""
    (entry_point,) = importlib.metadata.entry_points(group="noether.callbacks", name=kind.name)
    config = getattr(entry_point.load(), "Config", CallbackConfig)
    assert str(kind.config) == f"{config.__module__}.{config.__qualname__}"
    runtime = [(f.name, _runtime_default(f)) for f in attrs.fields(config)]
    assert [(f.name, f.default) for f in kind.fields] == runtime


def test_the_config_page_lists_every_kind_and_field() -> None:
    every = config_reference.config_fields(TREE, config_reference.ClassRef(*config_reference.BASE_CONFIG))
    page = config_reference.reference_markdown(KINDS, every, config_reference.manual_sections())
    for kind in KINDS:
        assert f"\n## `{kind.name}`\n" in page
        for field in kind.fields:
            assert f"| `{field.name}` |" in page, (kind.name, field.name)
    assert "| `every_n_updates` | `int | None` | `1` |" in page  # FixedEarlyStopper's own default
    assert "[manual](../callbacks/checkpointing.md#emacallback)" in page
    assert config_reference.MARKER in (ROOT / "docs" / "reference" / "callbacks.md").read_text()


# ------------------------------------------------------------------------------------ the checker


FAKE_PLUGIN = '''
import attrs

from noether_core import CallbackConfig, hookimpl


@attrs.frozen(kw_only=True)
class SharedConfig(CallbackConfig):
    inherited: int = 0


class Documented:
    """Has a docstring."""

    @attrs.frozen(kw_only=True)
    class Config(SharedConfig):
        documented: int = attrs.field(default=1)
        """Has help."""
        forgotten: str = "x"

    @hookimpl
    def at_eval(self) -> None: ...


class Undocumented:
    @hookimpl
    def at_eval(self) -> None: ...


def undocumented_function() -> None:
    pass
'''


def test_the_checks_catch_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "fake_plugins").mkdir()
    (tmp_path / "fake_plugins" / "fake.py").write_text(FAKE_PLUGIN)
    tree = static_source.SourceTree([tmp_path, ROOT])
    found = config_reference.kinds(
        tree, {"Documented": "fake_plugins.fake:Documented", "Undocumented": "fake_plugins.fake:Undocumented"}
    )

    assert config_reference.undocumented_fields(found) == [
        "fake_plugins.fake.Documented.Config.forgotten",
        "fake_plugins.fake.SharedConfig.inherited",
    ]
    documented, undocumented = found
    assert [f.name for f in documented.own_fields] == ["inherited", "documented", "forgotten"]
    assert config_reference.kind_summary(documented) == "Has a docstring."
    assert config_reference.kind_summary(undocumented) == ""
    assert undocumented.config == config_reference.ClassRef(*config_reference.BASE_CONFIG)
    assert static_source.docstring_of(tree, "fake_plugins.fake", "undocumented_function") is None
    with pytest.raises(LookupError, match="defines no top-level 'missing'"):
        static_source.docstring_of(tree, "fake_plugins.fake", "missing")
