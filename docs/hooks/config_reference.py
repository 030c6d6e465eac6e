"""MkDocs hook: ``<!-- noether: config reference -->`` becomes the configuration of every built-in kind,
read from the attrs ``Config`` class beside each plugin.

The kinds are the entry points of the ``noether.callbacks`` group in ``pyproject.toml``. A field's help
is its attribute docstring, the string literal on the line after it, which mkdocstrings shows as well;
:func:`undocumented_fields` lists the fields without one, and a test holds that list empty.

The classes are read with ``ast``, as attrs would see them (base fields first, a redefinition in a
subclass replaces the base's), so the docs build imports neither noether nor torch.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import static_source
from static_source import SourceTree

if sys.version_info >= (3, 11):
    import tomllib
else:  # on 3.10, the TOML reader pytest depends on there
    import tomli as tomllib

MARKER = "<!-- noether: config reference -->"
GROUP = "noether.callbacks"
BASE_CONFIG = ("noether_core.config.schema", "CallbackConfig")
MANUAL = static_source.ROOT / "docs" / "callbacks"
EVERY = "#fields-every-entry-has"

# decorators that make a class's annotated names into fields (attrs' and the stdlib's)
_FIELD_DECORATORS = {"frozen", "define", "mutable", "s", "attrs", "dataclass"}
_FIELD_CALLS = {"field", "ib", "attrib"}
_EMPTY_FACTORIES = {"list": "[]", "dict": "{}", "tuple": "[]", "set": "[]"}


@dataclass(frozen=True)
class ClassRef:
    """A class in the source: its module and its dotted name there (``EmaCallback.Config``)."""

    module: str
    qualname: str

    def __str__(self) -> str:
        return f"{self.module}.{self.qualname}"


@dataclass(frozen=True)
class ConfigField:
    """One field of a plugin's ``Config``, as the reference shows it."""

    name: str
    type: str
    default: str | None  # the value as YAML writes it; None: required
    help: str | None
    owner: ClassRef  # the class whose body defines it


@dataclass(frozen=True)
class Kind:
    """A built-in kind: its entry point, its docstring and its config's fields."""

    name: str
    target: str  # the entry point's value, ``module`` or ``module:Class``
    docstring: str | None
    config: ClassRef
    extends: tuple[ClassRef, ...]  # the config's bases
    fields: tuple[ConfigField, ...]

    @property
    def own_fields(self) -> tuple[ConfigField, ...]:
        """The fields other than those every entry has, unchanged, from ``CallbackConfig``."""
        return tuple(f for f in self.fields if (f.owner.module, f.owner.qualname) != BASE_CONFIG)


def builtin_kinds(pyproject: Path = static_source.ROOT / "pyproject.toml") -> dict[str, str]:
    """The ``noether.callbacks`` entry points of ``pyproject``: kind -> ``module[:attribute]``."""
    with pyproject.open("rb") as f:
        project = tomllib.load(f)
    kinds: dict[str, str] = project["project"]["entry-points"][GROUP]
    return kinds


# ------------------------------------------------------------------------------------ finding classes


def _class_body(tree: SourceTree, ref: ClassRef) -> ast.ClassDef:
    body: list[ast.stmt] = tree.tree(ref.module).body
    node: ast.ClassDef | None = None
    for part in ref.qualname.split("."):
        node = next((n for n in body if isinstance(n, ast.ClassDef) and n.name == part), None)
        if node is None:
            raise LookupError(f"no class {ref} in the source")
        body = node.body
    assert node is not None
    return node


def _imported(tree: SourceTree, module: str, node: ast.ImportFrom, name: str) -> ClassRef:
    """Where ``from ... import name`` takes ``name`` from; the public face is followed to the defining
    module, as ``noether_core.__getattr__`` would."""
    if node.level:
        package = module if tree.is_package(module) else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        source = f"{package}.{node.module}" if node.module else package
    else:
        source = node.module or ""
    if source == static_source.FACE_MODULE:
        face = {entry.name: entry.module for entry in static_source.public_face(tree)}
        if name in face:
            return resolve(tree, face[name], ast.Name(name))
    return resolve(tree, source, ast.Name(name))


def resolve(tree: SourceTree, module: str, expr: ast.expr, scope: ClassRef | None = None) -> ClassRef:
    """The class a name in ``module`` (inside class ``scope``, if given) refers to."""
    if not isinstance(expr, ast.Name):
        raise TypeError(f"{module}: cannot follow {ast.unparse(expr)!r} to a class; name it plainly")
    bodies: list[tuple[list[ast.stmt], str]] = []
    if scope is not None:
        bodies.append((_class_body(tree, scope).body, f"{scope.qualname}."))
    bodies.append((tree.tree(module).body, ""))
    for body, prefix in bodies:
        for node in reversed(body):
            if isinstance(node, ast.ClassDef) and node.name == expr.id:
                return ClassRef(module, prefix + node.name)
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == expr.id for t in node.targets
            ):
                if isinstance(node.value, ast.Name) and node.value.id == expr.id:
                    break  # ``Config = Config`` in a class body names the module's ``Config``
                return resolve(tree, module, node.value, scope)
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) == expr.id:
                        return _imported(tree, module, node, alias.name)
    # type-only imports sit under ``if TYPE_CHECKING:``
    for node in ast.walk(tree.tree(module)):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == expr.id:
                    return _imported(tree, module, node, alias.name)
    raise LookupError(f"{module}: no class {expr.id!r}")


def _bases(tree: SourceTree, ref: ClassRef) -> list[ClassRef]:
    node = _class_body(tree, ref)
    outer = ClassRef(ref.module, ref.qualname.rpartition(".")[0]) if "." in ref.qualname else None
    return [resolve(tree, ref.module, base, outer) for base in node.bases if not _is_generic(base)]


def _is_generic(base: ast.expr) -> bool:
    """``Protocol``, ``Generic[T]`` and ``object`` carry no fields."""
    name = base.value if isinstance(base, ast.Subscript) else base
    return isinstance(name, ast.Name) and name.id in {"object", "Protocol", "Generic"}


def config_class(tree: SourceTree, target: str) -> ClassRef:
    """The ``Config`` of the plugin an entry point names: the class's (own or inherited) or the module's,
    else ``CallbackConfig``, as the plugin registry takes it."""
    module, _, attribute = target.partition(":")
    if not attribute:
        found = static_source.find_definition(tree.tree(module).body, "Config")
        return resolve(tree, module, ast.Name("Config")) if found else ClassRef(*BASE_CONFIG)
    pending = [resolve(tree, module, ast.Name(attribute))]
    while pending:
        plugin = pending.pop(0)
        for node in _class_body(tree, plugin).body:
            if isinstance(node, ast.ClassDef) and node.name == "Config":
                return ClassRef(plugin.module, f"{plugin.qualname}.Config")
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "Config" for t in node.targets
            ):
                return resolve(tree, plugin.module, node.value, plugin)
        pending += _bases(tree, plugin)
    return ClassRef(*BASE_CONFIG)


# ------------------------------------------------------------------------------------ reading fields


def _is_field_class(node: ast.ClassDef) -> bool:
    for decorator in node.decorator_list:
        func = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in _FIELD_DECORATORS:
            return True
    return False


def _callee(node: ast.expr) -> str:
    if not isinstance(node, ast.Call):
        return ""
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _yaml(node: ast.expr) -> str:
    """A default as a config file writes it (``null``, ``true``, ``[]``); other expressions as code."""
    if _callee(node) == "Factory" and isinstance(node, ast.Call) and node.args:
        return _factory(node.args[0])
    try:
        return json.dumps(ast.literal_eval(node), ensure_ascii=False)
    except ValueError:
        return ast.unparse(node)


def _factory(node: ast.expr) -> str:
    name = ast.unparse(node)
    return _EMPTY_FACTORIES.get(name, f"{name}()")


def _default(value: ast.expr | None) -> str | None:
    if value is None:
        return None
    if _callee(value) in _FIELD_CALLS and isinstance(value, ast.Call):
        keywords = {k.arg: k.value for k in value.keywords}
        if "default" in keywords:
            return _yaml(keywords["default"])
        if "factory" in keywords:
            return _factory(keywords["factory"])
        return None
    return _yaml(value)


def _annotation(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return ast.unparse(node)


def _own_fields(tree: SourceTree, ref: ClassRef) -> Iterator[ConfigField]:
    node = _class_body(tree, ref)
    if not _is_field_class(node):
        return
    body = node.body
    for i, stmt in enumerate(body):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        kind = _annotation(stmt.annotation)
        if kind.startswith(("ClassVar", "typing.ClassVar")):
            continue
        following = body[i + 1] if i + 1 < len(body) else None
        yield ConfigField(
            stmt.target.id, kind, _default(stmt.value), static_source.attribute_docstring(following), ref
        )


def config_fields(tree: SourceTree, ref: ClassRef) -> tuple[ConfigField, ...]:
    """Every field of the attrs class ``ref``, in attrs' order: the bases' (a redefinition in the class
    replaces the base's field), then the class's own."""
    inherited: dict[str, ConfigField] = {}
    for base in reversed(_bases(tree, ref)):
        for f in config_fields(tree, base):
            inherited.pop(f.name, None)
            inherited[f.name] = f
    own = {f.name: f for f in _own_fields(tree, ref)}
    return (*(f for name, f in inherited.items() if name not in own), *own.values())


def kind_of(tree: SourceTree, name: str, target: str) -> Kind:
    module, _, attribute = target.partition(":")
    text = (
        static_source.docstring_of(tree, module, attribute)
        if attribute
        else ast.get_docstring(tree.tree(module))
    )
    config = config_class(tree, target)
    return Kind(name, target, text, config, tuple(_bases(tree, config)), config_fields(tree, config))


def kinds(tree: SourceTree | None = None, entry_points: dict[str, str] | None = None) -> list[Kind]:
    """The built-in kinds (or those of ``entry_points``), in the order they are registered."""
    tree = tree or SourceTree()
    points = builtin_kinds() if entry_points is None else entry_points
    return [kind_of(tree, name, target) for name, target in points.items()]


def undocumented_fields(found: list[Kind]) -> list[str]:
    """The fields of ``found`` without help, each once, named where the help goes:
    ``noether_plugins.ema.EmaCallback.Config.target_factors``."""
    return sorted({f"{f.owner}.{f.name}" for kind in found for f in kind.fields if not f.help})


# ------------------------------------------------------------------------------------ the page


# a code span, ``x`` or `x`: the table extension keeps the pipes inside one
_CODE_SPAN = re.compile(r"(``.+?``|`[^`]+`)")


def _cell(text: str) -> str:
    """``text`` on one line, fit for a table cell: pipes outside code spans escaped."""
    parts = _CODE_SPAN.split(" ".join(text.split()))
    return "".join(part if i % 2 else part.replace("|", "\\|") for i, part in enumerate(parts))


def _code(text: str) -> str:
    return f"`{' '.join(text.split())}`"


def kind_summary(kind: Kind) -> str:
    """The first paragraph of the kind's docstring, less a leading ``Kind:`` (a module's docstring opens
    with the kind it registers as)."""
    text = static_source.summary(kind.docstring)
    rest = re.sub(rf"^(``)?{re.escape(kind.name)}(``)?:\s*", "", text)
    return rest[:1].upper() + rest[1:]


def _table(fields: tuple[ConfigField, ...]) -> list[str]:
    rows = ["| field | type | default | help |", "|---|---|---|---|"]
    for f in fields:
        default = "required" if f.default is None else _code(f.default)
        rows.append(f"| `{f.name}` | {_code(f.type)} | {default} | {_cell(f.help or '')} |")
    return rows


def manual_sections(folder: Path = MANUAL) -> dict[str, str]:
    """kind -> the manual's section about it (``callbacks/evaluation.md#metricearlystopper``)."""
    out = {}
    for page in sorted(folder.glob("*.md")):
        for match in re.finditer(r"(?m)^## (\w+)$", page.read_text(encoding="utf-8")):
            out[match[1]] = f"{page.parent.name}/{page.name}#{match[1].lower()}"
    return out


def reference_markdown(found: list[Kind], every: tuple[ConfigField, ...], manual: dict[str, str]) -> str:
    """The page: a table of the kinds, the fields ``every`` entry has, then one section per kind with its
    own fields and a link to its section of the manual, where ``manual`` has one."""
    lines = ["| kind | what it does |", "|---|---|"]
    for k in found:
        lines.append(f"| [`{k.name}`](#{k.name.lower()}) | {_cell(kind_summary(k))} |")
    lines += [
        "",
        "## Fields every entry has",
        "",
        "Every entry, of any kind, has the fields of `noether_core.CallbackConfig`, which each kind's",
        "`Config` extends.",
        "",
        *_table(every),
        "",
    ]
    for k in found:
        where = f"`kind: {k.name}` · plugin `{k.target}` · config `{k.config}`"
        extends = [f"`{b.qualname}`" for b in k.extends if (b.module, b.qualname) != BASE_CONFIG]
        if extends:
            where += f" (extends {', '.join(extends)})"
        if k.name in manual:
            where += f" · [manual](../{manual[k.name]})"
        lines += [f"## `{k.name}`", "", kind_summary(k), "", where, ""]
        if k.own_fields:
            lines += [*_table(k.own_fields), "", f"And the [fields every entry has]({EVERY}).", ""]
        else:
            lines += [f"No fields of its own: only the [fields every entry has]({EVERY}).", ""]
    return "\n".join(lines)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    tree = SourceTree()
    every = config_fields(tree, ClassRef(*BASE_CONFIG))
    return markdown.replace(MARKER, reference_markdown(kinds(tree), every, manual_sections()))
