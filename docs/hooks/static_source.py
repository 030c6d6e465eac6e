"""noether's source read with ``ast``, never imported: what the generated reference pages are made of.

The docs build runs without torch (``tox -e docs`` installs only the docs tools), and the tests that hold
the reference complete use these same readers, so a page and its test cannot disagree about what is
documented.
"""

from __future__ import annotations

import ast
import inspect
import io
import tokenize
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FACE_MODULE = "noether_core"
HOOKSPECS_MODULE = "noether_core.plugins.hookspecs"

Definition = ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef | ast.Assign | ast.AnnAssign


@dataclass(frozen=True)
class FaceName:
    """One name of the public face: the name, the module that defines it, and the ``_FACE`` group."""

    name: str
    module: str
    group: str


class SourceTree:
    """Python modules found by dotted name under a list of folders, like ``sys.path``, each parsed once
    per tree (a new tree reads the files again: ``mkdocs serve`` rebuilds with new ones)."""

    def __init__(self, paths: Sequence[Path] = (ROOT,)) -> None:
        self.paths = tuple(paths)
        self._parsed: dict[Path, ast.Module] = {}

    def file(self, module: str) -> Path:
        parts = module.split(".")
        for base in self.paths:
            for candidate in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
                if candidate.is_file():
                    return candidate
        raise LookupError(f"no source for module {module!r} under {', '.join(map(str, self.paths))}")

    def is_package(self, module: str) -> bool:
        return self.file(module).name == "__init__.py"

    def tree(self, module: str) -> ast.Module:
        path = self.file(module)
        if path not in self._parsed:
            self._parsed[path] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        return self._parsed[path]

    def source(self, module: str) -> str:
        return self.file(module).read_text(encoding="utf-8")


def _names_bound(node: Definition) -> list[str]:
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign):
        return [node.target.id] if isinstance(node.target, ast.Name) else []
    return [node.name]


def find_definition(body: Sequence[ast.stmt], name: str) -> tuple[Definition, ast.stmt | None] | None:
    """The last statement of ``body`` that defines ``name``, with the statement after it (``None`` at the
    end): the one that holds an attribute docstring."""
    found: tuple[Definition, ast.stmt | None] | None = None
    for i, node in enumerate(body):
        if isinstance(node, Definition) and name in _names_bound(node):
            found = (node, body[i + 1] if i + 1 < len(body) else None)
    return found


def attribute_docstring(following: ast.stmt | None) -> str | None:
    """The string literal right after an assignment (griffe's and Sphinx's attribute docstring)."""
    if (
        isinstance(following, ast.Expr)
        and isinstance(following.value, ast.Constant)
        and isinstance(following.value.value, str)
    ):
        return inspect.cleandoc(following.value.value)
    return None


def docstring(definition: Definition, following: ast.stmt | None) -> str | None:
    """A definition's docstring: its own for a class or function, the attribute docstring for a name."""
    if isinstance(definition, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return ast.get_docstring(definition)
    return attribute_docstring(following)


def docstring_of(tree: SourceTree, module: str, name: str) -> str | None:
    """The docstring of the top-level ``name`` defined in ``module``; ``None`` when it has none.

    Raises ``LookupError`` when ``module`` does not define ``name`` at its top level.
    """
    found = find_definition(tree.tree(module).body, name)
    if found is None:
        raise LookupError(f"{module} defines no top-level {name!r}")
    text = docstring(*found)
    return text if text and text.strip() else None


def summary(text: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    if not text:
        return ""
    return " ".join(text.strip().split("\n\n", 1)[0].split())


def _literal(tree: SourceTree, module: str, name: str) -> object:
    found = find_definition(tree.tree(module).body, name)
    if found is None or not isinstance(found[0], (ast.Assign, ast.AnnAssign)) or found[0].value is None:
        raise LookupError(f"{module} assigns no top-level {name!r}")
    return ast.literal_eval(found[0].value)


def hook_names(tree: SourceTree | None = None) -> tuple[str, ...]:
    """``HOOK_NAMES`` of the hook specs module, in the order of the events."""
    names = _literal(tree or SourceTree(), HOOKSPECS_MODULE, "HOOK_NAMES")
    if not (isinstance(names, tuple) and all(isinstance(n, str) for n in names)):
        raise TypeError(f"{HOOKSPECS_MODULE}.HOOK_NAMES must be a tuple of names, got {names!r}")
    return names


def public_all(tree: SourceTree | None = None) -> list[str]:
    """``noether_core.__all__``."""
    names = _literal(tree or SourceTree(), FACE_MODULE, "__all__")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise TypeError(f"{FACE_MODULE}.__all__ must be a list of names, got {names!r}")
    return names


def _face_node(tree: SourceTree) -> ast.Dict:
    found = find_definition(tree.tree(FACE_MODULE).body, "_FACE")
    node = found[0] if found else None
    if not (isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict)):
        raise LookupError(f"{FACE_MODULE} has no dict literal _FACE")
    return node.value


def _comments(source: str) -> Iterator[tuple[int, str]]:
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string.lstrip("#").strip()


def public_face(tree: SourceTree | None = None) -> list[FaceName]:
    """Every entry of ``noether_core._FACE``, in order, each in the group its comment line names (the
    comments are how the face is organised for readers, so the reference follows them)."""
    tree = tree or SourceTree()
    face = _face_node(tree)
    comments = [(line, text) for line, text in _comments(tree.source(FACE_MODULE)) if text]
    out = []
    for key, value in zip(face.keys, face.values, strict=True):
        if not (isinstance(key, ast.Constant) and isinstance(value, ast.Constant)):
            raise TypeError(f"{FACE_MODULE}._FACE must map names to module names, as string literals")
        before = [text for line, text in comments if face.lineno <= line < key.lineno]
        group = before[-1] if before else ""
        out.append(FaceName(str(key.value), str(value.value), group[:1].upper() + group[1:]))
    return out


__all__ = [
    "ROOT",
    "FaceName",
    "SourceTree",
    "attribute_docstring",
    "docstring",
    "docstring_of",
    "find_definition",
    "hook_names",
    "public_all",
    "public_face",
    "summary",
]
