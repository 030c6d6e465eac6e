"""How an event reaches the entries: in list order, each entry timed, named as the owner of what it
logs, and blamed when it raises.

Two paths do the same. :func:`run_calls` is the general loop. :func:`compile_event` writes that loop
out once per run for the two events that fire on every update (``after_accumulation``,
``after_update``), as one plain function with every entry's call and arguments in place, as attrs and
dataclasses generate ``__init__``; the tests run every dispatch test through both. :func:`run_wrapped`
runs a dispatch inside the ``@hookimpl(wrapper=True)`` implementations of its event.
"""

from __future__ import annotations

import inspect
import itertools
import linecache
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from types import FrameType
from typing import Any, Protocol

import attrs

from noether_core.config.schema import CallbackConfig
from noether_core.errors import ImmediateStop, PluginFailure
from noether_core.plugins import hookspecs
from noether_core.plugins.registry import Plugin
from noether_core.plugins.scheduling import Interval

#: What a plugin may raise that fails the plugin, not the process: a plugin's ``sys.exit()`` or
#: ``KeyboardInterrupt`` is its failure too (a real SIGINT reaches the trainer's handler instead, which
#: raises :class:`~noether_core.errors.ImmediateStop`, passed on unwrapped).
PLUGIN_ERRORS: tuple[type[BaseException], ...] = (Exception, SystemExit, KeyboardInterrupt)

HOOKS = hookspecs.HOOK_NAMES
HOOK_INDEX = {name: i for i, name in enumerate(HOOKS)}
#: Events dispatched on every update (or micro-batch): compiled per run, see :func:`compile_event`.
PER_UPDATE_HOOKS = ("after_accumulation", "after_update")
#: The core arguments fixed for a whole run (``config`` and ``state`` are each entry's own).
CORE_ARGS = tuple(a for a in hookspecs.CORE_ARGUMENTS if a not in hookspecs.ENTRY_ARGUMENTS)


class OwnerAware(Protocol):
    """What the dispatcher tells about who is running (the log writer uses it to name metric owners)."""

    owner: str
    owner_is_default: bool


@attrs.define(eq=False)
class Slot:
    """One config entry, live: its config, its plugin object, where its time went."""

    index: int
    config: CallbackConfig
    plugin: Plugin
    obj: object
    is_default: bool = False
    interval: Interval | None = None
    parent: Slot | None = None
    children: list[Slot] = attrs.Factory(list)
    #: the ``state`` hook argument: kept in the trainer checkpoint under the entry's name
    state: dict[str, Any] = attrs.Factory(dict)
    seconds: list[float] = attrs.Factory(lambda: [0.0] * len(HOOKS))
    calls: list[int] = attrs.Factory(lambda: [0] * len(HOOKS))

    @property
    def key(self) -> str:
        """Name for state, logs and timing (``name``, else ``id``, else ``kind``)."""
        return self.config.key

    @property
    def stateful(self) -> bool:
        return self.plugin.stateful

    @property
    def kind(self) -> str:
        """The kind of its plugin."""
        return self.plugin.kind

    @property
    def hooks(self) -> tuple[str, ...]:
        """The events its plugin implements."""
        return self.plugin.hooks

    @property
    def instance(self) -> object:
        """Its plugin object: the class instance made for this entry, or the holder of a module's
        functions."""
        return self.obj

    def __str__(self) -> str:
        where = f" {self.interval.verbose}" if self.interval else ""
        return f"{self.key} ({self.plugin.kind}{where})"


#: (entry, function, arguments passed by position, arguments passed by name)
Call = tuple[Slot, Callable[..., Any], tuple[str, ...], tuple[str, ...]]


def call_arguments(
    function: Callable[..., Any], spec_args: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Which event arguments ``function`` takes: all it names that the event passes.

    pluggy's own ``argnames`` leave out parameters with a default and keyword-only ones, so
    ``grad_norm=None`` would silently stay ``None``; here every parameter the spec knows is passed.
    """
    positional: list[str] = []
    keyword: list[str] = []
    # positional passing is the cheaper call; it stays correct only up to the first parameter that is
    # skipped (a default the event does not pass) or keyword-only
    by_position = True
    for p in inspect.signature(function).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is not p.empty and p.name not in spec_args:
            by_position = False
            continue
        if p.kind is p.KEYWORD_ONLY:
            by_position = False
        (positional if by_position else keyword).append(p.name)
    return tuple(positional), tuple(keyword)


def compile_event(
    hook: str,
    calls: Sequence[Call],
    core: Mapping[str, Any],
    sink: OwnerAware | None,
    per_entry: Mapping[str, Sequence[Any]] | None = None,
) -> Callable[..., None]:
    """One function that dispatches ``hook`` to ``calls`` in order, as :meth:`PluginManager._run` does
    (owner set and restored, each entry timed and counted, failures wrapped in :class:`PluginFailure`),
    with the core arguments and each entry's ``config`` bound as constants. ``per_entry`` binds event
    arguments as constants too, one value per call (``at_eval``'s ``interval``: each due entry's own
    unit); those are no parameters of the function.

    Generated source, as attrs and dataclasses generate ``__init__``: the general loop spends more on
    looking arguments up than a cheap plugin spends on its work, and these events run on every update.
    Only identifiers made here go into the source; every value (functions, configs, the core objects)
    is passed in the namespace. The source is registered with :mod:`linecache` under the function's
    file name (``<noether after_update dispatch ...>``), so tracebacks, debuggers and
    ``inspect.getsource`` show the lines that ran.
    """
    spec = inspect.signature(getattr(hookspecs, hook)).parameters
    fixed = per_entry or {}
    event_args = [a for a in spec if a not in hookspecs.CORE_ARGUMENTS and a not in fixed]
    namespace: dict[str, Any] = {
        "_clock": time.perf_counter,
        "_PluginFailure": PluginFailure,
        "_ImmediateStop": ImmediateStop,
        "_PLUGIN_ERRORS": PLUGIN_ERRORS,
        "_sink": sink,
        "_slots": [call[0] for call in calls],
        **{f"_core_{name}": core[name] for name in CORE_ARGS},
    }
    index = HOOK_INDEX[hook]
    lines = [f"def {hook}({', '.join(event_args)}):"]
    if sink is not None:
        lines.append("    _previous = (_sink.owner, _sink.owner_is_default)")
    lines += ["    _i = 0", "    try:", "        _start = _clock()"]
    for i, (slot, function, positional, keyword) in enumerate(calls):
        namespace[f"_f{i}"] = function
        namespace[f"_config{i}"] = slot.config
        namespace[f"_state{i}"] = slot.state
        namespace[f"_seconds{i}"] = slot.seconds
        namespace[f"_calls{i}"] = slot.calls
        namespace[f"_owner{i}"] = (slot.key, slot.is_default)
        for name, values in fixed.items():
            namespace[f"_{name}{i}"] = values[i]

        def value(name: str, i: int = i) -> str:
            if name in hookspecs.ENTRY_ARGUMENTS or name in fixed:
                return f"_{name}{i}"
            return f"_core_{name}" if name in CORE_ARGS else name

        arguments = [value(a) for a in positional] + [f"{a}={value(a)}" for a in keyword]
        if i:
            lines.append(f"        _i = {i}")
        if sink is not None:
            lines.append(f"        _sink.owner, _sink.owner_is_default = _owner{i}")
        lines += [
            f"        _calls{i}[{index}] += 1",
            f"        _f{i}({', '.join(arguments)})",
            "        _end = _clock()",
            f"        _seconds{i}[{index}] += _end - _start",
            "        _start = _end",
        ]
    lines += [
        "    except (_PluginFailure, _ImmediateStop):",
        "        raise",  # a child entry's failure names the child already; a second SIGINT is no plugin's
        "    except _PLUGIN_ERRORS as exc:",
        f"        raise _PluginFailure(_slots[_i].key, _slots[_i].plugin.kind, {hook!r}, exc) from exc",
    ]
    if sink is not None:
        lines += ["    finally:", "        _sink.owner, _sink.owner_is_default = _previous"]
    source = "\n".join(lines) + "\n"
    filename = f"{_COMPILED_PREFIX}{hook} dispatch {next(_compiled_count)}>"
    exec(compile(source, filename, "exec"), namespace)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    dispatch: Callable[..., None] = namespace[hook]
    return dispatch


_compiled_count = itertools.count(1)
_COMPILED_PREFIX = "<noether "


def run_calls(hook: str, calls: Iterable[Call], kwargs: dict[str, Any], sink: OwnerAware | None) -> None:
    """Call ``calls`` in order with ``kwargs`` (plus each entry's ``config`` and ``state``): each entry
    timed, named as the owner of what it logs on ``sink``, and its failure wrapped in
    :class:`PluginFailure`. The general path; :func:`compile_event` writes the same out per run."""
    hook_index = HOOK_INDEX[hook]
    clock = time.perf_counter
    # restored even when a plugin raises, so the trainer's own values are never logged under the
    # failed plugin's name; restoring (not resetting) keeps an owner that dispatches children right
    previous = (sink.owner, sink.owner_is_default) if sink is not None else ("trainer", False)
    try:
        start = clock()
        for slot, function, positional, keyword in calls:
            kwargs["config"] = slot.config
            kwargs["state"] = slot.state
            if sink is not None:
                sink.owner = slot.key
                sink.owner_is_default = slot.is_default
            slot.calls[hook_index] += 1
            try:
                if keyword:
                    function(*[kwargs[a] for a in positional], **{a: kwargs[a] for a in keyword})
                else:
                    function(*[kwargs[a] for a in positional])
            except (PluginFailure, ImmediateStop):
                # a child entry's failure, dispatched by its owner, names the child already; a second
                # SIGINT is the signal handler's, not the plugin's
                raise
            except PLUGIN_ERRORS as exc:
                raise PluginFailure(slot.key, slot.plugin.kind, hook, exc) from exc
            # one clock read per entry: each entry's time runs from the end of the previous one
            end = clock()
            slot.seconds[hook_index] += end - start
            start = end
    finally:
        if sink is not None:
            sink.owner, sink.owner_is_default = previous


def run_wrapped(
    hook: str, wrappers: Sequence[Call], arguments: Mapping[str, Any], dispatch: Callable[[], Any]
) -> Any:
    """Run ``dispatch`` (the whole dispatch of ``hook`` at this step) inside the wrappers of ``hook``,
    the first listed outermost, with pluggy's new-style semantics: each wrapper runs to its
    ``yield``, which returns the dispatch's result or raises its exception; what the wrapper returns
    or raises then goes on outwards. A wrapper's own time counts as its entry's time in ``hook``."""
    hook_index = HOOK_INDEX[hook]
    clock = time.perf_counter
    started: list[tuple[Slot, Generator[None, Any, Any]]] = []
    error: BaseException | None = None
    result: Any = None
    try:
        for slot, function, positional, keyword in wrappers:
            kwargs = {**arguments, "config": slot.config, "state": slot.state}
            slot.calls[hook_index] += 1
            start = clock()
            try:
                generator = function(*[kwargs[a] for a in positional], **{a: kwargs[a] for a in keyword})
                next(generator)
            except StopIteration:
                raise PluginFailure(
                    slot.key, slot.kind, hook, RuntimeError("the wrapper returned without yielding")
                ) from None
            except ImmediateStop:
                raise
            except PLUGIN_ERRORS as exc:
                raise PluginFailure(slot.key, slot.kind, hook, exc) from exc
            finally:
                slot.seconds[hook_index] += clock() - start
            started.append((slot, generator))
        result = dispatch()
    except BaseException as exc:
        error = exc
    for slot, generator in reversed(started):
        start = clock()
        try:
            if error is None:
                generator.send(result)
            else:
                generator.throw(error)
        except StopIteration as stop:
            error, result = None, stop.value
        except (PluginFailure, ImmediateStop) as exc:
            error = exc
        except PLUGIN_ERRORS as exc:
            # the exception it was handed passes through as it was; a new one is the wrapper's own
            error = exc if exc is error else PluginFailure(slot.key, slot.kind, hook, exc)
        except BaseException as exc:
            error = exc
        else:
            generator.close()
            error = PluginFailure(slot.key, slot.kind, hook, RuntimeError("the wrapper yielded twice"))
        finally:
            slot.seconds[hook_index] += clock() - start
    if error is not None:
        raise error
    return result


def entry_in_frame(frame: FrameType) -> tuple[Slot, str] | None:
    """The entry and event that ``frame``, a frame of the dispatch above, is calling now; ``None`` for
    any other frame. How the stop watchdog names a plugin that does not return: it walks the main
    thread's stack from the innermost frame outwards, which costs the dispatch itself nothing."""
    code = frame.f_code
    if code is run_calls.__code__ or code is run_wrapped.__code__:
        slot, hook = frame.f_locals.get("slot"), frame.f_locals.get("hook")
        if isinstance(slot, Slot) and isinstance(hook, str):
            return slot, hook
    elif code.co_filename.startswith(_COMPILED_PREFIX):
        slots, i = frame.f_globals.get("_slots"), frame.f_locals.get("_i")
        if isinstance(slots, list) and isinstance(i, int) and 0 <= i < len(slots):
            return slots[i], code.co_name
    return None


__all__ = [
    "CORE_ARGS",
    "HOOKS",
    "HOOK_INDEX",
    "PER_UPDATE_HOOKS",
    "PLUGIN_ERRORS",
    "Call",
    "OwnerAware",
    "Slot",
    "call_arguments",
    "compile_event",
    "entry_in_frame",
    "run_calls",
    "run_wrapped",
]
