"""Tests for ``noether_core.run.counter``: RunEnd and Counter."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noether_core.run.counter import Counter, RunEnd, advance, seek


def make(end: RunEnd, upe: int = 10, ebs: int = 32, update: int = 0) -> Counter:
    return Counter(end=end, updates_per_epoch=upe, effective_batch_size=ebs, update=update)


# --- RunEnd ---------------------------------------------------------------------------------------------


def test_run_end_total_updates() -> None:
    assert RunEnd("epoch", 3).total_updates(updates_per_epoch=10, effective_batch_size=32) == 30
    assert RunEnd("update", 25).total_updates(updates_per_epoch=10, effective_batch_size=32) == 25
    # sample end: exact multiple
    assert RunEnd("sample", 320).total_updates(updates_per_epoch=10, effective_batch_size=32) == 10
    # sample end rounds UP: at least `value` samples are seen
    assert RunEnd("sample", 321).total_updates(updates_per_epoch=10, effective_batch_size=32) == 11
    assert RunEnd("sample", 1000).total_updates(updates_per_epoch=10, effective_batch_size=32) == 32
    assert RunEnd("sample", 1).total_updates(updates_per_epoch=10, effective_batch_size=32) == 1
    assert RunEnd("sample", 0).total_updates(updates_per_epoch=10, effective_batch_size=32) == 0
    # exact for sample counts a float cannot hold
    assert RunEnd("sample", 2**53 + 1).total_updates(updates_per_epoch=1, effective_batch_size=1) == 2**53 + 1
    assert (
        RunEnd("sample", 10**20 + 1).total_updates(updates_per_epoch=1, effective_batch_size=10) == 10**19 + 1
    )


@settings(max_examples=100, deadline=None)
@given(value=st.integers(0, 10**6), ebs=st.integers(1, 4096))
def test_run_end_sample_is_smallest_covering_update_count(value: int, ebs: int) -> None:
    total = RunEnd("sample", value).total_updates(updates_per_epoch=7, effective_batch_size=ebs)
    assert total * ebs >= value
    assert total == 0 or (total - 1) * ebs < value


def test_run_end_str_and_validation() -> None:
    assert str(RunEnd("epoch", 10)) == "max_epochs=10"
    assert str(RunEnd("update", 5)) == "max_updates=5"
    assert str(RunEnd("sample", 7)) == "max_samples=7"
    with pytest.raises(ValueError, match="unit"):
        RunEnd("epochs", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="value"):
        RunEnd("update", -1)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        RunEnd("update", 1).value = 2  # type: ignore[misc]
    assert RunEnd("update", 3) == RunEnd("update", 3)


# --- Counter --------------------------------------------------------------------------------------------


def test_counter_derived_fields() -> None:
    c = make(RunEnd("epoch", 3), upe=10, ebs=32, update=10)
    assert c.update == 10
    assert c.epoch == 1
    assert c.sample == 320
    assert c.epoch_float == 1.0
    assert c.update_in_epoch == 0
    assert c.is_epoch_end
    assert not c.is_finished
    assert c.tag == "E1_U10_S320"
    assert c.total_updates == 30
    assert c.max_epochs == 3
    assert c.max_samples == 960
    assert c.updates_per_epoch == 10
    assert c.effective_batch_size == 32
    assert c.end == RunEnd("epoch", 3)
    assert repr(c) == "Counter(E1_U10_S320, end=max_epochs=3, total_updates=30)"


def test_counter_mid_epoch() -> None:
    c = make(RunEnd("epoch", 3), upe=10, ebs=32, update=13)
    assert c.epoch == 1
    assert c.sample == 416
    assert c.epoch_float == pytest.approx(1.3)
    assert c.update_in_epoch == 3
    assert not c.is_epoch_end
    assert c.tag == "E1_U13_S416"


def test_counter_start_and_advance() -> None:
    c = make(RunEnd("update", 4), upe=3, ebs=5)
    assert (c.update, c.epoch, c.sample, c.update_in_epoch) == (0, 0, 0, 0)
    assert c.tag == "E0_U0_S0"
    # update 0 is not the end of an epoch, even though 0 % upe == 0
    assert not c.is_epoch_end
    assert not c.is_finished
    seen = []
    while not c.is_finished:
        advance(c)
        seen.append((c.update, c.epoch, c.sample, c.update_in_epoch, c.is_epoch_end, c.tag))
    assert seen == [
        (1, 0, 5, 1, False, "E0_U1_S5"),
        (2, 0, 10, 2, False, "E0_U2_S10"),
        (3, 1, 15, 0, True, "E1_U3_S15"),
        (4, 1, 20, 1, False, "E1_U4_S20"),
    ]
    assert c.update == c.total_updates == 4


def test_counter_ends() -> None:
    # sample end rounds up; the last epoch may be partial
    c = make(RunEnd("sample", 1000), upe=10, ebs=32)
    assert c.total_updates == 32
    assert c.max_samples == 1024
    assert c.max_samples >= 1000
    assert c.max_epochs == 4
    seek(c, 31)
    assert not c.is_finished
    advance(c)
    assert c.is_finished
    assert c.sample == 1024

    c = make(RunEnd("update", 25), upe=10, ebs=8)
    assert c.total_updates == 25
    assert c.max_epochs == 3
    assert c.max_samples == 200

    c = make(RunEnd("epoch", 2), upe=7, ebs=3)
    assert c.total_updates == 14
    assert c.max_epochs == 2
    seek(c, 14)
    assert c.is_finished
    assert c.is_epoch_end
    assert c.tag == "E2_U14_S42"


def test_counter_zero_length_run_is_finished() -> None:
    c = make(RunEnd("update", 0))
    assert c.total_updates == 0
    assert c.is_finished
    assert c.max_epochs == 0


def test_counter_seek_bounds() -> None:
    c = make(RunEnd("update", 20), upe=10, ebs=4)
    seek(c, 20)
    assert c.update == 20
    seek(c, 0)
    assert c.update == 0
    seek(c, 7)
    assert c.tag == "E0_U7_S28"
    with pytest.raises(ValueError, match=r"update 21 is outside this run \(0\.\.20\)"):
        seek(c, 21)
    with pytest.raises(ValueError, match=r"update -1 is outside this run \(0\.\.20\)"):
        seek(c, -1)
    assert c.update == 7  # a failed seek leaves the position alone


def test_counter_constructor_validation() -> None:
    with pytest.raises(ValueError, match="updates_per_epoch must be >= 1, got 0"):
        Counter(end=RunEnd("update", 1), updates_per_epoch=0, effective_batch_size=1)
    with pytest.raises(ValueError, match="effective_batch_size must be >= 1, got 0"):
        Counter(end=RunEnd("update", 1), updates_per_epoch=1, effective_batch_size=0)
    with pytest.raises(ValueError, match="effective_batch_size must be >= 1, got -3"):
        Counter(end=RunEnd("update", 1), updates_per_epoch=1, effective_batch_size=-3)
    # the starting update is bounds-checked like a resume
    with pytest.raises(ValueError, match="outside this run"):
        Counter(end=RunEnd("update", 5), updates_per_epoch=1, effective_batch_size=1, update=6)
    with pytest.raises(ValueError, match="outside this run"):
        Counter(end=RunEnd("update", 5), updates_per_epoch=1, effective_batch_size=1, update=-1)
    with pytest.raises(TypeError):
        Counter(RunEnd("update", 5), 1, 1)  # type: ignore[call-arg]
    assert make(RunEnd("update", 5), update=5).is_finished


def test_counter_is_read_only() -> None:
    c = make(RunEnd("update", 5))
    with pytest.raises(AttributeError):
        c.update = 3  # type: ignore[misc]
    with pytest.raises(AttributeError):
        c.extra = 1  # type: ignore[attr-defined]
    # what a plugin gets cannot move the run: only the trainer's functions do
    assert not hasattr(c, "advance")
    assert not hasattr(c, "seek")


@settings(max_examples=100, deadline=None)
@given(
    upe=st.integers(1, 50),
    ebs=st.integers(1, 512),
    end_unit=st.sampled_from(["epoch", "update", "sample"]),
    end_value=st.integers(1, 200),
    data=st.data(),
)
def test_counter_fields_are_functions_of_update(
    upe: int, ebs: int, end_unit: str, end_value: int, data: st.DataObject
) -> None:
    c = make(RunEnd(end_unit, end_value), upe=upe, ebs=ebs)  # type: ignore[arg-type]
    u = data.draw(st.integers(0, c.total_updates))
    seek(c, u)
    assert c.epoch * upe + c.update_in_epoch == u
    assert 0 <= c.update_in_epoch < upe
    assert c.sample == u * ebs
    assert c.epoch_float == pytest.approx(u / upe)
    assert c.is_epoch_end == (u > 0 and c.update_in_epoch == 0)
    assert c.is_finished == (u == c.total_updates)
    assert c.tag == f"E{c.epoch}_U{u}_S{u * ebs}"
    assert (c.max_epochs - 1) * upe < c.total_updates <= c.max_epochs * upe
