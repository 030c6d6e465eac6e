"""The run's plugins: one object per config entry, registered with pluggy, called in list order and timed.

pluggy checks the implementations against :mod:`noether_core.plugins.hookspecs` when each object is
registered. Dispatch does not go through ``pm.hook.<name>(...)``: noether calls each entry's
implementation itself, because the order is the config's list order, ``at_eval`` reaches only the entries
that are due, each entry gets its own ``config`` argument, and the time each entry spends in each
event is accounted (cheaply: one ``perf_counter`` call per entry) for the end-of-run summary.

How a call reaches an entry is :mod:`noether_core.plugins.dispatch`: the two events that fire on every
update are compiled once per run (:meth:`PluginManager.bind`), the others go through the general loop,
and an event with ``@hookimpl(wrapper=True)`` implementations runs inside them.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import pluggy

from noether_core.config.schema import CallbackConfig
from noether_core.errors import (
    ImmediateStop,
    PluginFailure,
    PluginLoadError,
    PluginValidationError,
    raised_at,
)
from noether_core.plugins import hookspecs
from noether_core.plugins.dispatch import (
    HOOK_INDEX,
    HOOKS,
    PER_UPDATE_HOOKS,
    PLUGIN_ERRORS,
    Call,
    OwnerAware,
    Slot,
    call_arguments,
    compile_event,
    entry_in_frame,
    run_calls,
    run_wrapped,
)
from noether_core.plugins.markers import PROJECT_NAME
from noether_core.plugins.registry import Plugin

if TYPE_CHECKING:
    from noether_core.plugins.hookspecs import EvalInterval, RunStatus


#: How many sets of due entries keep their :class:`Tick` (intervals that rarely coincide could make
#: many sets; the others are worked out at each of their ticks and never compiled).
MAX_TICKS = 64


class Tick:
    """What the trainer needs at a tick where a given set of entries is due, worked out once per set
    (:meth:`PluginManager.tick`): a run's ticks bring the same few sets again and again.

    ``owners`` are the top-level entries to call (a due child's owner), ``needs_eval_mode`` whether any
    of them may run the model. The ``at_eval`` dispatch to them is compiled the second time the set is
    due (a set due once, at the end say, is not worth compiling)."""

    __slots__ = ("dispatch", "needs_eval_mode", "owners", "seen")

    def __init__(self, owners: Sequence[Slot], needs_eval_mode: bool) -> None:
        self.owners = owners
        self.needs_eval_mode = needs_eval_mode
        self.seen = 0
        self.dispatch: Callable[[], None] | None = None


class PluginManager:
    """Registers entries and dispatches the six events to them.

    ``register`` every entry, then ``freeze``; after that the typed methods (``before_training`` ...
    ``after_training``) are the only way the trainer calls plugins.
    """

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self.slots: list[Slot] = []
        self._tables: dict[str, list[Call]] = {}
        self._wrappers: dict[str, list[Call]] = {}
        self._at_eval: dict[int, Call] = {}
        self._own: dict[tuple[int, str], Call] = {}
        self._by_config: dict[int, Slot] = {}
        self.owner_sink: OwnerAware | None = None
        self._bound_core: Mapping[str, Any] | None = None
        self._compiled: dict[str, Callable[..., None]] = {}
        self._ticks: dict[tuple[Slot, ...], Tick] = {}
        self._deferred: list[tuple[str, Callable[[], object]]] = []

    def register(
        self, plugin: Plugin, config: CallbackConfig, *, is_default: bool = False, parent: Slot | None = None
    ) -> Slot:
        """Make and register the plugin object for one entry. Hook mistakes raise here, not later.

        With ``parent``, the entry is a child (e.g. one of EmaCallback's ``eval_callbacks``): the trainer
        never calls it; its owner does, through :meth:`children_of` and :meth:`call_slots`.
        """
        if self._tables:
            raise RuntimeError("plugins cannot be registered once dispatch has started")
        if parent is not None and plugin.wrappers:
            raise PluginValidationError(
                plugin.kind,
                f"entry {config.key!r} wraps {', '.join(plugin.wrappers)}, but it is a child of "
                f"{parent.key!r}: a wrapper wraps the trainer's own dispatch, so list it at the top level",
                plugin.source.distribution,
                plugin.source.version,
            )
        try:
            obj = plugin.instantiate(config)
        except Exception as exc:  # e.g. a class whose constructor does not take the config
            raise PluginLoadError(
                plugin.kind,
                f"creating it for entry {config.key!r} failed: {type(exc).__name__}: {exc}{raised_at(exc)}",
                plugin.source.distribution,
                plugin.source.version,
            ) from exc
        slot = Slot(
            len(self.slots),
            config,
            plugin,
            obj,
            is_default=is_default,
            interval=config.interval,
            parent=parent,
        )
        try:
            self._pm.register(obj, name=f"{slot.index}:{slot.key}")
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            # pluggy refuses a bad argument before registering, an unknown hook only after
            if self._pm.is_registered(obj):
                self._pm.unregister(obj)
            raise PluginValidationError(
                plugin.kind, str(exc), plugin.source.distribution, plugin.source.version
            ) from exc
        self.slots.append(slot)
        self._by_config[id(config)] = slot
        if parent is not None:
            parent.children.append(slot)
        return slot

    def freeze(self) -> None:
        """Build the dispatch tables (list order) once; dispatch needs no lookups after this."""
        by_obj = {id(s.obj): s for s in self.slots}
        for name in HOOKS:
            calls: list[Call] = []
            caller = getattr(self._pm.hook, name)
            wrappers: list[Call] = []
            for impl in caller.get_hookimpls():
                slot = by_obj[id(impl.plugin)]
                call = (slot, impl.function, *call_arguments(impl.function, caller.spec.argnames))
                (wrappers if impl.wrapper else calls).append(call)
            calls.sort(key=lambda c: c[0].index)
            for call in calls:
                self._own[(call[0].index, name)] = call
            self._tables[name] = [c for c in calls if c[0].parent is None]
            if wrappers:
                self._wrappers[name] = sorted(wrappers, key=lambda c: c[0].index)
        self._at_eval = {index: call for (index, hook), call in self._own.items() if hook == "at_eval"}

    def bind(self, core: Mapping[str, Any]) -> None:
        """Compile the per-update events for ``core``, the run's fixed core arguments (``trainer``,
        ``model``, ``counter``), after :meth:`freeze` and once ``owner_sink`` is set.

        Dispatching those events with this very mapping then takes the compiled path; with any other
        mapping, the general one. The trainer binds its own, which never changes during a run.
        """
        if not self._tables and self.slots:
            raise RuntimeError("bind() comes after freeze()")
        self._bound_core = core
        self._compiled = {}
        self._ticks = {}
        for hook in PER_UPDATE_HOOKS:
            compiled = compile_event(hook, self._tables.get(hook, []), core, self.owner_sink)
            if hook in self._wrappers:  # only then: an update without wrappers pays nothing for them
                compiled = self._wrapping(hook, core, compiled)
            self._compiled[hook] = compiled

    def _wrapping(
        self, hook: str, core: Mapping[str, Any], dispatch: Callable[..., None]
    ) -> Callable[..., None]:
        """``dispatch`` (a compiled per-update event) run inside the wrappers of ``hook``."""
        names = [
            a
            for a in inspect.signature(getattr(hookspecs, hook)).parameters
            if a not in hookspecs.CORE_ARGUMENTS
        ]

        def wrapped(*args: Any) -> None:
            self._around(hook, {**core, **dict(zip(names, args, strict=True))}, lambda: dispatch(*args))

        return wrapped

    def needs_eval_mode(self, slots: Iterable[Slot]) -> bool:
        """Whether any of ``slots`` may run the model (``needs_eval_mode`` of its plugin)."""
        return any(s.plugin.needs_eval_mode for s in slots)

    def listeners(self, hook: str) -> list[Slot]:
        """The top-level entries that implement ``hook``, in list order (after :meth:`freeze`)."""
        return [call[0] for call in self._tables[hook]]

    def has_listeners(self, hook: str) -> bool:
        """Whether any top-level entry implements or wraps ``hook`` (after :meth:`freeze`): the trainer
        skips work that only plugins would consume."""
        return bool(self._tables[hook]) or hook in self._wrappers

    def implements(self, slot: Slot, hook: str) -> bool:
        return hook in slot.plugin.hooks

    @staticmethod
    def owner(slot: Slot) -> Slot:
        """The top-level entry a (possibly nested) entry belongs to."""
        while slot.parent is not None:
            slot = slot.parent
        return slot

    def ticking(self) -> list[Slot]:
        """The entries whose intervals the scheduler watches: the scheduled top-level entries, and the
        children of scheduled owners (an owner is called when it or one of its children is due)."""
        scheduled = {s.index for s in self.scheduled}
        return [s for s in self.slots if s.interval is not None and self.owner(s).index in scheduled]

    def owners(self, due: Sequence[Slot]) -> Sequence[Slot]:
        """The top-level entries to call for the ``due`` ones (a due child's owner), in list order."""
        if all(s.parent is None for s in due):
            return due
        return sorted({self.owner(s).index: self.owner(s) for s in due}.values(), key=lambda s: s.index)

    def tick(self, due: Sequence[Slot]) -> Tick:
        """The :class:`Tick` for the ``due`` entries (what the scheduler's cursor returned), kept per set
        of them (up to :data:`MAX_TICKS` sets); run it with :meth:`at_eval_tick`."""
        key = tuple(due)  # slots hash by identity, and a run keeps its slots
        tick = self._ticks.get(key)
        if tick is None:
            owners = self.owners(due)
            tick = Tick(owners, self.needs_eval_mode(owners))
            if len(self._ticks) < MAX_TICKS:
                self._ticks[key] = tick
        return tick

    @property
    def scheduled(self) -> list[Slot]:
        """Top-level entries that take ``at_eval``, in list order: what the trainer's scheduler looks at."""
        return [s for s in self.slots if s.index in self._at_eval and s.parent is None]

    def children_of(self, config: CallbackConfig) -> list[Slot]:
        """The child entries of the entry whose config is ``config`` (the ``config`` hook argument)."""
        slot = self._by_config.get(id(config))
        return list(slot.children) if slot is not None else []

    def call_slots(self, hook: str, slots: Sequence[Slot], core: Mapping[str, Any], **extra: Any) -> None:
        """Call ``hook`` on ``slots`` that implement it, in their order: how an owner runs its children
        (no wrapper runs around it: the wrappers wrap the trainer's dispatch, which this is part of).

        For ``at_eval`` pass the due children (``trainer.scheduler.due(children, counter.update)``);
        each gets its own interval's unit unless ``interval`` is given.
        """
        if hook == "at_eval":
            self._at_eval_each(core, slots, extra.get("interval"))
            return
        calls = [self._own[(s.index, hook)] for s in slots if (s.index, hook) in self._own]
        if calls:
            self._run(hook, calls, {**core, **extra})

    def stateful(self) -> Iterator[Slot]:
        return (s for s in self.slots if s.stateful)

    # ------------------------------------------------------------------------------ deferred actions

    def defer(self, action: Callable[[], object]) -> None:
        """Keep ``action`` for :meth:`run_deferred`, owned by the entry that is running now."""
        owner = self.owner_sink.owner if self.owner_sink is not None else "trainer"
        self._deferred.append((owner, action))

    @property
    def has_deferred(self) -> bool:
        return bool(self._deferred)

    def run_deferred(self) -> None:
        """Run the deferred actions in order, each as its entry's: what it logs is the entry's, its time
        counts as the entry's ``at_eval``, and a failure is a :class:`PluginFailure` naming the entry."""
        if not self._deferred:
            return
        actions, self._deferred = self._deferred, []
        slots = {s.key: s for s in reversed(self.slots)}
        at_eval = HOOK_INDEX["at_eval"]
        sink = self.owner_sink
        previous = (sink.owner, sink.owner_is_default) if sink is not None else ("trainer", False)
        try:
            for owner, action in actions:
                slot = slots.get(owner)
                if sink is not None:
                    sink.owner, sink.owner_is_default = owner, slot is not None and slot.is_default
                start = time.perf_counter()
                try:
                    action()
                except (PluginFailure, ImmediateStop):
                    raise  # it names its entry already (a state_dict() that raised while saving)
                except PLUGIN_ERRORS as exc:
                    if slot is None:
                        raise
                    raise PluginFailure(slot.key, slot.kind, "at_eval", exc) from exc
                finally:
                    if slot is not None:
                        slot.seconds[at_eval] += time.perf_counter() - start
        finally:
            if sink is not None:
                sink.owner, sink.owner_is_default = previous

    @staticmethod
    def running(frame: FrameType | None) -> tuple[Slot, str] | None:
        """The entry, and the event, that the thread whose innermost frame is ``frame`` is running: the
        innermost dispatch on its stack (a child entry rather than the owner that dispatched it). A
        deferred action counts as its entry's ``at_eval``."""
        while frame is not None:
            found = entry_in_frame(frame)
            if found is not None:
                return found
            if frame.f_code is PluginManager.run_deferred.__code__:
                slot = frame.f_locals.get("slot")
                if isinstance(slot, Slot):
                    return slot, "at_eval"
            frame = frame.f_back
        return None

    # ------------------------------------------------------------------------------------- dispatch

    def _run(self, hook: str, calls: Iterable[Call], kwargs: dict[str, Any]) -> None:
        run_calls(hook, calls, kwargs, self.owner_sink)

    def call(self, hook: str, core: Mapping[str, Any], **extra: Any) -> None:
        """Call ``hook`` on every entry implementing it, inside the wrappers of ``hook`` if any (used by
        the typed methods)."""
        calls = self._tables[hook]
        if hook in self._wrappers:
            self._around(hook, {**core, **extra}, lambda: self._run(hook, calls, {**core, **extra}))
        elif calls:
            self._run(hook, calls, {**core, **extra})

    def _around(self, hook: str, arguments: Mapping[str, Any], dispatch: Callable[[], Any]) -> Any:
        return run_wrapped(hook, self._wrappers[hook], arguments, dispatch)

    def before_training(self, core: Mapping[str, Any]) -> None:
        self.call("before_training", core)

    def after_accumulation(
        self,
        core: Mapping[str, Any],
        batch: Any,
        losses: Mapping[str, Any],
        outputs: Mapping[str, Any] | None,
        accumulation_step: int,
        accumulation_steps: int,
    ) -> None:
        if core is self._bound_core:
            self._compiled["after_accumulation"](
                batch, losses, outputs, accumulation_step, accumulation_steps
            )
            return
        self.call(
            "after_accumulation",
            core,
            batch=batch,
            losses=losses,
            outputs=outputs,
            accumulation_step=accumulation_step,
            accumulation_steps=accumulation_steps,
        )

    def after_update(
        self, core: Mapping[str, Any], losses: Mapping[str, Any], times: Mapping[str, float], grad_norm: Any
    ) -> None:
        if core is self._bound_core:
            self._compiled["after_update"](losses, times, grad_norm)
            return
        self.call("after_update", core, losses=losses, times=times, grad_norm=grad_norm)

    def after_epoch(self, core: Mapping[str, Any]) -> None:
        self.call("after_epoch", core)

    def at_eval(
        self, core: Mapping[str, Any], slots: Sequence[Slot], interval: EvalInterval | None = None
    ) -> None:
        """Call ``at_eval`` on ``slots`` (the due top-level entries), each with its own interval's unit
        unless given, inside the wrappers of ``at_eval``. A wrapper gets ``interval`` as given, else the
        unit of the first due entry."""
        if "at_eval" not in self._wrappers:
            self._at_eval_each(core, slots, interval)
            return
        first = next((s.interval.unit for s in slots if s.interval is not None), "eval")
        arguments = {**core, "interval": interval or first}
        self._around("at_eval", arguments, lambda: self._at_eval_each(core, slots, interval))

    def at_eval_tick(self, core: Mapping[str, Any], tick: Tick) -> None:
        """:meth:`at_eval` for the owners of ``tick``, each with its own interval's unit: for the
        bound core arguments and without wrappers, through the dispatch compiled for its set."""
        if tick.dispatch is None:
            tick.seen += 1
            if tick.seen < 2 or core is not self._bound_core or "at_eval" in self._wrappers:
                self.at_eval(core, tick.owners)
                return
            assert self._bound_core is not None
            own = self._own
            calls = [own[(s.index, "at_eval")] for s in tick.owners if (s.index, "at_eval") in own]
            units = [c[0].interval.unit if c[0].interval else "eval" for c in calls]
            tick.dispatch = compile_event(
                "at_eval", calls, self._bound_core, self.owner_sink, per_entry={"interval": units}
            )
        tick.dispatch()

    def _at_eval_each(
        self, core: Mapping[str, Any], slots: Sequence[Slot], interval: EvalInterval | None
    ) -> None:
        kwargs = dict(core)
        for slot in slots:
            call = self._own.get((slot.index, "at_eval"))
            if call is None:
                continue
            kwargs["interval"] = interval or (slot.interval.unit if slot.interval else "eval")
            self._run("at_eval", (call,), kwargs)

    def after_training(self, core: Mapping[str, Any], status: RunStatus) -> list[PluginFailure]:
        """Call every entry even when some fail (inside the wrappers of ``after_training``, if any);
        return the failures for the trainer to report."""
        failures: list[PluginFailure] = []

        def each() -> None:
            for call in self._tables["after_training"]:
                try:
                    self._run("after_training", (call,), {**core, "status": status})
                except PluginFailure as exc:
                    failures.append(exc)

        if "after_training" not in self._wrappers:
            each()
            return failures
        try:
            self._around("after_training", {**core, "status": status}, each)
        except PluginFailure as exc:
            failures.append(exc)
        return failures

    # --------------------------------------------------------------------------------------- timing

    def durations(self) -> list[tuple[Slot, str, float, int]]:
        """(entry, event, seconds, calls) for every event an entry spent time in, slowest first."""
        rows = [
            (slot, hook, slot.seconds[i], slot.calls[i])
            for slot in self.slots
            for i, hook in enumerate(HOOKS)
            if slot.calls[i]
        ]
        return sorted(rows, key=lambda r: r[2], reverse=True)

    def total_seconds(self, slot: Slot) -> float:
        return sum(slot.seconds)


__all__ = ["MAX_TICKS", "PluginManager", "Tick"]
