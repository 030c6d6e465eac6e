"""YAML -> :class:`RunConfig`, with every problem reported at once, one line each, with its path.

One cattrs converter (:func:`make_converter`) does the structuring. Scalars are strict (``3.7`` is not
an int, ``"false"`` is not a bool), unknown fields are rejected with a "did you mean", and each
``callbacks`` entry is structured into the ``Config`` class of the plugin its ``kind`` names. Field
validators (attrs) run in a second pass so that all of them report, not only the first of each class.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

try:
    from cattrs.cols import list_structure_factory, mapping_structure_factory
except ImportError:  # cattrs < 24.1: the converter's own list and dict structuring

    def list_structure_factory(type: Any, converter: cattrs.Converter) -> Any:  # type: ignore[misc]
        return converter._structure_list  # type: ignore[attr-defined]

    def mapping_structure_factory(type: Any, converter: cattrs.Converter) -> Any:  # type: ignore[misc]
        return converter._structure_dict


from noether_core.config.bounded_yaml import LIMITS, bounded_tree, load_yaml, read_config_file
from noether_core.config.durations import Duration, as_yaml_read_it
from noether_core.config.schema import CallbackConfig, ParamGroupConfig, RunConfig, nested_entries
from noether_core.errors import ConfigError, ConfigIssue, PluginLoadError, UnknownKindError, UsageError
from noether_core.lookup import did_you_mean
from noether_core.plugins.registry import PluginRegistry
from noether_core.plugins.scheduling import INTERVAL_FIELDS


def _origin(type_: Any) -> Any:
    """``typing.get_origin``, typed for comparisons (``_origin(t) is list``)."""
    return get_origin(type_)


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


_EXPONENT_WITHOUT_DOT = re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$")


def _string_hint(value: Any, expected: type) -> str:
    """Why a string that reads like a number or bool is one: quotes, or YAML 1.1's exponent rule."""
    if not isinstance(value, str):
        return ""
    if expected is float and _EXPONENT_WITHOUT_DOT.match(value.strip()):
        mantissa, _, exponent = value.strip().lower().partition("e")
        return f"; YAML reads an exponent without a dot as a string, write {mantissa}.0e{exponent}"
    try:
        parsed = load_yaml(value, "<value>")
    except ConfigError:
        return ""
    if isinstance(parsed, expected) and (expected is bool or not isinstance(parsed, bool)):
        return "; remove the quotes"
    if expected is float and isinstance(parsed, int) and not isinstance(parsed, bool):
        return "; remove the quotes"
    return ""


#: Every int of a config fits in 64 bits: it may reach torch, NumPy or C code, which would overflow.
INT_RANGE = (-(2**63), 2**63 - 1)


def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected int, got {_show(value)}{_string_hint(value, int)}")
    if not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise ValueError(f"expected an int between -2**63 and 2**63-1, got {_show(value)}")
    return value


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected number, got {_show(value)}{_string_hint(value, float)}")
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        raise ValueError(f"expected a number a float can hold, got {_show(value)}") from None


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected string, got {_show(value)}")
    return value


def _duration(value: Any, _: type) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 2**63:
        # YAML 1.1 reads an unquoted 2:30:00 as 9000 (base 60): say so instead of taking it as seconds
        shown = as_yaml_read_it(value)
        raise TypeError(
            f'expected a string "HH:MM:SS", got {_show(value)}; YAML reads an unquoted {shown} as the '
            f"number {value}: write it in quotes, {shown!r}"
        )
    return _strict_str(value, str)


def _bool_or_strings(value: Any, _: Any) -> bool | list[str]:
    """``true``, ``false`` or a list of strings (``trainer.add_default_callbacks``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, list):
        return [_strict_str(item, str) for item in value]
    raise TypeError(f"expected true, false or a list of kinds, got {_show(value)}{_string_hint(value, bool)}")


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected bool (true/false), got {_show(value)}{_string_hint(value, bool)}")
    return value


def _structure_literal(value: Any, type_: Any) -> Any:
    allowed = get_args(type_)
    if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
        close = did_you_mean(value, [str(a) for a in allowed]) if isinstance(value, str) else ""
        hint = f"; {close}" if close else ""
        raise ValueError(f"expected one of {', '.join(repr(a) for a in allowed)}, got {_show(value)}{hint}")
    return value


_CONVERTERS: weakref.WeakKeyDictionary[PluginRegistry, cattrs.Converter] = weakref.WeakKeyDictionary()


def make_converter(registry: PluginRegistry) -> cattrs.Converter:
    """The converter for run configs; each ``callbacks`` entry's ``kind`` is looked up in ``registry``.

    Built once per registry (a process has one: the CLI's); building one generates a structuring
    function per config class, which is worth doing once.
    """
    conv = _CONVERTERS.get(registry)
    if conv is None:
        conv = _CONVERTERS[registry] = _build_converter(registry)
    return conv


def _build_converter(registry: PluginRegistry) -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(Duration, _duration)
    conv.register_structure_hook_func(lambda t: _origin(t) is Literal, _structure_literal)
    conv.register_structure_hook_func(lambda t: t == bool | list[str], _bool_or_strings)
    _register_shape_checks(conv)

    entry_structurers: dict[type[CallbackConfig], Any] = {}

    def structurer(cls: type[CallbackConfig]) -> Any:
        # generated per class: a hook registered for CallbackConfig would also catch its subclasses
        if cls not in entry_structurers:
            entry_structurers[cls] = cattrs.gen.make_dict_structure_fn(
                cls, conv, _cattrs_forbid_extra_keys=True
            )
        return entry_structurers[cls]

    def structure_entry(raw: Any, _: type) -> CallbackConfig:
        if not isinstance(raw, Mapping):
            raise TypeError(f"expected a mapping with a 'kind', got {_show(raw)}")
        if "kind" not in raw:
            raise _Missing("kind")
        kind = _strict_str(raw["kind"], str)
        plugin = registry.load(kind)
        data = dict(raw)
        data["kind"] = plugin.kind
        if any(f in raw for f in INTERVAL_FIELDS):
            # an interval the user sets replaces the one a plugin's Config defaults to
            for f in INTERVAL_FIELDS:
                data.setdefault(f, None)
        entry: CallbackConfig = structurer(plugin.config_class)(data, plugin.config_class)
        return entry

    conv.register_structure_hook(CallbackConfig, structure_entry)
    conv.register_unstructure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, CallbackConfig),
        lambda obj: {
            a.name: conv.unstructure(getattr(obj, a.name), a.type if a.type is not None else Any)
            for a in attrs.fields(type(obj))
        },
    )
    return conv


def _shape_checked(hook: Any, accepts: Any, expected: str) -> Any:
    def structure(value: Any, type_: Any) -> Any:
        if not isinstance(value, accepts):
            raise TypeError(f"expected {expected}, got {_show(value)}")
        return hook(value, type_)

    return structure


def _register_shape_checks(conv: cattrs.Converter) -> None:
    """A section, list or mapping of the wrong shape is named as such, instead of failing inside cattrs
    (``'str' object has no attribute 'keys'``) or being taken apart (a string as a list of characters)."""

    def is_section(t: Any) -> bool:
        # callbacks entries have their own hook (structure_entry), which checks the shape itself
        return attrs.has(t) and not (isinstance(t, type) and issubclass(t, CallbackConfig))

    conv.register_structure_hook_factory(
        is_section,
        lambda t: _shape_checked(cattrs.gen.make_dict_structure_fn(t, conv), Mapping, "a mapping of fields"),
    )
    conv.register_structure_hook_factory(
        lambda t: _origin(t) is list,
        lambda t: _shape_checked(list_structure_factory(t, conv), list, "a list"),
    )
    conv.register_structure_hook_factory(
        lambda t: _origin(t) is dict,
        lambda t: _shape_checked(mapping_structure_factory(t, conv), Mapping, "a mapping"),
    )

    def structure_tuple(value: Any, type_: Any) -> tuple[Any, ...]:
        args = get_args(type_)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list of {len(args)} items, got {_show(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        if len(value) != len(args):
            raise ValueError(f"expected a list of {len(args)} items, got {len(value)}: {_show(list(value))}")
        return tuple(conv.structure(item, arg) for item, arg in zip(value, args, strict=True))

    conv.register_structure_hook_func(lambda t: _origin(t) is tuple, structure_tuple)

    group_fields = _shape_checked(
        cattrs.gen.make_dict_structure_fn(ParamGroupConfig, conv), Mapping, "a mapping of fields"
    )

    def structure_param_group(value: Any, type_: Any) -> ParamGroupConfig:
        # one pattern may be written without a list around it
        if isinstance(value, Mapping) and "params" in value:
            params = value["params"]
            if isinstance(params, str):
                value = {**value, "params": [params]}
            elif not isinstance(params, list):
                problem = TypeError(f"expected a pattern or a list of patterns, got {_show(params)}")
                problem.__notes__ = [AttributeValidationNote("params", "params", list[str])]
                raise ClassValidationError("structuring ParamGroupConfig", [problem], ParamGroupConfig)
        return group_fields(value, type_)  # type: ignore[no-any-return]

    conv.register_structure_hook(ParamGroupConfig, structure_param_group)


class _Missing(KeyError):
    """A required key of a mapping cattrs does not structure itself."""


# ---------------------------------------------------------------------------------------------- errors


def _join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else str(part)


def _child_path(exc: BaseException, path: str) -> str:
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, AttributeValidationNote):
            return _join(path, note.name)
        if isinstance(note, IterableValidationNote):
            return _join(path, note.index)
    return path


def _field_names(cls: Any) -> list[str]:
    return [a.name for a in attrs.fields(cls)] if attrs.has(cls) else []


def _walk(
    exc: BaseException, path: str, issues: list[ConfigIssue], plugin_errors: list[PluginLoadError]
) -> None:
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        for sub in exc.exceptions:
            _walk(sub, _child_path(sub, path), issues, plugin_errors)
    elif isinstance(exc, ForbiddenExtraKeysError):
        known = _field_names(exc.cl)
        for extra in sorted(map(str, exc.extra_fields)):  # YAML keys may be ints, bools, None
            hint = did_you_mean(extra, known) or f"known fields: {', '.join(known)}"
            issues.append(ConfigIssue(_join(path, extra), f"unknown field; {hint}"))
    elif isinstance(exc, UnknownKindError):
        issues.append(ConfigIssue(_join(path, "kind"), f"unknown kind {exc.kind!r}: {exc.reason}"))
    elif isinstance(exc, PluginLoadError):
        plugin_errors.append(exc)
    elif isinstance(exc, _Missing):
        issues.append(ConfigIssue(_join(path, exc.args[0]), "required field missing"))
    elif isinstance(exc, KeyError):
        issues.append(ConfigIssue(path, "required field missing"))
    else:
        issues.append(ConfigIssue(path, _tidy(str(exc))))


_ATTRS_MSG = re.compile(r"^'(?P<name>\w+)' must be (?P<rule>.*): (?P<got>.*)$", re.S)


def _tidy(message: str) -> str:
    """attrs says ``'x' must be >= 1: 0``; the path already names the field."""
    m = _ATTRS_MSG.match(message)
    if m:
        return f"must be {m['rule']}, got {m['got']}"
    if message.startswith("Length of '"):
        return "must not be empty"
    return message


def _run_validators(obj: Any, path: str, issues: list[ConfigIssue]) -> None:
    """Run every attrs field validator of ``obj`` and its children, collecting instead of stopping."""
    if attrs.has(type(obj)):
        for field in attrs.fields(type(obj)):
            value = getattr(obj, field.name)
            if field.validator is not None:
                try:
                    field.validator(obj, field, value)
                except (ValueError, TypeError) as exc:
                    issues.append(ConfigIssue(_join(path, field.name), _tidy(str(exc))))
                    continue
            _run_validators(value, _join(path, field.name), issues)
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _run_validators(item, _join(path, i), issues)
    elif isinstance(obj, dict):
        for key, item in obj.items():
            _run_validators(item, _join(path, str(key)), issues)


def _check_entries(
    entries: Iterable[tuple[str, CallbackConfig]], registry: PluginRegistry, issues: list[ConfigIssue]
) -> None:
    seen: dict[str, str] = {}
    for path, entry in entries:
        plugin = registry.load(entry.kind)
        set_fields = [f for f in INTERVAL_FIELDS if getattr(entry, f) is not None]
        if len(set_fields) > 1:
            issues.append(
                ConfigIssue(
                    path, f"set exactly one of {', '.join(INTERVAL_FIELDS)}; got {', '.join(set_fields)}"
                )
            )
        elif plugin.scheduled and not set_fields:
            issues.append(
                ConfigIssue(
                    path,
                    f"{entry.kind!r} runs periodically (it implements at_eval): "
                    f"set exactly one of {', '.join(INTERVAL_FIELDS)}",
                )
            )
        elif not plugin.scheduled and set_fields:
            issues.append(
                ConfigIssue(
                    _join(path, set_fields[0]),
                    f"{entry.kind!r} is not periodic (it does not implement at_eval), "
                    "so an interval has no effect; remove it",
                )
            )
        if entry.eval_at_end and not plugin.scheduled:
            issues.append(
                ConfigIssue(_join(path, "eval_at_end"), f"{entry.kind} has no at_eval to run at the end")
            )
        if entry.name is not None and entry.id is not None and entry.name != entry.id:
            issues.append(
                ConfigIssue(path, f"name {entry.name!r} and id {entry.id!r} disagree; set only name")
            )
        explicit = entry.name or entry.id
        key = entry.key
        if key in seen and (explicit is not None or plugin.stateful):
            issues.append(
                ConfigIssue(
                    _join(path, "name") if explicit is not None else path,
                    f"the name {key!r} is already used by {seen[key]}; give each entry a unique 'name'"
                    + (" (its state is saved under that name)" if plugin.stateful else ""),
                )
            )
        seen.setdefault(key, path)


_FAILED = object()


def _check_parts(raw: Any, type_: Any, path: str, conv: cattrs.Converter, issues: list[ConfigIssue]) -> Any:
    """After a failed structure: structure the parts of ``raw`` that can be structured on their own
    and run their validators, so that a range mistake is reported together with a type mistake
    elsewhere instead of only once that is fixed. Returns the structured value, or ``_FAILED``.
    Structuring problems are not reported here (the first pass did); ``callbacks`` entries are
    structured whole (their ``Config`` class depends on their kind)."""
    try:
        value = conv.structure(raw, type_)
    except Exception:
        value = _FAILED
    if value is not _FAILED:
        _run_validators(value, path, issues)
        return value
    optional = [a for a in get_args(type_) if a is not type(None)]
    if type(None) in get_args(type_) and len(optional) == 1 and raw is not None:
        return _check_parts(raw, optional[0], path, conv, issues)
    if isinstance(type_, type) and issubclass(type_, CallbackConfig):
        return _FAILED
    if attrs.has(type_) and isinstance(raw, Mapping):
        attrs.resolve_types(type_)
        for field in attrs.fields(type_):
            if field.name not in raw:
                continue
            child = _join(path, field.name)
            part = _check_parts(raw[field.name], field.type, child, conv, issues)
            if part is not _FAILED and field.validator is not None:
                try:
                    field.validator(None, field, part)  # the schema's validators look at the value only
                except (ValueError, TypeError) as exc:
                    issues.append(ConfigIssue(child, _tidy(str(exc))))
                except Exception:  # a validator that needs the instance: the second pass runs it
                    pass
    elif _origin(type_) is list and isinstance(raw, list):
        for i, item in enumerate(raw):
            _check_parts(item, get_args(type_)[0], _join(path, i), conv, issues)
    elif _origin(type_) is dict and isinstance(raw, Mapping):
        for key, item in raw.items():
            _check_parts(item, get_args(type_)[1], _join(path, str(key)), conv, issues)
    return _FAILED


def _structured_entries(raw: Mapping[str, Any], conv: cattrs.Converter) -> list[tuple[int, CallbackConfig]]:
    """The ``callbacks`` entries that structure on their own, with their list indices."""
    out: list[tuple[int, CallbackConfig]] = []
    if isinstance(raw.get("callbacks"), list):
        for i, item in enumerate(raw["callbacks"]):
            try:
                out.append((i, conv.structure(item, CallbackConfig)))
            except Exception:  # reported by the first pass
                continue
    return out


_SECTION = re.compile(r"([^.\[]*)(?:\[(\d+)\])?")


def _file_order(issue: ConfigIssue) -> tuple[int, int]:
    """Sections in schema order, then ``callbacks`` entries by index (issues are found in two passes)."""
    sections = [f.name for f in attrs.fields(RunConfig)]
    m = _SECTION.match(issue.path)
    head, index = (m[1], m[2]) if m else ("", None)
    rank = -1 if not head else sections.index(head) if head in sections else len(sections)
    return rank, int(index) if index is not None else -1


def structure_config(
    raw: Any,
    registry: PluginRegistry,
    *,
    source: str | None = None,
) -> RunConfig:
    """Structure a YAML document into a :class:`RunConfig`, or raise with every problem listed.

    Raises :class:`ConfigError` (exit status 2) for config mistakes and :class:`PluginLoadError`
    (exit status 3) when a plugin the config names cannot be imported.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError([ConfigIssue("", f"a config is a mapping of sections, got {_show(raw)}")], source)
    # `callbacks:` with nothing after it is YAML's null; a user means "none"
    raw = {
        k: ([] if v is None and k in ("callbacks", "tracker") else {} if v is None and k == "datasets" else v)
        for k, v in raw.items()
    }
    conv = make_converter(registry)
    issues: list[ConfigIssue] = []
    plugin_errors: list[PluginLoadError] = []
    config: RunConfig | None = None
    with attrs.validators.disabled():
        try:
            config = conv.structure(raw, RunConfig)
        except Exception as exc:  # every structuring problem is turned into issues below
            _walk(exc, "", issues, plugin_errors)
    if plugin_errors:
        raise plugin_errors[0]
    if config is None:
        with attrs.validators.disabled():
            _check_parts(raw, RunConfig, "", conv, issues)
            entries = _structured_entries(raw, conv)
        _check_entries(nested_entries((f"callbacks[{i}]", e) for i, e in entries), registry, issues)
    else:
        _run_validators(config, "", issues)
        _check_entries(config.entries(), registry, issues)
    if issues:
        issues.sort(key=_file_order)
        raise ConfigError(issues, source)
    assert config is not None
    return config


def read_yaml(path: Path) -> Any:
    """A config file parsed with ``yaml.safe_load`` semantics and the limits of
    :mod:`noether_core.config.bounded_yaml`; a syntax error names the file, line and column."""
    return read_config_file(path)


def parse_yaml(text: str, source: str) -> Any:
    """YAML ``text`` parsed as :func:`read_yaml` parses a file."""
    return load_yaml(text, source)


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _parse_key(key: str) -> list[str | int]:
    parts: list[str | int] = []
    pos = 0
    for m in _PATH_PART.finditer(key):
        if m.start() != pos and key[pos : m.start()] != ".":
            raise UsageError(f"--set {key!r}: cannot parse the key (use a.b.c or callbacks[0].name)")
        pos = m.end()
        name, index = m.groups()
        if index is not None:
            parts.append(int(index))
        elif name.isdecimal():  # not isdigit(): "¹" is a digit that int() refuses
            parts.append(int(name))
        else:
            parts.append(name)
    if not parts or pos != len(key):
        raise UsageError(f"--set {key!r}: cannot parse the key (use a.b.c or callbacks[0].name)")
    return parts


def apply_overrides(raw: Any, overrides: Sequence[str]) -> Any:
    """Apply ``KEY=VALUE`` overrides; values are parsed as YAML (``3`` is an int, ``true`` a bool)."""
    if raw is None:
        raw = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set trainer.max_epochs=3")
        try:
            value = load_yaml(text, f"--set {key}") if text else ""
        except ConfigError as exc:
            if not any(i.message.startswith(("YAML syntax error", "YAML error")) for i in exc.issues):
                raise UsageError(f"--set {item!r}: {'; '.join(map(str, exc.issues))}") from None
            value = text  # not YAML: the text itself, as a string
        parts = _parse_key(key.strip())
        if len(parts) > LIMITS.max_depth:
            raise UsageError(f"--set {item!r}: the key is nested more than {LIMITS.max_depth} levels deep")
        node = raw
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(str(p) for p in parts[: i + 1])
            if isinstance(part, int):
                if not isinstance(node, list) or not -len(node) <= part < len(node):
                    raise UsageError(f"--set {item!r}: {where} does not exist (no list item {part})")
                if last:
                    node[part] = value
                else:
                    node = node[part]
            else:
                if not isinstance(node, dict):
                    raise UsageError(f"--set {item!r}: {where} is inside a value that is not a mapping")
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
    return raw


def load_config(
    path: Path | str | None,
    registry: PluginRegistry,
    overrides: Sequence[str] = (),
    *,
    text: str | None = None,
    document: Mapping[str, Any] | None = None,
    source: str | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> RunConfig:
    """Read, override and structure a config: the file ``path``, or YAML ``text`` (the bundled
    example), or a ``document`` already parsed (a mapping given to ``noether_core.train``; copied, never
    changed). ``edit`` may change the parsed document after the overrides, before it is structured."""
    if source is None:
        source = (
            str(path) if path is not None else "<mapping>" if document is not None else "<bundled example>"
        )
    if document is not None:
        raw: Any = bounded_tree(dict(document), source)  # a copy: the caller's mapping is never changed
    elif text is not None:
        raw = parse_yaml(text, source)
    else:
        raw = read_yaml(Path(str(path)))
    if raw is None and not overrides:
        message = (
            "the file is empty; a config needs at least 'trainer' and 'model' (see: noether config example)"
        )
        raise ConfigError([ConfigIssue("", message)], source)
    if overrides:
        raw = bounded_tree(apply_overrides(raw, overrides), source)
    if edit is not None and isinstance(raw, dict):
        edit(raw)
    return structure_config(raw, registry, source=source)


def unstructure_config(config: RunConfig, registry: PluginRegistry) -> dict[str, Any]:
    """Plain data for ``config.yaml`` of a run (plugin fields included)."""
    return _plain(make_converter(registry).unstructure(config))  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    """Tuples to lists, so ``yaml.safe_dump`` writes plain YAML."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


__all__ = [
    "apply_overrides",
    "load_config",
    "make_converter",
    "parse_yaml",
    "read_yaml",
    "structure_config",
    "unstructure_config",
]
