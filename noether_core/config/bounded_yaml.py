"""Reading a config with bounded work, whatever the file holds.

A config is small; a hostile or broken one must fail fast and clearly rather than hang or crash with a
``RecursionError``. The limits (:data:`LIMITS`):

* **size**: at most ``max_bytes`` bytes are read (``/dev/zero`` as a config is refused, not read);
* **encoding**: UTF-8 (a UTF-8 byte-order mark is allowed); another encoding, an invalid byte or a
  control character (NUL included) is named with its byte offset, line and column;
* **depth**: values nested at most ``max_depth`` levels (the top-level mapping is level 1);
* **values**: at most ``max_values`` keys and values in all, counted with every alias expanded. An
  alias costs what it refers to, computed once per node, so an "anchor bomb" (nine aliases of nine
  aliases of ...) is refused after reading it once instead of being walked a billion times. A
  recursive alias (a node that contains an alias of itself) is refused too;
* **duplicate keys** in a mapping are an error naming the key's path and both lines (YAML requires
  unique keys; PyYAML silently keeps the last one).

The parsed document is a tree: an aliased node becomes a copy per place it is used, so ``--set`` on
one of them changes only that place. :func:`bounded_tree` applies the same depth and size limits to
documents that do not come from YAML (a mapping given to ``noether_core.train``, the result of
``--set``).
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from noether_core.errors import ConfigError, ConfigIssue, UsageError


@attrs.frozen
class ConfigLimits:
    """How large a config may be. See the module documentation."""

    max_bytes: int = 1 << 18
    max_depth: int = 100
    max_values: int = 50_000


#: The limits every config is read with.
LIMITS = ConfigLimits()


def _join(path: str, part: str | int | None) -> str:
    if part is None:
        return path
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else part


def _short(path: str) -> str:
    """A path as messages show it: a very deep one is cut in the middle."""
    return path if len(path) <= 80 else f"{path[:40]}...{path[-30:]}"


def _where(mark: yaml.Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"


def _key_text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Refused(Exception):
    """A limit was crossed while reading; carries the issues to report."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__(issues)
        self.issues = issues


_PLAIN_KEY_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null"))


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts while it composes: depth, expanded size (memoized per node, so an
    alias is costed once), recursive aliases and duplicate keys."""

    def __init__(self, stream: str, limits: ConfigLimits) -> None:
        super().__init__(stream)
        self._limits = limits
        self._depth = 0
        self._path: list[str] = [""]
        # id(node) -> (values it expands to, its height); the nodes stay alive in the document
        self._cost: dict[int, tuple[int, int]] = {}
        self.duplicates: list[ConfigIssue] = []

    def _refuse(self, message: str) -> _Refused:
        return _Refused([ConfigIssue(_short(self._path[-1]), message)])

    def _mark(self) -> yaml.Mark | None:
        """Where the next event starts."""
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        return event.start_mark  # type: ignore[no-any-return]

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if isinstance(parent, MappingNode):
            part: str | int | None = _key_text(index.value) if isinstance(index, ScalarNode) else None
        elif isinstance(parent, SequenceNode):
            part = int(index)
        else:
            part = None
        path = _join(self._path[-1], part)
        if self.check_event(yaml.AliasEvent):
            mark = self._mark()
            node: Node = super().compose_node(parent, index)  # type: ignore[assignment]
            cost = self._cost.get(id(node))
            if cost is None:
                self._path.append(path)
                raise self._refuse(f"the alias at {_where(mark)} refers to a value that contains it")
            if self._depth + cost[1] > self._limits.max_depth:
                self._path.append(path)
                raise self._refuse(
                    f"the alias at {_where(mark)} nests values more than {self._limits.max_depth} levels deep"
                )
            return node
        self._depth += 1
        self._path.append(path)
        try:
            if self._depth > self._limits.max_depth:
                mark = self._mark()
                raise self._refuse(
                    f"values are nested more than {self._limits.max_depth} levels deep (at {_where(mark)})"
                )
            node = super().compose_node(parent, index)  # type: ignore[assignment]
            if isinstance(node, MappingNode):
                children = [n for pair in node.value for n in pair]
            elif isinstance(node, SequenceNode):
                children = list(node.value)
            else:
                children = []
            costs = [self._cost[id(child)] for child in children]
            size = 1 + sum(c[0] for c in costs)
            height = 1 + max((c[1] for c in costs), default=0)
            if size > self._limits.max_values:
                raise self._refuse(
                    f"the config holds more than {self._limits.max_values} values (aliases expanded; "
                    f"at {_where(node.start_mark)})"
                )
            self._cost[id(node)] = (size, height)
            return node
        finally:
            self._depth -= 1
            self._path.pop()

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        node: MappingNode = super().compose_mapping_node(anchor)
        seen: dict[Any, Node] = {}
        for key, _ in node.value:
            # only plain scalars: constructing anything else here would change how it fails later
            if not isinstance(key, ScalarNode) or key.tag not in _PLAIN_KEY_TAGS:
                continue
            try:
                value = self.construct_object(key)
                hash(value)
            except (yaml.YAMLError, TypeError):  # construction reports it with its position
                continue
            if value in seen:
                first = seen[value]
                self.duplicates.append(
                    ConfigIssue(
                        _join(self._path[-1], _key_text(key.value)),
                        f"duplicate key at {_where(key.start_mark)} (first at {_where(first.start_mark)}); "
                        "a key may appear once per mapping",
                    )
                )
            else:
                seen[value] = key
        return node


def decode_config(data: bytes, source: str, limits: ConfigLimits = LIMITS) -> str:
    """``data`` (a config file's bytes) as text, or :class:`ConfigError` naming what is wrong: too large,
    not UTF-8 (with the byte offset), a control character."""
    if len(data) > limits.max_bytes:
        raise ConfigError(
            [ConfigIssue("", f"the file is larger than {limits.max_bytes} bytes, the limit for a config")],
            source,
        )
    for bom, name in (
        (codecs.BOM_UTF32_LE, "UTF-32"),
        (codecs.BOM_UTF32_BE, "UTF-32"),
        (codecs.BOM_UTF16_LE, "UTF-16"),
        (codecs.BOM_UTF16_BE, "UTF-16"),
    ):
        if data.startswith(bom):
            raise ConfigError(
                [ConfigIssue("", f"the file is {name} (it starts with a byte-order mark); save it as UTF-8")],
                source,
            )
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1]
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            [
                ConfigIssue(
                    "",
                    f"the file is not valid UTF-8: byte 0x{bad.hex()} at offset {exc.start} "
                    f"(line {line}, column {column}); save it as UTF-8",
                )
            ],
            source,
        ) from None
    return text


def _check_characters(text: str, source: str) -> None:
    match = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if match is not None:
        char = match.group()
        offset = len(text[: match.start()].encode("utf-8"))
        line = text.count("\n", 0, match.start()) + 1
        column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
        raise ConfigError(
            [
                ConfigIssue(
                    "",
                    f"control character U+{ord(char):04X} at byte offset {offset} (line {line}, "
                    f"column {column}); YAML allows only printable characters",
                )
            ],
            source,
        )


def load_yaml(text: str, source: str, limits: ConfigLimits = LIMITS) -> Any:
    """Parse one YAML document with ``yaml.SafeLoader`` semantics and the limits above; the result is a
    tree (no shared or recursive values). Raises :class:`ConfigError` naming the line and column of a
    syntax error, or the path of a value past a limit."""
    if len(text) > limits.max_bytes:  # characters: at least as many bytes
        raise ConfigError(
            [ConfigIssue("", f"the text is larger than {limits.max_bytes} bytes, the limit for a config")],
            source,
        )
    _check_characters(text, source)
    loader = _BoundedLoader(text, limits)
    try:
        document = loader.get_single_data()
    except _Refused as exc:
        raise ConfigError(exc.issues, source) from None
    except yaml.constructor.ConstructorError as exc:
        # a tag safe_load does not construct (!!python/object, a custom !tag): never code, only data
        where = _where(exc.problem_mark or exc.context_mark)
        problem = exc.problem or "cannot construct it"
        if "tag" in problem:
            problem += " (configs hold plain data: no !!python or custom tags)"
        raise ConfigError(
            [ConfigIssue("", f"cannot construct a value at {where}: {problem}")], source
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "cannot parse"
        if exc.context and exc.problem:
            ctx = exc.context_mark
            since = f" started at {_where(ctx)}" if ctx is not None else ""
            problem = f"{exc.problem} ({exc.context}{since})"
        raise ConfigError(
            [ConfigIssue("", f"YAML syntax error at {_where(mark)}: {problem}")], source
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue("", f"YAML error: {exc}")], source) from None
    except (ValueError, OverflowError) as exc:  # a scalar YAML resolves but Python cannot hold: 2024-13-45
        raise ConfigError([ConfigIssue("", f"cannot read a value: {exc}")], source) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError(loader.duplicates, source)
    return bounded_tree(document, source, limits)


def read_config_file(path: Path, limits: ConfigLimits = LIMITS) -> Any:
    """:func:`load_yaml` of a file, reading at most ``max_bytes + 1`` bytes of it."""
    try:
        with path.open("rb") as file:
            data = file.read(limits.max_bytes + 1)
    except FileNotFoundError:
        raise UsageError(f"config file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"config file {str(path)!r} is a directory") from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
    return load_yaml(decode_config(data, str(path), limits), str(path), limits)


def bounded_tree(value: Any, source: str | None, limits: ConfigLimits = LIMITS) -> Any:
    """A copy of ``value`` in which no mapping or list appears twice (aliases become copies; tuples
    become lists), or :class:`ConfigError` when it is nested deeper than ``max_depth``, holds more than
    ``max_values`` keys and values, or contains itself. Iterative: any depth is safe to pass."""
    count = 0
    holder: list[Any] = [None]
    # (value, where to put its copy, key there, depth, path, ids of the containers above it)
    stack: list[tuple[Any, Any, Any, int, str, tuple[int, ...]]] = [(value, holder, 0, 1, "", ())]
    while stack:
        item, into, key, depth, path, above = stack.pop()
        count += 1
        if count > limits.max_values:
            raise ConfigError(
                [ConfigIssue(path, f"the config holds more than {limits.max_values} values")], source
            )
        if depth > limits.max_depth:
            raise ConfigError(
                [ConfigIssue(_short(path), f"values are nested more than {limits.max_depth} levels deep")],
                source,
            )
        if isinstance(item, (Mapping, list, tuple)):
            if id(item) in above:
                raise ConfigError([ConfigIssue(path, "this value contains itself")], source)
            inner = (*above, id(item))
            if isinstance(item, Mapping):
                copy: dict[Any, Any] | list[Any] = {}
                children: list[tuple[Any, Any, str]] = []
                for k, v in item.items():
                    count += 1  # the key
                    copy[k] = None
                    children.append((k, v, _join(path, _key_text(k))))
            else:
                copy = [None] * len(item)
                children = [(i, v, _join(path, i)) for i, v in enumerate(item)]
            into[key] = copy
            for k, v, child_path in reversed(children):
                stack.append((v, copy, k, depth + 1, child_path, inner))
        else:
            into[key] = item
    return holder[0]


__all__ = ["LIMITS", "ConfigLimits", "bounded_tree", "decode_config", "load_yaml", "read_config_file"]
