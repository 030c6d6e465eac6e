from __future__ import annotations

import pytest

from noether_core.errors import NoetherError, UnknownMetricDirectionError
from noether_core.io.metric_properties import DEFAULT_PATTERNS, MetricProperties, Ordinality


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("val/loss/total", "lower"),
        ("loss/online/total/U10", "lower"),
        ("test/error_rate", "lower"),
        ("train_accuracy", "higher"),
        ("val/Accuracy/top1", "higher"),
        ("val/AUC", "higher"),
        ("val/f1/macro", "higher"),
        ("loss_weight/decay", "neutral"),  # the namespace pattern wins over *loss*
        ("optim/lr/encoder", "neutral"),
        ("lossdiff/val/total", "neutral"),
        ("train_time/forward/mean/U10", "neutral"),
        ("param_count/model/trainable", "neutral"),
        ("ds_stats/train/len", "neutral"),
        ("peak_memory/cuda", "neutral"),
        ("val/psnr", None),
    ],
)
def test_default_ordinality(key: str, expected: str | None) -> None:
    assert MetricProperties().ordinality(key) == expected


def test_higher_is_better() -> None:
    metrics = MetricProperties()
    assert metrics.higher_is_better("train_accuracy") is True
    assert metrics.higher_is_better("val/loss/total") is False


def test_unknown_and_neutral_keys_refuse_a_direction() -> None:
    metrics = MetricProperties()
    with pytest.raises(UnknownMetricDirectionError, match="no pattern matches") as info:
        metrics.higher_is_better("val/psnr")
    assert isinstance(info.value, NoetherError)
    assert info.value.key == "val/psnr"
    assert "register(" in str(info.value)
    with pytest.raises(UnknownMetricDirectionError, match="neutral pattern 'optim/\\*'"):
        metrics.higher_is_better("optim/lr/encoder")


def test_is_neutral() -> None:
    metrics = MetricProperties()
    assert metrics.is_neutral("optim/lr/encoder")
    assert metrics.is_neutral("loss_weight/decay")
    assert not metrics.is_neutral("val/loss")
    assert not metrics.is_neutral("val/psnr")


def test_user_pattern_overrides_default() -> None:
    metrics = MetricProperties()
    assert metrics.ordinality("val/loss_ratio") == "lower"
    metrics.register("*loss_ratio", "higher")
    assert metrics.ordinality("val/loss_ratio") == "higher"
    assert metrics.higher_is_better("val/loss_ratio") is True
    assert metrics.ordinality("val/loss") == "lower"  # the other defaults still apply
    metrics.register("loss_weight/*", "lower")
    assert metrics.ordinality("loss_weight/decay") == "lower"


def test_constructor_patterns_first_match_wins_in_order() -> None:
    metrics = MetricProperties([("val/psnr", "higher"), ("val/*", "lower")])
    assert metrics.ordinality("val/psnr") == "higher"
    assert metrics.ordinality("val/ssim") == "lower"
    assert metrics.ordinality("VAL/SSIM") == "lower"
    patterns: dict[str, Ordinality] = {"Val/PSNR": "higher"}
    mapped = MetricProperties(patterns)  # patterns are case-insensitive too
    assert mapped.ordinality("val/psnr") == "higher"
    assert mapped.patterns[0] == ("val/psnr", "higher")


def test_later_registration_sees_fresh_results() -> None:
    metrics = MetricProperties()
    assert metrics.ordinality("val/psnr") is None  # cached as unknown
    metrics.register("*psnr*", "higher")
    assert metrics.ordinality("val/psnr") == "higher"


def test_instances_share_no_state() -> None:
    first = MetricProperties()
    first.register("*loss*", "higher")
    second = MetricProperties()
    assert second.ordinality("val/loss") == "lower"
    assert second.patterns == DEFAULT_PATTERNS


def test_without_defaults() -> None:
    metrics = MetricProperties([("score", "higher")], defaults=False)
    assert metrics.ordinality("val/loss") is None
    assert metrics.ordinality("score") == "higher"


def test_register_validates() -> None:
    metrics = MetricProperties()
    with pytest.raises(ValueError, match="ordinality"):
        metrics.register("x", "better")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pattern"):
        metrics.register("", "higher")
