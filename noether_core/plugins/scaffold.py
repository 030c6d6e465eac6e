"""``noether plugins new NAME``: a new plugin distribution, ready to install, test and publish.

``NAME`` is the distribution name (``noether-gradient-tools``). The package is its lower-case
identifier form (``noether_gradient_tools``), and the class plugin is named after its CamelCase form
(``NoetherGradientToolsCounter``). The written package holds one plugin of each shape, both with a
``Config`` and state, registered under the ``noether.callbacks`` entry-point group, and a test that
trains a tiny run with both enabled by name.

The files are the templates in ``scaffold_templates/``, filled in with :class:`string.Template`:
``$name`` placeholders leave the braces of the Python, TOML and YAML in them alone.
"""

from __future__ import annotations

import keyword
import re
import shlex
import string
import sys
from importlib import resources
from pathlib import Path

import attrs

from noether_core.errors import EXIT_OK, UsageError

#: What a new distribution holds: ``(path, template)``; ``{package}`` in a path is the package's name,
#: and a file without a template is empty.
FILES: tuple[tuple[str, str | None], ...] = (
    ("pyproject.toml", "pyproject.toml.tmpl"),
    ("README.md", "README.md.tmpl"),
    (".gitignore", "gitignore.tmpl"),
    ("{package}/__init__.py", "package_init.py.tmpl"),
    ("{package}/py.typed", None),
    ("{package}/counter.py", "counter.py.tmpl"),
    ("{package}/heartbeat.py", "heartbeat.py.tmpl"),
    ("tests/test_plugins.py", "test_plugins.py.tmpl"),
)

# PEP 508's distribution names; spaces are allowed in NAME too, and become '-'
_DISTRIBUTION = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_SEPARATOR_RUN = re.compile(r"[-_.\s]+")
# a package of these names would shadow noether itself, or clash with the package's tests folder
_TAKEN = frozenset({"noether", "noether_core", "noether_plugins", "test", "tests"})


@attrs.frozen
class PluginNames:
    """The names a new plugin distribution is made of."""

    #: As pip knows it: ``noether-gradient-tools``; also the name of the folder it is written to.
    distribution: str
    #: The Python package: ``noether_gradient_tools``.
    package: str
    #: CamelCase, for class names: ``NoetherGradientTools``.
    prefix: str

    @property
    def counter(self) -> str:
        """The class plugin, its kind and its class name: ``NoetherGradientToolsCounter``."""
        return f"{self.prefix}Counter"

    @property
    def heartbeat(self) -> str:
        """The kind of the module of functions: ``noether_gradient_tools_heartbeat``."""
        return f"{self.package}_heartbeat"

    @classmethod
    def from_name(cls, name: str) -> PluginNames:
        """The names for ``NAME``; :class:`~noether_core.UsageError` when it makes no valid package."""
        distribution = re.sub(r"[-_.]*\s[-_.\s]*", "-", name.strip())
        if not _DISTRIBUTION.fullmatch(distribution):
            raise UsageError(
                f"cannot name a plugin distribution {name!r}: use ASCII letters, digits, '-', '_', '.' "
                "or spaces, starting and ending with a letter or digit"
            )
        parts = _SEPARATOR_RUN.split(distribution)
        package = "_".join(parts).lower()
        problem = None
        if not package[0].isalpha():
            problem = "does not start with a letter"
        elif keyword.iskeyword(package):
            problem = "is a Python keyword"
        elif package in sys.stdlib_module_names:
            problem = "would hide the standard library's module of that name"
        elif package in _TAKEN:
            problem = "is taken by noether or by the package's tests folder"
        if problem is not None:
            raise UsageError(
                f"cannot make a plugin package of {name!r}: its package name {package!r} {problem}; "
                "choose another NAME"
            )
        # a part the user capitalised keeps its capitals: MyPlugins gives MyPluginsCounter
        prefix = "".join(part[:1].upper() + part[1:] for part in parts)
        return cls(distribution=distribution, package=package, prefix=prefix)


@attrs.frozen
class NewPackage:
    """A distribution :func:`create` wrote."""

    names: PluginNames
    #: The folder it is in: ``--dir`` / distribution name.
    root: Path
    #: Its files, relative to :attr:`root`, in the order written.
    files: tuple[Path, ...]


def create(name: str, parent: Path) -> NewPackage:
    """Write the plugin distribution ``name`` into ``parent/<distribution>``.

    Refuses (:class:`~noether_core.UsageError`) a name that makes no valid package, and a folder that
    exists and is not empty: nothing of the user's is ever overwritten.
    """
    names = PluginNames.from_name(name)
    root = parent / names.distribution
    if root.exists() and not root.is_dir():
        raise UsageError(f"cannot create the plugin package: {root} is a file; choose another NAME or --dir")
    if root.is_dir() and any(root.iterdir()):
        raise UsageError(
            f"cannot create the plugin package: {root} exists and is not empty; choose another NAME or --dir"
        )
    values = {
        "distribution": names.distribution,
        "package": names.package,
        "counter": names.counter,
        "heartbeat": names.heartbeat,
    }
    templates = resources.files("noether_core.plugins").joinpath("scaffold_templates")
    written: list[Path] = []
    for pattern, template in FILES:
        relative = Path(pattern.format(package=names.package))
        text = ""
        if template is not None:
            source = templates.joinpath(template).read_text(encoding="utf-8")
            text = string.Template(source).substitute(values)
        path = root / relative
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="\n")
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
        written.append(relative)
    return NewPackage(names=names, root=root, files=tuple(written))


def new_plugin_command(name: str, parent: Path) -> int:
    """``noether plugins new NAME --dir PARENT``: write the package, say what was written and what next."""
    new = create(name, parent)
    names = new.names
    print(f"wrote the plugin distribution {names.distribution} (package {names.package}) to {new.root}/:")
    notes = {
        Path("pyproject.toml"): "metadata; the entry points name both kinds",
        Path(names.package, "counter.py"): f"kind {names.counter}: a class plugin",
        Path(names.package, "heartbeat.py"): f"kind {names.heartbeat}: a module of functions",
        Path("tests", "test_plugins.py"): "a short training run with both enabled by name",
    }
    width = max(len(str(f)) for f in new.files)
    for relative in new.files:
        note = notes.get(relative)
        print(f"  {relative!s:<{width}}  {note}" if note else f"  {relative}")
    print("next, in the environment that has noether:")
    print(f"  cd {shlex.quote(str(new.root))}")
    print("  pip install -e '.[test]'")
    print(f"  noether plugins list      # lists {names.counter} and {names.heartbeat}")
    print("  python -m pytest")
    return EXIT_OK


__all__ = ["FILES", "NewPackage", "PluginNames", "create", "new_plugin_command"]
