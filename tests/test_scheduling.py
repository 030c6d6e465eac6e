"""Tests for ``noether_core.plugins.scheduling``: Interval, IntervalScheduler and DueCursor.

The property test checks the closed-form scheduler against a brute-force run simulated sample by sample,
micro-batch by micro-batch, rank by rank, that derives due-ness from first principles.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noether_core.plugins.scheduling import INTERVAL_FIELDS, DueCursor, Interval, IntervalScheduler
from noether_core.run.counter import Counter, RunEnd, advance


@dataclass(eq=False)
class Entry:
    """A scheduled thing; ``eq=False`` so two entries with equal intervals stay distinct."""

    name: str
    interval: Interval | None


@dataclass(frozen=True)
class Geometry:
    micro: int
    accum: int
    world: int
    dataset_len: int

    @property
    def ebs(self) -> int:
        return self.micro * self.accum * self.world

    @property
    def updates_per_epoch(self) -> int:
        return self.dataset_len // self.ebs


@dataclass
class UpdateRecord:
    """What the brute force saw during one update (1-based ``update``)."""

    update: int
    samples_before: int
    samples_after: int
    # global (1-based) indices of every sample consumed by this update, over all ranks and micro-batches
    sample_indices: list[int] = field(default_factory=list)
    ends_epoch: bool = False
    completed_epochs: int = 0


@dataclass
class Simulation:
    records: list[UpdateRecord]
    end_update: int  # the update after which the run ends
    updates_per_epoch: int  # counted by the simulation, not computed


def simulate(geo: Geometry, end: RunEnd, extra_updates: int) -> Simulation:
    """Run epochs of a drop-last loader until the end is reached, then ``extra_updates`` more.

    Each update is ``accum`` micro-steps; in each micro-step every one of ``world`` ranks consumes
    ``micro`` samples, one at a time, each getting the next global sample index.
    """
    records: list[UpdateRecord] = []
    global_sample = 0
    completed_epochs = 0
    end_update: int | None = None
    counted_upe: int | None = None
    after_end = 0
    while True:
        # one epoch: the sampler yields dataset_len indices; an update needs a full effective batch
        remaining = geo.dataset_len
        updates_this_epoch = 0
        stop = False
        assert remaining >= geo.ebs, "the dataset must hold a full effective batch"
        while remaining >= geo.ebs:
            rec = UpdateRecord(update=len(records) + 1, samples_before=global_sample, samples_after=0)
            for _step in range(geo.accum):
                for _rank in range(geo.world):
                    for _i in range(geo.micro):
                        global_sample += 1
                        remaining -= 1
                        rec.sample_indices.append(global_sample)
            rec.samples_after = global_sample
            updates_this_epoch += 1
            records.append(rec)
            if remaining < geo.ebs:  # no full batch left: this update ends the epoch
                completed_epochs += 1
                rec.ends_epoch = True
                if counted_upe is None:
                    counted_upe = updates_this_epoch
            rec.completed_epochs = completed_epochs
            if end_update is None:
                reached = (
                    (end.unit == "update" and rec.update >= end.value)
                    or (end.unit == "sample" and global_sample >= end.value)
                    or (end.unit == "epoch" and completed_epochs >= end.value)
                )
                if reached:
                    end_update = rec.update
            else:
                after_end += 1
            if end_update is not None and after_end >= extra_updates:
                stop = True
                break
        if stop:
            break
    assert end_update is not None
    assert counted_upe is not None, "simulate at least one full epoch"
    return Simulation(records, end_update, counted_upe)


def brute_force_due(sim: Simulation, interval: Interval) -> set[int]:
    """Updates (over the whole simulated horizon) at which ``interval`` is due, from first principles."""
    n = interval.every
    due: set[int] = set()
    for rec in sim.records:
        if interval.unit == "update":
            hit = rec.update % n == 0
        elif interval.unit == "epoch":
            hit = rec.ends_epoch and rec.completed_epochs % n == 0
        else:
            # some boundary k*n (k >= 1) is reached by a sample consumed in this update
            hit = any(idx % n == 0 for idx in rec.sample_indices)
            # ... which is the same as some k*n lying in (samples_before, samples_after]
            candidates = range(max(1, rec.samples_before // n), rec.samples_after // n + 2)
            assert hit == any(rec.samples_before < k * n <= rec.samples_after for k in candidates)
        if hit:
            due.add(rec.update)
    return due


@st.composite
def geometries(draw: st.DrawFn) -> Geometry:
    micro = draw(st.integers(1, 6))
    accum = draw(st.integers(1, 4))
    world = draw(st.integers(1, 4))
    ebs = micro * accum * world
    # at least one full batch; remainder dropped at each epoch's end
    dataset_len = draw(st.integers(ebs, 7 * ebs + ebs - 1))
    return Geometry(micro, accum, world, dataset_len)


@st.composite
def run_ends(draw: st.DrawFn, geo: Geometry) -> RunEnd:
    unit = draw(st.sampled_from(["epoch", "update", "sample"]))
    if unit == "epoch":
        return RunEnd("epoch", draw(st.integers(1, 4)))
    if unit == "update":
        return RunEnd("update", draw(st.integers(1, 30)))
    return RunEnd("sample", draw(st.integers(1, 30 * geo.ebs)))


@st.composite
def intervals(draw: st.DrawFn, geo: Geometry) -> Interval:
    unit = draw(st.sampled_from(["epoch", "update", "sample"]))
    if unit == "epoch":
        return Interval("epoch", draw(st.integers(1, 4)))
    if unit == "update":
        return Interval("update", draw(st.integers(1, 12)))
    ebs = geo.ebs
    n = draw(
        st.one_of(
            st.integers(1, ebs),  # smaller than (or equal to) the effective batch size
            st.integers(1, 4 * ebs),  # anything, mostly non-divisors
            st.integers(1, 4).map(lambda k: k * ebs),  # multiples of it
            st.integers(1, 3).map(lambda k: k * ebs + 1),  # just past a multiple
        )
    )
    return Interval("sample", n)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Geometry, RunEnd, list[Entry]]:
    geo = draw(geometries())
    end = draw(run_ends(geo))
    ivs = draw(st.lists(st.one_of(st.none(), intervals(geo)), min_size=1, max_size=4))
    entries = [Entry(f"e{i}", iv) for i, iv in enumerate(ivs)]
    return geo, end, entries


def due_list(sched: IntervalScheduler, interval: Interval, start: int = 0) -> list[int]:
    """``due_updates`` as a list, cut off so that a non-advancing generator fails instead of hanging."""
    return list(itertools.islice(sched.due_updates(interval, start), sched.total_updates + 2))


def _expected_next(due: list[int], after: int) -> int | None:
    return next((d for d in due if d > after), None)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), scenario=scenarios())
def test_scheduler_matches_brute_force(
    data: st.DataObject, scenario: tuple[Geometry, RunEnd, list[Entry]]
) -> None:
    geo, end, entries = scenario
    extra = 2 * geo.updates_per_epoch + 3
    sim = simulate(geo, end, extra_updates=extra)
    assert sim.updates_per_epoch == geo.updates_per_epoch

    counter = Counter(end=end, updates_per_epoch=geo.updates_per_epoch, effective_batch_size=geo.ebs)
    total = counter.total_updates
    assert total == sim.end_update
    sched = IntervalScheduler(geo.updates_per_epoch, geo.ebs, total)
    horizon = len(sim.records)

    # the counter's derived position matches what the simulation counted at every update
    for rec in sim.records[:total]:
        advance(counter)
        assert counter.update == rec.update
        assert counter.sample == rec.samples_after
        assert counter.epoch == rec.completed_epochs
        assert counter.is_epoch_end == rec.ends_epoch
    assert counter.is_finished

    expected_timeline: dict[int, list[Entry]] = {}
    for entry in entries:
        if entry.interval is None:
            continue
        iv = entry.interval
        due_all = brute_force_due(sim, iv)
        # is_due answers for any tick, also past the run's end
        assert not sched.is_due(iv, 0)
        for u in range(1, horizon + 1):
            assert sched.is_due(iv, u) == (u in due_all), (iv, u)
        due = sorted(d for d in due_all if d <= total)
        assert due_list(sched, iv) == due
        for after in range(total + 1):
            nxt = _expected_next(due, after)
            assert sched.next_due(iv, after) == nxt, (iv, after)
            until = sched.updates_until_due(iv, after)
            assert until == (None if nxt is None else nxt - after)
            assert until != 0
            assert due_list(sched, iv, start=after) == [d for d in due if d > after]
            # counted, not enumerated (noether schedule, CheckpointCallback)
            assert sched.count_due(iv, after) == len([d for d in due if d > after])
        for d in due:
            expected_timeline.setdefault(d, []).append(entry)

    # timeline: ticks ascending, each tick's entries in the given entry order
    timeline = sched.timeline(entries)
    assert list(timeline) == sorted(expected_timeline)
    assert timeline == expected_timeline
    for u in range(1, total + 1):
        assert sched.due(entries, u) == expected_timeline.get(u, [])

    # an uninterrupted cursor, asked at every tick
    cursor = sched.cursor(entries)
    assert isinstance(cursor, DueCursor)
    assert list(cursor.entries) == [e for e in entries if e.interval is not None]
    for u in range(1, total + 1):
        assert list(cursor.due(u)) == expected_timeline.get(u, []), u
    assert list(cursor.due(total + 1)) == []

    # resume at r: a fresh cursor yields the uninterrupted schedule restricted to updates > r
    r = data.draw(st.integers(0, total), label="resume")
    # the resume tick itself was dispatched before the checkpoint: it is not due again
    assert list(DueCursor(sched, entries, r).due(r)) == []
    resumed = DueCursor(sched, entries, r)
    got = {u: list(resumed.due(u)) for u in range(r + 1, total + 1)}
    assert {u: es for u, es in got.items() if es} == {u: es for u, es in expected_timeline.items() if u > r}
    assert sched.timeline(entries, start=r) == {u: es for u, es in expected_timeline.items() if u > r}
    assert list(sched.iter_timeline(entries, start=r)) == [
        (u, es) for u, es in sorted(expected_timeline.items()) if u > r
    ]

    # seek on a used cursor (possibly after it ran past r) also repositions exactly
    cursor.seek(r)
    assert list(cursor.due(r)) == []
    cursor.seek(r)
    got = {u: list(cursor.due(u)) for u in range(r + 1, total + 1)}
    assert {u: es for u, es in got.items() if es} == {u: es for u, es in expected_timeline.items() if u > r}

    # asked only at some increasing ticks, the cursor reports exactly the entries due at those ticks
    ticks = sorted(set(data.draw(st.lists(st.integers(1, max(total, 1)), max_size=8), label="ticks")))
    sparse = sched.cursor(entries)
    for u in ticks:
        assert list(sparse.due(u)) == expected_timeline.get(u, [])


# --- Interval -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "short", "verbose"),
    [
        (Interval("epoch", 1), "E1", "every_n_epochs=1"),
        (Interval("update", 10), "U10", "every_n_updates=10"),
        (Interval("sample", 100), "S100", "every_n_samples=100"),
    ],
)
def test_interval_strings(interval: Interval, short: str, verbose: str) -> None:
    assert interval.short == short
    assert str(interval) == short
    assert interval.verbose == verbose
    assert Interval.parse(short) == interval
    assert Interval.parse(str(interval)) == interval


def test_interval_verbose_names_are_the_config_fields() -> None:
    assert INTERVAL_FIELDS == ("every_n_epochs", "every_n_updates", "every_n_samples")
    for unit, name in zip(("epoch", "update", "sample"), INTERVAL_FIELDS, strict=True):
        assert Interval(unit, 3).verbose == f"{name}=3"  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(unit=st.sampled_from(["epoch", "update", "sample"]), n=st.integers(1, 10**12))
def test_interval_parse_round_trip(unit: str, n: int) -> None:
    iv = Interval(unit, n)  # type: ignore[arg-type]
    assert Interval.parse(iv.short) == iv
    assert Interval.parse(iv.short).short == iv.short


@pytest.mark.parametrize(
    "text", ["", "U", "U0", "X10", "u10", "U-1", "U1.5", " U10", "U10 ", "10", "U²", "U٣", "E+1"]
)
def test_interval_parse_errors(text: str) -> None:
    with pytest.raises(ValueError, match="not an interval"):
        Interval.parse(text)


def test_interval_validation() -> None:
    with pytest.raises(ValueError, match="every"):
        Interval("update", 0)
    with pytest.raises(ValueError, match="unit"):
        Interval("updates", 10)  # type: ignore[arg-type]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Interval("update", 1).every = 2  # type: ignore[misc]
    assert Interval("update", 10) == Interval("update", 10)
    assert hash(Interval("update", 10)) == hash(Interval("update", 10))


def test_from_fields() -> None:
    assert Interval.from_fields() is None
    assert Interval.from_fields(None, None, None) is None
    assert Interval.from_fields(every_n_epochs=2) == Interval("epoch", 2)
    assert Interval.from_fields(every_n_updates=10) == Interval("update", 10)
    assert Interval.from_fields(every_n_samples=100) == Interval("sample", 100)
    with pytest.raises(ValueError, match="every"):
        Interval.from_fields(every_n_updates=0)


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"every_n_epochs": 1, "every_n_updates": 10}, "every_n_epochs, every_n_updates"),
        ({"every_n_updates": 10, "every_n_samples": 5}, "every_n_updates, every_n_samples"),
        ({"every_n_epochs": 1, "every_n_samples": 5}, "every_n_epochs, every_n_samples"),
        (
            {"every_n_epochs": 1, "every_n_updates": 2, "every_n_samples": 3},
            "every_n_epochs, every_n_updates, every_n_samples",
        ),
    ],
)
def test_from_fields_two_fields(kwargs: dict[str, int], names: str) -> None:
    with pytest.raises(ValueError, match="exactly one") as exc:
        Interval.from_fields(**kwargs)
    assert str(exc.value).endswith(f"got {names}")


# --- IntervalScheduler: pinned numbers ------------------------------------------------------------------


def test_updates_until_due_update_interval() -> None:
    sched = IntervalScheduler(updates_per_epoch=100, effective_batch_size=1, total_updates=1000)
    u10 = Interval("update", 10)
    assert sched.updates_until_due(u10, 3) == 7
    assert sched.updates_until_due(u10, 0) == 10
    # exactly at a multiple: the full period, never 0
    assert sched.updates_until_due(u10, 10) == 10
    assert sched.updates_until_due(u10, 20) == 10
    assert sched.next_due(u10, 3) == 10
    assert sched.next_due(u10, 10) == 20
    # none left past the end
    assert sched.next_due(u10, 990) == 1000
    assert sched.next_due(u10, 1000) is None
    assert sched.updates_until_due(u10, 995) == 5
    assert sched.updates_until_due(u10, 1000) is None
    assert sched.updates_per_interval(u10) == 10.0


def test_update_interval_is_due() -> None:
    sched = IntervalScheduler(updates_per_epoch=7, effective_batch_size=3, total_updates=40)
    u10 = Interval("update", 10)
    assert [u for u in range(0, 41) if sched.is_due(u10, u)] == [10, 20, 30, 40]
    assert due_list(sched, u10) == [10, 20, 30, 40]
    assert due_list(sched, u10, start=20) == [30, 40]
    # update 0 (before any update) is never due
    assert not sched.is_due(Interval("update", 1), 0)
    assert sched.next_due(Interval("update", 1), -5) == 1


def test_sample_interval_smaller_than_batch_fires_once_per_update() -> None:
    # ebs=100, n=30: every update crosses one or more multiples of 30, but fires once
    sched = IntervalScheduler(updates_per_epoch=10, effective_batch_size=100, total_updates=6)
    s30 = Interval("sample", 30)
    assert [sched.is_due(s30, u) for u in range(1, 7)] == [True] * 6
    assert due_list(sched, s30) == [1, 2, 3, 4, 5, 6]
    assert [sched.updates_until_due(s30, u) for u in range(6)] == [1] * 6
    assert sched.updates_until_due(s30, 6) is None
    assert sched.updates_per_interval(s30) == 1.0
    entry = Entry("a", s30)
    assert sched.timeline([entry]) == {u: [entry] for u in range(1, 7)}


def test_sample_interval_not_dividing_batch() -> None:
    # ebs=32, n=100: samples 32, 64, 96, 128 (crosses 100), ..., 224 (200), 320 (300), 416 (400)
    sched = IntervalScheduler(updates_per_epoch=1000, effective_batch_size=32, total_updates=13)
    s100 = Interval("sample", 100)
    assert due_list(sched, s100) == [4, 7, 10, 13]
    assert sched.next_due(s100, 0) == 4
    assert sched.next_due(s100, 4) == 7
    assert sched.updates_until_due(s100, 5) == 2
    assert sched.next_due(s100, 13) is None
    assert sched.updates_per_interval(s100) == pytest.approx(3.125)
    # a boundary hit exactly by an update's last sample belongs to that update
    s64 = Interval("sample", 64)
    assert [u for u in range(1, 9) if sched.is_due(s64, u)] == [2, 4, 6, 8]


def test_sample_interval_exact_for_huge_counts() -> None:
    # float division would round 2**53 + 1 and land on the wrong update
    big = 2**53 + 1
    sched = IntervalScheduler(updates_per_epoch=1, effective_batch_size=1, total_updates=10**18)
    s = Interval("sample", big)
    assert sched.next_due(s, 0) == big
    assert sched.is_due(s, big)
    assert not sched.is_due(s, big - 1)


def test_epoch_interval() -> None:
    sched = IntervalScheduler(updates_per_epoch=5, effective_batch_size=8, total_updates=20)
    e1, e2 = Interval("epoch", 1), Interval("epoch", 2)
    assert due_list(sched, e1) == [5, 10, 15, 20]
    assert due_list(sched, e2) == [10, 20]
    assert [u for u in range(0, 21) if sched.is_due(e2, u)] == [10, 20]
    assert sched.updates_until_due(e1, 3) == 2
    assert sched.updates_until_due(e1, 5) == 5
    assert sched.updates_until_due(e2, 3) == 7
    assert sched.updates_until_due(e2, 10) == 10
    assert sched.updates_until_due(e2, 20) is None
    assert sched.updates_per_interval(e1) == 5.0
    assert sched.updates_per_interval(e2) == 10.0


def test_epoch_interval_with_partial_last_epoch() -> None:
    # the run ends part-way through epoch 3: no forced final invocation
    sched = IntervalScheduler(updates_per_epoch=5, effective_batch_size=8, total_updates=13)
    assert due_list(sched, Interval("epoch", 1)) == [5, 10]
    assert sched.next_due(Interval("epoch", 1), 10) is None


def test_timeline_follows_entry_order() -> None:
    sched = IntervalScheduler(updates_per_epoch=4, effective_batch_size=10, total_updates=8)
    late = Entry("late", Interval("update", 4))
    none = Entry("none", None)
    early = Entry("early", Interval("update", 2))
    epoch = Entry("epoch", Interval("epoch", 1))
    sample = Entry("sample", Interval("sample", 25))  # samples 10,20,30(25),40,50(50),60,70(75),80
    entries = [late, none, epoch, early, sample]
    assert sched.timeline(entries) == {
        2: [early],
        3: [sample],
        4: [late, epoch, early],
        5: [sample],
        6: [early],
        8: [late, epoch, early, sample],
    }
    assert list(sched.timeline(entries)) == [2, 3, 4, 5, 6, 8]
    # reversing the entries reverses each tick's order
    assert sched.timeline(entries[::-1])[8] == [sample, early, epoch, late]
    assert sched.due(entries, 4) == [late, epoch, early]
    assert sched.due(entries, 7) == []
    assert sched.timeline(entries, start=4) == {5: [sample], 6: [early], 8: [late, epoch, early, sample]}
    assert sched.timeline([none]) == {}


def test_cursor_examples() -> None:
    sched = IntervalScheduler(updates_per_epoch=4, effective_batch_size=10, total_updates=8)
    a = Entry("a", Interval("update", 3))
    b = Entry("b", Interval("epoch", 1))
    c = Entry("c", None)
    cursor = sched.cursor([a, b, c])
    assert list(cursor.entries) == [a, b]
    assert [list(cursor.due(u)) for u in range(1, 10)] == [[], [], [a], [b], [], [a], [], [b], []]
    resumed = sched.cursor([a, b, c], update=4)
    assert [list(resumed.due(u)) for u in range(5, 9)] == [[], [a], [], [b]]
    cursor.seek(2)
    assert list(cursor.due(3)) == [a]
    # skipping ticks: an entry whose due tick was passed does not fire late
    cursor.seek(0)
    assert list(cursor.due(5)) == []
    assert list(cursor.due(6)) == [a]
    empty = sched.cursor([c])
    assert list(empty.due(1)) == []


def test_scheduler_validation() -> None:
    with pytest.raises(ValueError, match="updates_per_epoch"):
        IntervalScheduler(updates_per_epoch=0, effective_batch_size=1, total_updates=1)
    with pytest.raises(ValueError, match="effective_batch_size"):
        IntervalScheduler(updates_per_epoch=1, effective_batch_size=0, total_updates=1)
    with pytest.raises(ValueError, match="total_updates"):
        IntervalScheduler(updates_per_epoch=1, effective_batch_size=1, total_updates=-1)
    sched = IntervalScheduler(updates_per_epoch=1, effective_batch_size=1, total_updates=0)
    assert due_list(sched, Interval("update", 1)) == []
    assert sched.next_due(Interval("update", 1), 0) is None


@settings(max_examples=200, deadline=None)
@given(
    upe=st.integers(1, 7),
    ebs=st.integers(1, 12),
    total=st.integers(1, 400),
    consumer=st.tuples(st.sampled_from(["epoch", "update", "sample"]), st.integers(1, 40)),
    producers=st.lists(
        st.tuples(st.sampled_from(["epoch", "update", "sample"]), st.integers(1, 40)), max_size=3
    ),
)
def test_missed_evaluations_are_counted_from_one_period(
    upe: int, ebs: int, total: int, consumer: tuple[str, int], producers: list[tuple[str, int]]
) -> None:
    """The metric-dependency check counts a consumer's ticks that no producer covers from one period
    of the patterns, never the whole run; it agrees with looking at every tick."""
    from noether_core.run.metric_dependencies import _missed

    sched = IntervalScheduler(upe, ebs, total)
    c = Interval(*consumer)  # type: ignore[arg-type]
    ps = [Interval(*p) for p in producers]  # type: ignore[arg-type]
    missed = [u for u in sched.due_updates(c) if not any(sched.is_due(p, u) for p in ps)]
    assert _missed(sched, c, ps) == (len(missed), missed[0] if missed else 0)


def test_a_billion_updates_are_counted_at_once() -> None:
    sched = IntervalScheduler(7, 3, 10**9)
    assert sched.count_due(Interval("sample", 10)) == 3 * 10**8
    assert sched.count_due(Interval("epoch", 2), start=10) == 10**9 // 14
    first = list(itertools.islice(sched.iter_timeline([Entry("u4", Interval("update", 4))]), 3))
    assert [u for u, _ in first] == [4, 8, 12]
