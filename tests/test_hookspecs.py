"""The hook specifications are documented like pytest's: every event argument has a ``:param:`` line,
and the loop's pseudocode is told once, in the module docstring, which the documentation shows."""

from __future__ import annotations

import importlib.util
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from noether_core.plugins import hookspecs

ROOT = Path(__file__).resolve().parent.parent


def undocumented_parameters(spec: Callable[..., Any]) -> list[str]:
    """Parameters of a hook spec (other than the core arguments) without a ``:param name:`` line."""
    doc = inspect.getdoc(spec) or ""
    params = [p for p in inspect.signature(spec).parameters if p not in hookspecs.CORE_ARGUMENTS]
    return [p for p in params if not re.search(rf"^:param {re.escape(p)}:\s*\S", doc, re.MULTILINE)]


def test_the_docstring_check_catches_an_undocumented_parameter() -> None:
    def spec(trainer: Any, counter: Any, documented: int, forgotten: int) -> None:
        """A hook.

        :param documented: is documented.
        """

    assert undocumented_parameters(spec) == ["forgotten"]


def hook_specs() -> list[str]:
    return sorted(name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "noether_spec"))


def test_every_hook_spec_is_a_listed_event() -> None:
    assert hook_specs() == sorted(hookspecs.HOOK_NAMES)
    assert len(hookspecs.HOOK_NAMES) == 6


@pytest.mark.parametrize("name", hookspecs.HOOK_NAMES)
def test_every_hook_spec_documents_its_parameters(name: str) -> None:
    spec = getattr(hookspecs, name)
    doc = inspect.getdoc(spec)
    assert doc, f"hook spec {name} has no docstring"
    assert set(hookspecs.CORE_ARGUMENTS) <= set(inspect.signature(spec).parameters), name
    assert undocumented_parameters(spec) == [], f"{name}: document these with ':param NAME:' lines"


def test_core_arguments_are_documented_once() -> None:
    docs = "\n".join(inspect.getdoc(getattr(hookspecs, name)) or "" for name in hookspecs.HOOK_NAMES)
    for arg in hookspecs.CORE_ARGUMENTS:
        assert re.search(rf"^:param {arg}:", docs, re.MULTILINE), arg


# ------------------------------------------------------------------------------------ the loop, once


def docs_hook() -> Any:
    """``docs/hooks/loop.py``, the MkDocs hook that puts the loop into the documentation."""
    spec = importlib.util.spec_from_file_location("docs_loop_hook", ROOT / "docs" / "hooks" / "loop.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_show_the_loop_of_the_hookspecs_docstring() -> None:
    hook = docs_hook()
    loop = hook.loop_pseudocode()
    assert loop.splitlines()[0].startswith("setup: plan the run")
    assert "after_training(status)" in loop
    # the very text of the docstring, dedented
    assert "\n".join("    " + line if line else "" for line in loop.splitlines()) in hookspecs.__doc__
    events = (ROOT / "docs" / "events.md").read_text()
    assert hook.MARKER in events
    rendered = hook.on_page_markdown(events, page=None, config=None, files=None)
    assert f"```text\n{loop}\n```" in rendered
    assert hook.on_page_markdown("no marker here") == "no marker here"


def test_the_loop_is_told_nowhere_else() -> None:
    """No other copy to drift: not in the docs, not in the trainer's docstring."""
    sources = [
        *sorted((ROOT / "docs").rglob("*.md")),
        ROOT / "README.md",
        ROOT / "noether_core/run/trainer.py",
    ]
    for path in sources:
        text = path.read_text()
        assert "for accumulation_step in range(accumulation_steps)" not in text, path
