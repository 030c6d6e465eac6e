"""The house rules, read from the code itself with ``ast``.

* The built-in plugins import only the public face, the top-level ``noether_core`` package (type-only and
  function-level imports included): whatever a built-in needs, a third-party plugin can import from the
  same place.
* ``noether_core`` has no import cycle, counting every ``import`` statement wherever it stands.
* The public face is complete and cheap: every name it lists resolves, and importing it loads no torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import noether_core

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "noether_core"
PLUGINS = ROOT / "noether_plugins"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path = ROOT) -> Iterator[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every import statement in ``path``, nested ones included; relative
    imports are resolved (``path`` is a module under ``root``), ``import a.b`` gives module ``a.b`` and
    no names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            yield node.lineno, module, [alias.name for alias in node.names]


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


# ------------------------------------------------------------------------------------ the face


def face_offences(folder: Path) -> list[str]:
    """Every import in the files under ``folder`` that reaches past the public face."""
    offences = []
    for path in python_files(folder):
        for line, module, names in imports(path, folder.parent):
            where = f"{path.relative_to(folder.parent)}:{line}"
            if module.startswith("noether_core.") or (module == "noether_core" and not names):
                offences.append(f"{where}: imports {module} (use `from noether_core import ...`)")
            elif module == "noether_core":
                offences += [
                    f"{where}: {name!r} is not in noether_core.__all__"
                    for name in names
                    if name not in noether_core.__all__
                ]
    return offences


def test_builtin_plugins_import_only_the_public_face() -> None:
    assert face_offences(PLUGINS) == []


def test_the_rule_catches_type_only_and_function_level_imports(tmp_path: Path) -> None:
    package = tmp_path / "sneaky_plugins"
    package.mkdir()
    (package / "sneaky.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from noether_core import hookimpl, Trainer\n"
        "if TYPE_CHECKING:\n"
        "    from noether_core.run.trainer import Trainer\n"
        "def f():\n"
        "    import noether_core.io.paths\n"
    )
    assert face_offences(package) == [
        "sneaky_plugins/sneaky.py:2: 'Trainer' is not in noether_core.__all__",
        "sneaky_plugins/sneaky.py:4: imports noether_core.run.trainer (use `from noether_core import ...`)",
        "sneaky_plugins/sneaky.py:6: imports noether_core.io.paths (use `from noether_core import ...`)",
    ]


def test_every_public_name_resolves() -> None:
    missing = [name for name in noether_core.__all__ if not hasattr(noether_core, name)]
    assert missing == []
    assert set(noether_core.__all__) == {*noether_core._FACE, "__version__"}  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        noether_core.Trainer  # type: ignore[attr-defined]  # noqa: B018


def test_importing_the_face_loads_no_torch() -> None:
    """``noether plugins list`` and ``noether hooks`` start without importing torch."""
    code = "import sys, noether_core, noether_core.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_trainer_is_a_run(tmp_path: Path) -> None:
    from tiny_runs import make_trainer, tiny_config

    trainer = make_trainer(tmp_path, tiny_config(max_updates=1, max_epochs=None))
    assert isinstance(trainer, noether_core.Run)
    assert all(isinstance(e, noether_core.Entry) for e in trainer.entries)


# ------------------------------------------------------------------------------------ no cycles


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``noether_core`` modules it imports, from every import statement (type-only and
    function-level ones too). ``from pkg import name`` counts ``pkg.name`` where that is a module."""
    modules = {module_name(p): p for p in python_files(CORE)}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for _, module, names in imports(path):
            if module in modules:
                graph[name].add(module)
            graph[name].update(f"{module}.{n}" for n in names if f"{module}.{n}" in modules)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, or a module importing itself
    (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_noether_core_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    assert "noether_core.run.protocol" in graph["noether_core.plugins.hookspecs"]  # type-only: counted
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
