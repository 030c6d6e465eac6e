"""``BestCheckpointCallback``: the weights at the best value of a metric, and what early stopping would keep.

When its interval is due it reads ``metric_key`` from this step's metrics (``trainer.writer``), so the
entry that logs the metric must run at the same update and be listed before it. Whether higher or lower
is better comes from ``trainer.metrics``. A strictly better value (NaN never is; an equal one is not)
writes the weights as tag ``best_model.{key}`` (``/`` in the key becomes ``.``):
``{model}_cp=best_model.loss.val.total_model.th``.

**Tolerances simulate early stopping.** An evaluation that does not improve on the best counts toward
every tolerance's patience; an improvement resets the count. For tolerance ``t``, the file
``best_model.{key}.tolerance={t}`` holds the best weights *as of the moment patience* ``t`` *first ran
out* (``t`` non-improving evaluations in a row), and it is never overwritten after that: exactly the
model a run stopped by ``MetricEarlyStopper(metric_key, tolerance=t)`` would have ended with (the same
``>= t`` rule). If patience ``t`` never runs out, the file is written when training ends (completed or
stopped) and holds the final best, as an early stopper that never fired would. Later improvements change
``best_model.{key}`` only.

State (best value, its position, the patience count, which tolerances ran out and with which value) is
saved with the trainer state and restored on resume, so a resumed run continues the same comparison.
Inside ``EmaCallback``'s ``eval_callbacks`` one entry serves every EMA factor: its state is kept per
metric prefix, and the tags carry the prefix (``best_model.ema=0.999.loss.val.total``).

**Top k.** With ``save_top_k: k`` (``k > 1``) the entry also keeps the weights of the ``k`` best
evaluations so far, each under its own tag ``best_model.{key}.top={value}_U{update}`` (the value as
``%.6g``, the update of the evaluation), and the index ``checkpoints/best_model.{key}.top_k.yaml``
lists them best first (rank, value, position, tag, files). A value enters when fewer than ``k`` are
kept or it is strictly better than the worst kept one, which is then evicted: its files are deleted in
the same checkpoint commit that writes the new ones. The list is part of the entry's state; on resume
the entry keeps the entries whose files are all present, deletes top-k files it does not list (written
after the checkpoint the run resumed from) and rewrites the index, so index and files agree again even
after a kill between the two. ``best_model.{key}`` is written as with ``k = 1``, which writes no top-k
tags and no index.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import yaml
from attrs import validators as v

from noether_core import CallbackConfig, atomic_write_text, hookimpl, load_checkpoint, tag_for_metric
from noether_plugins.checkpoint import select_parts

if TYPE_CHECKING:
    from noether_core import Counter, EvalInterval, Run, RunConfig, RunStatus

log = logging.getLogger("noether")


class MissingMetricError(LookupError):
    """The metric an entry compares was not logged at this step."""

    def __str__(self) -> str:
        return str(self.args[0])


#: Who logs the built-in metric keys, for the missing-metric error.
_PRODUCERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"loss/online/"),
        "the trainer's default OnlineLossCallback (interval: trainer.track_every_n_* / log_every_n_*)",
    ),
    (re.compile(r"(?:loss|lossdiff)/(?P<ds>[^/]+)/"), "an OfflineLossCallback entry with dataset_key: {ds}"),
    (re.compile(r"optim/(?:lr|wd)/"), "the trainer's default LrCallback (interval: trainer.track_every_n_*)"),
    (re.compile(r".+/at_best/"), "a BestMetricCallback entry"),
)


def _producer_hint(key: str) -> str:
    for pattern, producer in _PRODUCERS:
        m = pattern.match(key)
        if m:
            return producer.format(**m.groupdict())
    return "the entry that logs it"


def _missing_metric(trainer: Run, counter: Counter, config: CallbackConfig, key: str) -> MissingMetricError:
    prefix = trainer.writer.prefix
    available = [k for k in trainer.writer.keys() if k.startswith(prefix)]  # noqa: SIM118 (a writer, not a dict)
    interval = config.interval.verbose if config.interval else "this entry's interval"
    where = (
        f" (read as {prefix + key!r}: inside EmaCallback's eval_callbacks the producer must be an earlier "
        "entry of the same eval_callbacks list)"
        if prefix
        else ""
    )
    return MissingMetricError(
        f"metric {key!r} was not logged at update {counter.update} ({counter.tag}){where}; logged this step: "
        f"{', '.join(available) or 'nothing'}. {_producer_hint(key)[0].upper()}{_producer_hint(key)[1:]} "
        f"must run at this update, before {config.key!r}: give it an interval that is due whenever "
        f"{interval} is, and list it before {config.key!r} in callbacks"
    )


def _patiences(_: object, attribute: attrs.Attribute[Any], value: list[int] | None) -> None:
    if value is None:
        return
    if not value:
        raise ValueError("tolerances must not be empty; leave it out for none")
    if any(t < 1 for t in value):
        raise ValueError(f"each tolerance must be an int >= 1, got {value}")
    if len(set(value)) != len(value):
        raise ValueError(f"tolerances must be distinct, got {value}")


@attrs.define
class _Track:
    """The comparison for one metric prefix (``""``, or ``ema=0.999/`` inside EmaCallback)."""

    best: float | None = None
    best_at: str = ""
    stale: int = 0
    #: tolerance -> the best value when its patience ran out
    exhausted: dict[int, float] = attrs.Factory(dict)
    #: the kept top-k evaluations, best first (``save_top_k > 1`` only)
    top: list[_TopEntry] = attrs.Factory(list)

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "best": self.best,
            "best_at": self.best_at,
            "stale": self.stale,
            "exhausted": dict(self.exhausted),
        }
        if self.top:  # save_top_k: 1 keeps the state it always had
            state["top"] = [attrs.asdict(entry) for entry in self.top]
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _Track:
        best = state["best"]
        return cls(
            best=None if best is None else float(best),
            best_at=str(state.get("best_at", "")),
            stale=int(state["stale"]),
            exhausted={int(t): float(val) for t, val in state["exhausted"].items()},
            top=[_TopEntry.from_state(entry) for entry in state.get("top", ())],
        )


@attrs.define
class _TopEntry:
    """One kept evaluation of ``save_top_k``: its value, where it was taken, its tag and file names."""

    value: float
    epoch: int
    update: int
    sample: int
    tag: str
    files: list[str]

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> _TopEntry:
        return cls(
            value=float(state["value"]),
            epoch=int(state["epoch"]),
            update=int(state["update"]),
            sample=int(state["sample"]),
            tag=str(state["tag"]),
            files=[str(f) for f in state["files"]],
        )


class BestCheckpointCallback:
    """Saves the weights at the best value of ``metric_key`` (``best_model.{key}``) and, per tolerance,
    the weights an early stopper with that patience would have kept (``best_model.{key}.tolerance={t}``)."""

    @attrs.frozen(kw_only=True)
    class Config(CallbackConfig):
        metric_key: str = attrs.field(validator=v.min_len(1))
        """The metric to compare, e.g. ``loss/val/total``; logged this step by an earlier entry."""
        save_frozen_weights: bool = True
        """Also save frozen model parts (a frozen part's weights never change, so this may be turned off)."""
        tolerances: list[int] | None = attrs.field(default=None, validator=_patiences)
        """Patiences to simulate, each ``>= 1``: see the module documentation."""
        model_names: list[str] | None = attrs.field(default=None, validator=v.optional(v.min_len(1)))
        """Model parts to save (composite models); ``None``: all."""
        save_top_k: int = attrs.field(default=1, validator=[v.instance_of(int), v.ge(1)])
        """Also keep the weights of the ``k`` best evaluations (``> 1``), each under its own
        ``best_model.{key}.top={value}_U{update}`` tag, listed in ``best_model.{key}.top_k.yaml``; see
        the module documentation. ``1``: only ``best_model.{key}``."""

    @classmethod
    def consumes(cls, config: Config) -> list[str]:
        """The metric keys an entry reads at its interval (checked against the producers before the run
        starts, see :mod:`noether_core.run.metric_dependencies`)."""
        return [config.metric_key]

    @staticmethod
    def produces(config: CallbackConfig, run_config: RunConfig) -> list[str]:
        """It logs no metrics."""
        return []

    def __init__(self, config: Config) -> None:
        self.config = config
        self._higher: bool | None = None
        self._tracks: dict[str, _Track] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"tracks": {prefix: track.state() for prefix, track in self._tracks.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._tracks = {str(p): _Track.from_state(s) for p, s in state["tracks"].items()}

    @hookimpl
    def before_training(self, trainer: Run, config: Config) -> None:
        self._higher = trainer.metrics.higher_is_better(config.metric_key)  # unknown direction: an error now
        parts = select_parts(
            trainer, config.model_names
        )  # a misspelled part: an error now, not at the first best
        if config.save_top_k > 1 and trainer.is_main:
            for prefix, track in self._tracks.items():
                self._reconcile_top(trainer, config, prefix + config.metric_key, track, [n for n, _ in parts])

    def _better(self, value: float, best: float | None) -> bool:
        if math.isnan(value):
            return False
        if best is None:
            return True
        return value > best if self._higher else value < best

    @hookimpl
    def at_eval(self, trainer: Run, counter: Counter, config: Config, interval: EvalInterval) -> None:
        if interval == "eval":  # one evaluation of a finished run: nothing to compare across
            return
        if self._higher is None:
            self._higher = trainer.metrics.higher_is_better(config.metric_key)
        value = trainer.writer.get(config.metric_key)
        if value is None:
            raise _missing_metric(trainer, counter, config, config.metric_key)
        prefix = trainer.writer.prefix
        key = prefix + config.metric_key
        track = self._tracks.setdefault(prefix, _Track())
        if self._better(value, track.best):
            log.info(
                "new best %s: %s%s (%s)",
                key,
                "" if track.best is None else f"{track.best} --> ",
                value,
                counter.tag,
            )
            trainer.save_checkpoint(
                tag_for_metric(key),
                weights=True,
                optim=False,
                trainer_state=False,
                model_names=config.model_names,
                include_frozen=config.save_frozen_weights,
            )
            track.best, track.best_at, track.stale = value, counter.tag, 0
            self._keep_top(trainer, counter, config, key, track, value)
            return
        self._keep_top(trainer, counter, config, key, track, value)
        track.stale += 1
        for t in config.tolerances or ():
            if t not in track.exhausted and track.stale >= t:
                track.exhausted[t] = math.nan if track.best is None else track.best
                self._save_tolerance(trainer, config, key, track, t, f"patience {t} ran out at {counter.tag}")

    def _keep_top(
        self, trainer: Run, counter: Counter, config: Config, key: str, track: _Track, value: float
    ) -> None:
        """Add this evaluation to the top ``save_top_k`` if it belongs there, evicting the worst."""
        k = config.save_top_k
        if k == 1 or math.isnan(value):
            return
        if len(track.top) >= k and not self._better(value, track.top[-1].value):
            return
        tag = f"{tag_for_metric(key)}.top={value:.6g}_U{counter.update}"
        if any(kept.tag == tag for kept in track.top):  # the same value at the same update, seen again
            return
        paths = trainer.save_checkpoint(
            tag,
            weights=True,
            optim=False,
            trainer_state=False,
            model_names=config.model_names,
            include_frozen=config.save_frozen_weights,
        )
        entry = _TopEntry(value, counter.epoch, counter.update, counter.sample, tag, [p.name for p in paths])
        # after every kept value that is at least as good: an equal value is not better
        at = next((i for i, kept in enumerate(track.top) if self._better(value, kept.value)), len(track.top))
        track.top.insert(at, entry)
        evicted = track.top[k:]
        del track.top[k:]
        if not trainer.is_main:
            return
        names = [name for name, _ in select_parts(trainer, config.model_names)]
        for old in evicted:
            log.info("%s = %s (%s) leaves the top %d of %s", key, old.value, old.tag, k, key)
            for name in names:
                trainer.checkpoints.delete_tag(name, old.tag)
        self._write_index(trainer, config, key, track)

    def _index_path(self, trainer: Run, key: str) -> Path:
        return trainer.paths.checkpoints / f"{tag_for_metric(key)}.top_k.yaml"

    def _write_index(self, trainer: Run, config: Config, key: str, track: _Track) -> None:
        index = {
            "metric": key,
            "higher_is_better": bool(self._higher),
            "save_top_k": config.save_top_k,
            "checkpoints": [
                {
                    "rank": rank,
                    "value": entry.value,
                    "epoch": entry.epoch,
                    "update": entry.update,
                    "sample": entry.sample,
                    "tag": entry.tag,
                    "files": list(entry.files),
                }
                for rank, entry in enumerate(track.top, start=1)
            ],
        }
        atomic_write_text(self._index_path(trainer, key), yaml.safe_dump(index, sort_keys=False))

    def _reconcile_top(self, trainer: Run, config: Config, key: str, track: _Track, names: list[str]) -> None:
        """On resume: keep the listed entries whose files are all there, delete the top-k files nobody
        lists (written after the checkpoint this run resumed from), and rewrite the index."""
        directory = trainer.paths.checkpoints
        kept = [entry for entry in track.top if all((directory / f).exists() for f in entry.files)]
        for entry in track.top:
            if entry not in kept:
                log.warning("top-k checkpoint %s of %s lost its files; dropped from the list", entry.tag, key)
        track.top = kept
        listed = {entry.tag for entry in kept}
        marker = f"{tag_for_metric(key)}.top="
        for name in names:
            for tag in trainer.checkpoints.tags(name):
                if tag.startswith(marker) and tag not in listed:
                    log.info("deleting top-k checkpoint %s of %s: not in the resumed state", tag, key)
                    trainer.checkpoints.delete_tag(name, tag)
        self._write_index(trainer, config, key, track)

    def _save_tolerance(
        self, trainer: Run, config: Config, key: str, track: _Track, t: int, why: str
    ) -> None:
        """Copy the ``best_model`` files of ``key`` to its tolerance-``t`` tag (the best so far, not the
        current weights, which are past it)."""
        if track.best is None:
            log.warning("%s for %s, but no value was ever a best (all NaN?): nothing saved", why, key)
            return
        log.info("%s: keeping best %s = %s (from %s) as tolerance=%d", why, key, track.best, track.best_at, t)
        if not trainer.is_main:
            return
        source, target = tag_for_metric(key), tag_for_metric(key, t)
        with trainer.checkpoints.checkpoint_set(target) as parts:
            for name, _ in select_parts(trainer, config.model_names):
                file = trainer.paths.checkpoint_file(name, source, "model")
                if not file.exists():  # a frozen part left out by save_frozen_weights
                    continue
                payload = load_checkpoint(file)
                parts.save_model(name, payload["state_dict"], position=payload["training_iteration"])

    @hookimpl
    def after_training(self, trainer: Run, config: Config, status: RunStatus) -> None:
        if status not in ("completed", "stopped"):  # not over (interrupted), or not trustworthy (failed)
            return
        # inside EmaCallback this runs once per factor, under that factor's prefix
        prefix = trainer.writer.prefix
        track = self._tracks.get(prefix)
        if track is None:
            return
        key = prefix + config.metric_key
        for t in config.tolerances or ():
            if t in track.exhausted:
                log.info("best %s with tolerance=%d: %s", key, t, track.exhausted[t])
            else:
                # not marked as run out: a resumed, longer run may still run out of this patience
                self._save_tolerance(
                    trainer, config, key, track, t, f"training ended before patience {t} ran out"
                )


__all__ = ["BestCheckpointCallback", "MissingMetricError"]
