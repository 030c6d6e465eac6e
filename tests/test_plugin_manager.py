"""The plugin manager: one object per entry, list-order dispatch, ``at_eval`` to the due entries only,
failures named after their entry, timing, and the owner of logged values.

Plugins are real: the sample plugins, loaded through a :class:`PluginRegistry`, and small classes
defined here; core arguments are a real :class:`Counter`, model and :class:`LogWriter`.
"""

from __future__ import annotations

import importlib
import time
import traceback
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import attrs
import pluggy
import pytest
import sample_function_plugin
import sample_plugins
import torch

from noether_core import CallbackConfig, PluginLoadError, PluginValidationError, TrainingError, hookimpl
from noether_core.errors import ImmediateStop, PluginFailure
from noether_core.io.log_writer import LogWriter
from noether_core.plugins.dispatch import HOOKS, Slot
from noether_core.plugins.manager import MAX_TICKS, PluginManager
from noether_core.plugins.registry import Plugin, PluginRegistry, PluginSource, inspect_plugin
from noether_core.plugins.scheduling import IntervalScheduler
from noether_core.run.counter import Counter, RunEnd

UPDATES_PER_EPOCH = 10
BATCH_SIZE = 4


@attrs.frozen(kw_only=True)
class JournalConfig(CallbackConfig):
    note: str = ""


def journal_class(**marker_opts: bool) -> type:
    """A plugin that appends ``(entry key, event)`` to ``trainer.journal`` in every event; its hooks
    carry ``marker_opts`` (``tryfirst``/``trylast``), which pluggy would use to reorder them."""
    mark = hookimpl(**marker_opts)

    class Journal:
        Config = JournalConfig

        def __init__(self, config: JournalConfig) -> None:
            self.config = config

        @mark
        def before_training(self, trainer: Any, config: JournalConfig) -> None:
            trainer.journal.append((config.key, "before_training"))

        @mark
        def after_accumulation(self, trainer: Any, config: JournalConfig, accumulation_step: int) -> None:
            trainer.journal.append((config.key, "after_accumulation"))

        @mark
        def after_update(self, trainer: Any, config: JournalConfig) -> None:
            trainer.journal.append((config.key, "after_update"))

        @mark
        def after_epoch(self, trainer: Any, config: JournalConfig) -> None:
            trainer.journal.append((config.key, "after_epoch"))

        @mark
        def at_eval(self, trainer: Any, config: JournalConfig, interval: str) -> None:
            trainer.journal.append((config.key, "at_eval"))

        @mark
        def after_training(self, trainer: Any, config: JournalConfig, status: str) -> None:
            trainer.journal.append((config.key, "after_training"))

    return Journal


Journal = journal_class()


class Boom:
    """Raises its own ``error`` in ``after_update``, ``at_eval`` and ``after_training``."""

    Config = JournalConfig

    def __init__(self, config: JournalConfig) -> None:
        self.error = ValueError(f"bad value in {config.key}")

    @hookimpl
    def after_update(self) -> None:
        raise self.error

    @hookimpl
    def at_eval(self) -> None:
        raise self.error

    @hookimpl
    def after_training(self, trainer: Any, config: JournalConfig) -> None:
        trainer.journal.append((config.key, "after_training"))
        raise self.error


class Sleeper:
    Config = JournalConfig

    def __init__(self, config: JournalConfig) -> None:
        pass

    @hookimpl
    def after_update(self) -> None:
        time.sleep(0.005)


class OwnerProbe:
    """Records who the writer thinks is logging while it runs."""

    Config = JournalConfig

    def __init__(self, config: JournalConfig) -> None:
        self.seen: list[tuple[str, bool]] = []

    @hookimpl
    def after_update(self, trainer: Any) -> None:
        self.seen.append((trainer.writer.owner, trainer.writer.owner_is_default))

    @hookimpl
    def after_training(self, trainer: Any) -> None:
        self.seen.append((trainer.writer.owner, trainer.writer.owner_is_default))


class Raises:
    """Raises ``trainer.to_raise`` in ``after_update``."""

    Config = JournalConfig

    def __init__(self, config: JournalConfig) -> None:
        pass

    @hookimpl
    def after_update(self, trainer: Any) -> None:
        raise trainer.to_raise


class Parent:
    """Dispatches ``after_update`` to ``trainer.children`` (another manager), as an owner of child
    entries does, and records the writer's owner before and after."""

    Config = JournalConfig

    def __init__(self, config: JournalConfig) -> None:
        self.owners: list[str] = []

    @hookimpl
    def after_update(self, trainer: Any, model: Any, counter: Any) -> None:
        self.owners.append(trainer.writer.owner)
        core = {"trainer": trainer, "model": model, "counter": counter}
        trainer.children.after_update(core, losses={}, times={}, grad_norm=None)
        self.owners.append(trainer.writer.owner)


def plugin(target: Any, kind: str | None = None) -> Plugin:
    kind = kind or target.__name__
    return inspect_plugin(PluginSource(kind, f"test_plugin_manager:{kind}"), target)


def journal_config(name: str, **fields: Any) -> JournalConfig:
    return JournalConfig(kind="Journal", name=name, **fields)


def make_core(update: int = 0) -> dict[str, Any]:
    counter = Counter(
        end=RunEnd("update", 100),
        updates_per_epoch=UPDATES_PER_EPOCH,
        effective_batch_size=BATCH_SIZE,
        update=update,
    )
    model = torch.nn.Linear(2, 2)
    model.eval()
    writer = LogWriter(counter, [])
    trainer = SimpleNamespace(writer=writer, journal=[], to_raise=None, children=None)
    return {"trainer": trainer, "model": model, "counter": counter}


def dispatch_every_event(pm: PluginManager, core: dict[str, Any]) -> None:
    pm.before_training(core)
    pm.after_accumulation(
        core, batch=None, losses={}, outputs=None, accumulation_step=0, accumulation_steps=1
    )
    pm.after_update(core, losses={}, times={}, grad_norm=None)
    pm.after_epoch(core)
    pm.at_eval(core, pm.slots, "eval")
    assert pm.after_training(core, "completed") == []


@pytest.fixture
def registry() -> PluginRegistry:
    return PluginRegistry(
        [
            PluginSource("Recorder", "sample_plugins:Recorder", "noether-test-plugins", "1.0.0"),
            PluginSource("StopAt", "sample_plugins:StopAt", "noether-test-plugins", "1.0.0"),
            PluginSource("heartbeat", "sample_function_plugin", "noether-test-plugins", "1.0.0"),
        ]
    )


@pytest.fixture(params=["general", "compiled"])
def start(request: pytest.FixtureRequest) -> Any:
    """Readies a frozen manager for dispatch with ``core``: the per-update events then go through the
    general loop, or (as in the trainer) through the functions compiled by ``bind``."""

    def ready(pm: PluginManager, core: dict[str, Any]) -> None:
        if request.param == "compiled":
            pm.bind(core)

    return ready


@pytest.fixture(autouse=True)
def _no_grad() -> Iterator[None]:
    with torch.no_grad():  # as the trainer dispatches; Recorder asserts it
        yield


# ------------------------------------------------------------------------------------ entries


def test_two_entries_of_each_kind_keep_their_own_state_and_config(registry: PluginRegistry) -> None:
    recorder, heartbeat = registry.load("Recorder"), registry.load("heartbeat")
    pm = PluginManager()
    rec2 = pm.register(
        recorder, recorder.config_class(kind="Recorder", name="rec2", every_n_updates=2, label="a")
    )
    rec3 = pm.register(
        recorder, recorder.config_class(kind="Recorder", name="rec3", every_n_updates=3, label="b")
    )
    hb2 = pm.register(heartbeat, CallbackConfig(kind="heartbeat", name="hb2", every_n_updates=2))
    hb3 = pm.register(heartbeat, CallbackConfig(kind="heartbeat", name="hb3", every_n_updates=3))
    pm.freeze()

    assert [s.index for s in pm.slots] == [0, 1, 2, 3]
    assert len({id(s.obj) for s in pm.slots}) == 4
    assert rec2.obj.config.label == "a"
    assert rec3.obj.config.label == "b"
    assert pm.scheduled == [rec2, rec3, hb2, hb3]
    assert list(pm.stateful()) == [rec2, rec3]
    assert str(rec2) == "rec2 (Recorder every_n_updates=2)"

    scheduler = IntervalScheduler(UPDATES_PER_EPOCH, BATCH_SIZE, total_updates=100)
    writers: dict[int, LogWriter] = {}
    for update in range(1, 7):
        core = make_core(update)
        pm.owner_sink = core["trainer"].writer
        pm.after_update(core, losses={}, times={}, grad_norm=None)
        pm.at_eval(core, scheduler.due(pm.scheduled, update))
        writers[update] = core["trainer"].writer

    # each entry saw its own config: the function plugin logs under its own interval
    assert writers[1].keys() == []
    assert writers[2].keys() == ["a/U2", "heartbeat/U2"]
    assert writers[3].keys() == ["b/U3", "heartbeat/U3"]
    assert writers[6].keys() == ["a/U2", "b/U3", "heartbeat/U2", "heartbeat/U3"]
    assert writers[6].get("a/U2") == 3.0  # rec2's third evaluation (updates 2, 4, 6)
    assert writers[6].get("b/U3") == 2.0  # rec3's second (updates 3, 6)
    assert writers[6].get("heartbeat/U3") == 6
    assert rec2.obj.evals == 3
    assert rec3.obj.evals == 2
    assert [e for e in rec3.obj.events if e[0] == "at_eval"] == [
        ("at_eval", 3, "update"),
        ("at_eval", 6, "update"),
    ]
    assert len(rec2.obj.events) == 6 + 3
    assert hb2.calls[HOOKS.index("at_eval")] == 3
    assert hb3.calls[HOOKS.index("at_eval")] == 2


def test_slot_key_is_name_then_id_then_kind(registry: PluginRegistry) -> None:
    stop_at = registry.load("StopAt")
    pm = PluginManager()
    named = pm.register(stop_at, stop_at.config_class(kind="StopAt", name="n", id="i"))
    with_id = pm.register(stop_at, stop_at.config_class(kind="StopAt", id="i"))
    bare = pm.register(stop_at, stop_at.config_class(kind="StopAt"))
    assert [named.key, with_id.key, bare.key] == ["n", "i", "StopAt"]
    assert str(bare) == "StopAt (StopAt)"
    assert not pm.implements(bare, "at_eval")
    assert pm.implements(bare, "after_update")


# ------------------------------------------------------------------------------------ order


def test_dispatch_follows_list_order_for_every_event(start: Any) -> None:
    pm = PluginManager()
    # pluggy alone would call the last registered first (LIFO); tryfirst/trylast are refused at load
    pm.register(plugin(Journal), journal_config("first"))
    pm.register(plugin(Journal), journal_config("second"))
    pm.register(plugin(Journal), journal_config("third"))
    pm.register(plugin(Journal), journal_config("fourth"), is_default=True)
    pm.freeze()
    core = make_core(1)

    start(pm, core)
    dispatch_every_event(pm, core)

    order = ["first", "second", "third", "fourth"]
    expected = [(name, event) for event in HOOKS for name in order]
    assert core["trainer"].journal == expected


def test_register_after_freeze_raises() -> None:
    pm = PluginManager()
    pm.register(plugin(Journal), journal_config("a"))
    pm.freeze()
    with pytest.raises(RuntimeError, match="once dispatch has started"):
        pm.register(plugin(Journal), journal_config("b"))
    assert [s.key for s in pm.slots] == ["a"]


def test_empty_manager_dispatches_nothing() -> None:
    pm = PluginManager()
    pm.freeze()
    dispatch_every_event(pm, make_core())
    assert pm.durations() == []
    assert pm.scheduled == []


class Defaults:
    """Hook parameters with defaults and keyword-only ones: pluggy's own argnames would skip them."""

    Config = JournalConfig

    def __init__(self, config: JournalConfig) -> None:
        self.seen: list[tuple[Any, ...]] = []

    @hookimpl
    def after_update(self, counter: Any, grad_norm: Any = None, *, losses: Any, times: Any = None) -> None:
        self.seen.append((counter.update, grad_norm, losses, times))

    @hookimpl
    def after_training(self, status: str = "unknown", **rest: Any) -> None:
        self.seen.append((status, rest))


def test_arguments_with_defaults_and_keyword_only_arguments_are_passed(start: Any) -> None:
    pm = PluginManager()
    slot = pm.register(plugin(Defaults), JournalConfig(kind="Defaults"))
    pm.freeze()
    core = make_core(4)
    norm, losses, times = torch.tensor(1.5), {"total": torch.tensor(0.25)}, {"forward": 0.001}

    start(pm, core)
    pm.after_update(core, losses=losses, times=times, grad_norm=norm)
    pm.after_training(core, "stopped")

    assert slot.obj.seen == [(4, norm, losses, times), ("stopped", {})]


# ------------------------------------------------------------------------------------ at_eval


def test_at_eval_reaches_only_the_given_slots_with_their_unit(registry: PluginRegistry) -> None:
    recorder, stop_at = registry.load("Recorder"), registry.load("StopAt")
    pm = PluginManager()
    by_epoch = pm.register(recorder, recorder.config_class(kind="Recorder", name="e", every_n_epochs=1))
    by_update = pm.register(recorder, recorder.config_class(kind="Recorder", name="u", every_n_updates=5))
    by_sample = pm.register(recorder, recorder.config_class(kind="Recorder", name="s", every_n_samples=8))
    unscheduled = pm.register(stop_at, stop_at.config_class(kind="StopAt", update=99))
    pm.freeze()
    recorders = [by_epoch, by_update, by_sample]

    def evals(slot: Slot) -> list[str]:
        return [extra for event, _, extra in slot.obj.events if event == "at_eval"]

    pm.at_eval(make_core(10), [by_update])
    assert [evals(s) for s in recorders] == [[], ["update"], []]

    pm.at_eval(make_core(10), [by_epoch, by_sample, unscheduled])  # one without at_eval is passed over
    assert [evals(s) for s in recorders] == [["epoch"], ["update"], ["sample"]]

    pm.at_eval(make_core(10), pm.scheduled, "eval")
    assert [evals(s) for s in recorders] == [["epoch", "eval"], ["update", "eval"], ["sample", "eval"]]

    pm.at_eval(make_core(10), [])
    assert sum(len(evals(s)) for s in recorders) == 6
    assert pm.scheduled == recorders


def test_at_eval_of_an_entry_without_interval_gets_eval(registry: PluginRegistry) -> None:
    recorder = registry.load("Recorder")
    pm = PluginManager()
    slot = pm.register(recorder, recorder.config_class(kind="Recorder"))
    pm.freeze()
    core = make_core(3)
    pm.owner_sink = core["trainer"].writer
    pm.at_eval(core, [slot])
    assert slot.obj.events == [("at_eval", 3, "eval")]
    assert core["trainer"].writer.keys() == ["rec/eval"]


# ------------------------------------------------------------------------------------ failures


def test_exception_is_wrapped_naming_entry_kind_and_event(start: Any) -> None:
    pm = PluginManager()
    pm.register(plugin(Journal), journal_config("before"))
    boom = pm.register(plugin(Boom), JournalConfig(kind="Boom", name="boom"))
    pm.register(plugin(Journal), journal_config("after"))
    pm.freeze()
    core = make_core(1)

    start(pm, core)
    with pytest.raises(PluginFailure) as info:
        pm.after_update(core, losses={}, times={}, grad_norm=None)
    err = info.value
    assert isinstance(err, TrainingError)
    assert err.exit_status == 1
    assert err.entry == boom.key
    assert err.hook == "after_update"
    assert err.__cause__ is boom.obj.error
    assert str(err) == "plugin 'boom' (Boom) failed in after_update: ValueError: bad value in boom"
    assert core["trainer"].journal == [("before", "after_update")]  # the event stops at the failure
    assert boom.calls[HOOKS.index("after_update")] == 1  # a failed call is still accounted

    with pytest.raises(PluginFailure, match="'boom' \\(Boom\\) failed in at_eval") as info:
        pm.at_eval(core, [boom], "eval")
    assert info.value.__cause__ is boom.obj.error


@pytest.mark.parametrize("error", [TrainingError("diverged"), KeyError("missing")])
def test_every_exception_is_wrapped(error: Exception, start: Any) -> None:
    pm = PluginManager()
    slot = pm.register(plugin(Raises), JournalConfig(kind="Raises", name="r"))
    pm.freeze()
    core = make_core()
    core["trainer"].to_raise = error
    start(pm, core)
    with pytest.raises(PluginFailure) as info:
        pm.after_update(core, losses={}, times={}, grad_norm=None)
    assert info.value.entry == slot.key
    assert info.value.__cause__ is error


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(0), SystemExit(3)])
def test_a_plugins_own_exit_or_interrupt_is_its_failure(error: BaseException, start: Any) -> None:
    """``sys.exit()`` or ``KeyboardInterrupt`` raised by a plugin fails that plugin; only the trainer's
    signal handler ends a run as interrupted."""
    pm = PluginManager()
    slot = pm.register(plugin(Raises), JournalConfig(kind="Raises", name="r"))
    pm.freeze()
    core = make_core()
    core["trainer"].to_raise = error
    start(pm, core)
    with pytest.raises(PluginFailure) as info:
        pm.after_update(core, losses={}, times={}, grad_norm=None)
    assert (info.value.entry, info.value.hook) == (slot.key, "after_update")
    assert info.value.__cause__ is error


def test_a_second_sigint_passes_through_the_dispatch_unwrapped(start: Any) -> None:
    pm = PluginManager()
    pm.register(plugin(Raises), JournalConfig(kind="Raises", name="r"))
    pm.freeze()
    core = make_core()
    core["trainer"].to_raise = ImmediateStop("second SIGINT")
    start(pm, core)
    with pytest.raises(ImmediateStop):
        pm.after_update(core, losses={}, times={}, grad_norm=None)


def test_after_training_calls_every_entry_and_returns_the_failures() -> None:
    pm = PluginManager()
    pm.register(plugin(Journal), journal_config("a"))
    first = pm.register(plugin(Boom), JournalConfig(kind="Boom", name="b"))
    pm.register(plugin(Journal), journal_config("c"))
    second = pm.register(plugin(Boom), JournalConfig(kind="Boom", name="d"))
    raises = pm.register(plugin(Raises, "Raises"), JournalConfig(kind="Raises", name="e"))
    pm.register(plugin(Journal), journal_config("f"))
    pm.freeze()
    core = make_core()
    core["trainer"].to_raise = TrainingError("not a PluginFailure")

    failures = pm.after_training(core, "failed")

    assert [k for k, _ in core["trainer"].journal] == ["a", "b", "c", "d", "f"]
    assert [(f.entry, f.hook) for f in failures] == [
        (first.key, "after_training"),
        (second.key, "after_training"),
    ]
    assert [f.__cause__ for f in failures] == [first.obj.error, second.obj.error]
    # Raises implements after_update only: not called, no failure
    assert raises.calls == [0] * len(HOOKS)


def test_after_training_failure_of_any_type_does_not_stop_the_others() -> None:
    class RaisesAtEnd:
        Config = JournalConfig

        def __init__(self, config: JournalConfig) -> None:
            pass

        @hookimpl
        def after_training(self, trainer: Any) -> None:
            raise trainer.to_raise

    pm = PluginManager()
    failing = pm.register(plugin(RaisesAtEnd), JournalConfig(kind="RaisesAtEnd", name="x"))
    pm.register(plugin(Journal), journal_config("after"))
    pm.freeze()
    core = make_core()
    core["trainer"].to_raise = TrainingError("a plugin's own TrainingError")

    failures = pm.after_training(core, "completed")

    assert core["trainer"].journal == [("after", "after_training")]
    assert [f.entry for f in failures] == [failing.key]
    assert failures[0].__cause__ is core["trainer"].to_raise


def test_a_child_failure_passes_through_its_owner_unchanged(start: Any) -> None:
    children = PluginManager()
    child = children.register(plugin(Boom), JournalConfig(kind="Boom", name="child"))
    children.freeze()
    parent = PluginManager()
    owner = parent.register(plugin(Parent), JournalConfig(kind="Parent", name="parent"))
    parent.freeze()
    core = make_core()
    core["trainer"].children = children

    start(parent, core)
    with pytest.raises(PluginFailure) as info:
        parent.after_update(core, losses={}, times={}, grad_norm=None)
    assert info.value.entry == child.key
    assert info.value.__cause__ is child.obj.error
    assert owner.calls[HOOKS.index("after_update")] == 1


def test_bind_compiles_the_per_update_events_for_its_own_core_only() -> None:
    pm = PluginManager()
    pm.register(plugin(Raises), JournalConfig(kind="Raises", name="r"))
    journal = pm.register(plugin(Journal), journal_config("j"))
    pm.freeze()
    bound, other = make_core(), make_core()
    bound["trainer"].to_raise = other["trainer"].to_raise = ValueError("x")
    pm.bind(bound)

    def dispatch(core: dict[str, Any]) -> PluginFailure:
        with pytest.raises(PluginFailure) as info:
            pm.after_update(core, losses={}, times={}, grad_norm=None)
        return info.value

    def compiled_frames(failure: PluginFailure) -> list[str]:
        files = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(failure.__traceback__)]
        return [f for f in files if f.startswith("<noether after_update dispatch")]

    failure = dispatch(bound)
    assert compiled_frames(failure)
    # the generated source is on record: the traceback shows the line that called the plugin
    shown = "".join(traceback.format_tb(failure.__traceback__))
    assert "raise _PluginFailure(" in shown
    assert not compiled_frames(dispatch(other))  # not the bound mapping
    # the event stopped at the failure both times: the entry after it never ran
    assert journal.calls[HOOKS.index("after_update")] == 0
    pm.after_accumulation(bound, None, {}, None, 0, 1)
    assert bound["trainer"].journal == [("j", "after_accumulation")]
    assert journal.calls[HOOKS.index("after_accumulation")] == 1


class UnitProbe:
    """Records, in ``at_eval``, its entry, the ``interval`` it got and who the writer says is logging."""

    Config = JournalConfig

    def __init__(self, config: JournalConfig) -> None:
        pass

    @hookimpl
    def at_eval(self, trainer: Any, config: JournalConfig, interval: str) -> None:
        trainer.journal.append((config.key, interval, trainer.writer.owner))


def test_at_eval_of_a_recurring_set_of_due_entries_is_compiled_and_behaves_as_the_general_path() -> None:
    pm = PluginManager()
    a = pm.register(plugin(UnitProbe), JournalConfig(kind="UnitProbe", name="a", every_n_updates=2))
    b = pm.register(plugin(UnitProbe), JournalConfig(kind="UnitProbe", name="b", every_n_epochs=1))
    boom = pm.register(plugin(Boom), JournalConfig(kind="Boom", name="boom", every_n_updates=3))
    pm.freeze()
    core = make_core()
    writer = core["trainer"].writer
    journal = core["trainer"].journal
    pm.owner_sink = writer
    pm.bind(core)

    def compiled(failure: PluginFailure) -> bool:
        files = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(failure.__traceback__)]
        return any(f.startswith("<noether at_eval dispatch") for f in files)

    for _ in range(3):  # the first time general, then compiled: each entry its own interval's unit
        pm.at_eval_tick(core, pm.tick([a, b]))
    assert journal == [("a", "update", "a"), ("b", "epoch", "b")] * 3
    assert writer.owner == "trainer"
    assert (a.calls[HOOKS.index("at_eval")], b.calls[HOOKS.index("at_eval")]) == (3, 3)
    journal.clear()
    pm.at_eval(core, [a, b], "eval")  # an interval given (evaluation-only runs) goes to every entry
    assert journal == [("a", "eval", "a"), ("b", "eval", "b")]

    journal.clear()
    failures = []
    for _ in range(3):
        with pytest.raises(PluginFailure) as info:
            pm.at_eval_tick(core, pm.tick([a, boom, b]))
        failures.append(info.value)
        assert writer.owner == "trainer"
    assert [(f.entry, f.hook) for f in failures] == [("boom", "at_eval")] * 3
    assert all(f.__cause__ is boom.obj.error for f in failures)
    assert [compiled(f) for f in failures] == [False, True, True]
    assert journal == [("a", "update", "a")] * 3  # the entry after the failure never ran
    assert boom.calls[HOOKS.index("at_eval")] == 3
    assert b.calls[HOOKS.index("at_eval")] == 4


def test_ticks_are_kept_per_set_of_due_entries_up_to_a_bound() -> None:
    pm = PluginManager()
    slots = [pm.register(plugin(UnitProbe), JournalConfig(kind="UnitProbe", name=f"e{i}")) for i in range(7)]
    pm.freeze()
    core = make_core()
    pm.owner_sink = core["trainer"].writer
    pm.bind(core)
    sets = [[s for i, s in enumerate(slots) if mask >> i & 1] for mask in range(1, 2 ** len(slots))]
    kept = [pm.tick(due) for due in sets[:MAX_TICKS]]
    assert [pm.tick(due) for due in sets[:MAX_TICKS]] == kept  # the very same objects
    beyond = sets[MAX_TICKS]
    assert pm.tick(beyond) is not pm.tick(beyond)  # worked out each time, so never compiled
    for _ in range(3):
        tick = pm.tick(beyond)
        pm.at_eval_tick(core, tick)
        assert tick.dispatch is None
    assert [entry for entry, _, _ in core["trainer"].journal] == [s.key for s in beyond] * 3
    assert list(pm.tick(sets[0]).owners) == sets[0]


def test_bind_before_freeze_raises() -> None:
    pm = PluginManager()
    pm.register(plugin(Journal), journal_config("a"))
    with pytest.raises(RuntimeError, match="after freeze"):
        pm.bind(make_core())


# ------------------------------------------------------------------------------------ timing


def test_durations_count_calls_exactly_and_time_a_slow_plugin(start: Any) -> None:
    pm = PluginManager()
    sleeper = pm.register(plugin(Sleeper), JournalConfig(kind="Sleeper", name="sleepy"))
    journal = pm.register(plugin(Journal), journal_config("j"))
    pm.freeze()
    core = make_core()

    start(pm, core)
    pm.before_training(core)
    for _ in range(3):
        pm.after_update(core, losses={}, times={}, grad_norm=None)
    pm.after_training(core, "completed")

    rows = pm.durations()
    assert rows[0][:2] == (sleeper, "after_update")  # slowest first
    assert rows[0][3] == 3
    assert rows[0][2] >= 3 * 0.004
    calls = {(slot.key, hook): n for slot, hook, _, n in rows}
    assert calls == {
        ("sleepy", "after_update"): 3,
        ("j", "before_training"): 1,
        ("j", "after_update"): 3,
        ("j", "after_training"): 1,
    }
    assert all(seconds >= 0 for _, _, seconds, _ in rows)
    assert pm.total_seconds(sleeper) == pytest.approx(rows[0][2])
    assert pm.total_seconds(journal) < pm.total_seconds(sleeper)
    assert [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)


# ------------------------------------------------------------------------------------ owner


def test_owner_sink_names_the_running_entry_and_is_restored(start: Any) -> None:
    pm = PluginManager()
    default = pm.register(plugin(OwnerProbe), JournalConfig(kind="OwnerProbe", name="lr"), is_default=True)
    user = pm.register(plugin(OwnerProbe), JournalConfig(kind="OwnerProbe", id="mine"))
    pm.register(plugin(Boom), JournalConfig(kind="Boom", name="boom"))
    pm.freeze()
    core = make_core()
    writer = core["trainer"].writer
    pm.owner_sink = writer
    assert (writer.owner, writer.owner_is_default) == ("trainer", False)

    start(pm, core)
    failures = pm.after_training(core, "completed")
    assert default.obj.seen == [("lr", True)]
    assert user.obj.seen == [("mine", False)]
    assert len(failures) == 1
    assert (writer.owner, writer.owner_is_default) == ("trainer", False)

    # also when the event ends in a failure: later trainer values are not the failed plugin's
    with pytest.raises(PluginFailure):
        pm.after_update(core, losses={}, times={}, grad_norm=None)
    assert default.obj.seen[-1] == ("lr", True)
    assert (writer.owner, writer.owner_is_default) == ("trainer", False)


def test_owner_is_restored_to_the_parent_after_child_dispatch(start: Any) -> None:
    children = PluginManager()
    child = children.register(plugin(OwnerProbe), JournalConfig(kind="OwnerProbe", name="child"))
    children.freeze()
    parent = PluginManager()
    owner = parent.register(plugin(Parent), JournalConfig(kind="Parent", name="parent"), is_default=True)
    parent.freeze()
    core = make_core()
    writer = core["trainer"].writer
    parent.owner_sink = children.owner_sink = writer
    core["trainer"].children = children

    start(parent, core)
    parent.after_update(core, losses={}, times={}, grad_norm=None)

    assert child.obj.seen == [("child", False)]
    assert owner.obj.owners == ["parent", "parent"]
    assert (writer.owner, writer.owner_is_default) == ("trainer", False)


# ------------------------------------------------------------------------------------ pluggy's own checks


def test_pluggy_rejects_an_argument_not_in_the_spec() -> None:
    # bypass inspect_plugin, which would refuse this first, to reach pluggy's own check at register
    unchecked = Plugin(
        source=PluginSource(
            "UnknownArgument", "sample_plugins:UnknownArgument", "noether-test-plugins", "1.0.0"
        ),
        target=sample_plugins.UnknownArgument(),  # an object of hook functions
        config_class=CallbackConfig,
        hooks=("after_update",),
        is_class=False,
        stateful=False,
    )
    pm = PluginManager()
    with pytest.raises(PluginValidationError) as info:
        pm.register(unchecked, CallbackConfig(kind="UnknownArgument"))
    err = info.value
    assert isinstance(err.__cause__, pluggy.PluginValidationError)
    assert (err.kind, err.distribution, err.version) == ("UnknownArgument", "noether-test-plugins", "1.0.0")
    assert "lossez" in str(err)
    assert pm.slots == []

    # the failed registration left nothing behind: a good entry registers and runs alone
    good = pm.register(plugin(Journal), journal_config("good"))
    pm.freeze()
    core = make_core()
    pm.after_update(core, losses={}, times={}, grad_norm=None)
    assert core["trainer"].journal == [("good", "after_update")]
    assert good.index == 0


def test_pluggy_rejects_an_unknown_hook_at_register() -> None:
    unchecked = Plugin(
        source=PluginSource("Misspelled", "sample_plugins:Misspelled"),
        target=sample_plugins.Misspelled(),
        config_class=CallbackConfig,
        hooks=("after_updat",),
        is_class=False,
        stateful=False,
    )
    pm = PluginManager()
    with pytest.raises(PluginValidationError, match="after_updat"):
        pm.register(unchecked, CallbackConfig(kind="Misspelled"))
    pm.register(plugin(Journal), journal_config("good"))
    pm.freeze()
    assert [s.key for s in pm.slots] == ["good"]


def test_a_constructor_that_fails_is_a_load_error_naming_the_plugin() -> None:
    # bypassing inspect_plugin: Unmarked has no constructor taking a config
    unchecked = Plugin(
        source=PluginSource("NoInit", "sample_plugins:StopAt", "noether-test-plugins", "1.0.0"),
        target=sample_plugins.Unmarked,
        config_class=CallbackConfig,
        hooks=(),
        is_class=True,
        stateful=False,
    )
    pm = PluginManager()
    with pytest.raises(PluginLoadError) as info:
        pm.register(unchecked, CallbackConfig(kind="NoInit", name="entry"))
    err = info.value
    assert (err.kind, err.distribution, err.version) == ("NoInit", "noether-test-plugins", "1.0.0")
    assert "'entry'" in str(err)
    assert "TypeError" in str(err)
    assert isinstance(err.__cause__, TypeError)
    assert pm.slots == []


def test_function_plugin_entries_register_side_by_side() -> None:
    heartbeat = inspect_plugin(PluginSource("heartbeat", "sample_function_plugin"), sample_function_plugin)
    pm = PluginManager()
    for n in range(3):
        pm.register(heartbeat, CallbackConfig(kind="heartbeat", name=f"hb{n}", every_n_samples=4 * (n + 1)))
    pm.freeze()
    core = make_core(2)
    pm.owner_sink = core["trainer"].writer
    pm.at_eval(core, pm.scheduled)
    assert core["trainer"].writer.keys() == ["heartbeat/S4", "heartbeat/S8", "heartbeat/S12"]


def test_each_entry_has_its_own_state_dict_at_every_event(start: Any) -> None:
    """The ``state`` argument: one dict per entry, the same object at every event, by either path."""
    counting = plugin(importlib.import_module("sample_counting_plugin"), "counting")
    config = counting.config_class
    pm = PluginManager()
    one = pm.register(counting, config(kind="counting", name="one", every_n_updates=1))
    two = pm.register(counting, config(kind="counting", name="two", every_n_updates=1, step=3, label="x"))
    pm.freeze()
    core = make_core(1)
    pm.owner_sink = core["trainer"].writer
    start(pm, core)
    for _ in range(4):
        pm.after_update(core, losses={}, times={}, grad_norm=None)
    pm.at_eval(core, pm.scheduled)
    assert one.state == {"n": 4}
    assert two.state == {"n": 12}
    assert core["trainer"].writer.get("updates/U1") == 4
    assert core["trainer"].writer.get("x/U1") == 12
