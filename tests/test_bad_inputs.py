"""The bad-input corpus: every way a user, a script or a damaged disk can hand ``noether`` something
unusable, and what must happen then.

Each case is a command line (and the files it names) that must end with exit status 2 (3 for a plugin
that cannot be used), one error paragraph on stderr that names the problem (its first line
``noether: error: ...``, any further lines indented), no traceback, and nothing changed on disk: the
whole folder the case works in is hashed before and after. The cases run ``noether`` in this process
(:func:`noether_core.cli.main`), with the installed plugins.

The groups: the config corpus of ``tests/bad_configs`` (its exact messages are in
``tests/golden/bad_configs.txt``, checked by ``test_cli.py``); configs past the reading limits (anchor
bombs, depth, size, duplicate keys, encodings, tags); numbers out of range; file names that would
escape (run ids, checkpoint tags, model names); ``--set`` mistakes; damaged run directories resumed or
evaluated. :data:`CORPUS_SIZE` counts them all; ``docs/reliability.md`` quotes it.

At the end, hypothesis generates random YAML trees, random YAML-like text and random ``--set`` strings
for ``noether config validate``: whatever it makes, the result is a clean exit (0, 2 or 3), never a
traceback, and never a hang (the reading limits bound the work; the deadline is generous on purpose).
"""

from __future__ import annotations

import codecs
import datetime
import hashlib
import os
import re
import shutil
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tiny_runs import noether_loggers_restored

from noether_core.cli import main

TESTS = Path(__file__).resolve().parent
BAD_CONFIGS = sorted(p.name for p in (TESTS / "bad_configs").glob("*.yaml"))

#: A valid tiny run: 4 updates of an MLP on 64 blobs, a checkpoint every 2 updates.
GOOD: dict[str, Any] = {
    "trainer": {
        "max_updates": 4,
        "batch_size": 16,
        "seed": 0,
        "num_threads": 1,
        "add_default_callbacks": False,
    },
    "model": {"kind": "mlp", "kwargs": {"in_features": 2, "out_features": 4, "hidden": 8}},
    "optimizer": {"kind": "adamw", "lr": 0.01},
    "datasets": {"train": {"kind": "blobs", "kwargs": {"size": 64}}},
    "callbacks": [
        {"kind": "OnlineLossCallback", "every_n_updates": 1},
        {"kind": "CheckpointCallback", "every_n_updates": 2, "save_optim": True},
    ],
}
GOOD_YAML = yaml.safe_dump(GOOD, sort_keys=False)


def with_changes(**sections: Any) -> str:
    """:data:`GOOD` as YAML, with the named sections' fields updated (``trainer={"seed": 3}``)."""
    raw = yaml.safe_load(GOOD_YAML)
    for section, fields in sections.items():
        if isinstance(fields, dict) and isinstance(raw.get(section), dict):
            raw[section].update(fields)
        else:
            raw[section] = fields
    return yaml.safe_dump(raw, sort_keys=False)


def bomb(levels: int = 9) -> str:
    """The "billion laughs": nine aliases of nine aliases of ..., 1.3 KB of YAML."""
    lines = ['      a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = string.ascii_lowercase
    for i in range(1, levels):
        prev, name = names[i - 1], names[i]
        lines.append(f"      {name}: &{name} [{','.join(['*' + prev] * 9)}]")
    return (
        "trainer: {max_updates: 4, batch_size: 16}\nmodel: {kind: mlp}\n"
        "datasets:\n  train:\n    kind: blobs\n    kwargs:\n" + "\n".join(lines) + "\n"
    )


def flow_bomb(levels: int = 9) -> str:
    """:func:`bomb` as one line of flow YAML, for ``--set``."""
    names = string.ascii_lowercase
    items = ["a: &a [" + ",".join(["lol"] * 9) + "]"]
    items += [f"{names[i]}: &{names[i]} [{','.join(['*' + names[i - 1]] * 9)}]" for i in range(1, levels)]
    return "{" + ", ".join(items) + "}"


def nested_block(depth: int) -> str:
    return GOOD_YAML + "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + "  " * depth + "x: 1\n"


# ------------------------------------------------------------------------------------------ cases


@attrs.frozen
class Case:
    """One bad input: the command line (``{cfg}`` is the config file, ``{run}`` a trained run's
    directory, ``{out}`` an output directory), the config's text or bytes, what to do to the run
    directory first, and a regex the error paragraph must match."""

    id: str
    argv: tuple[str, ...]
    expect: str
    config: str | bytes | None = None
    damage: Callable[[Path], None] | None = None
    status: int = 2


def validate(id: str, config: str | bytes, expect: str, status: int = 2) -> Case:
    return Case(id, ("config", "validate", "{cfg}"), expect, config, status=status)


def train(id: str, config: str | bytes, expect: str, *extra: str) -> Case:
    return Case(id, ("train", "{cfg}", "--output-dir", "{out}", "--run-id", "r", *extra), expect, config)


def set_(id: str, setting: str, expect: str) -> Case:
    return Case(id, ("config", "validate", "{cfg}", "--set", setting), expect, GOOD_YAML)


def resume(id: str, damage: Callable[[Path], None], expect: str, *extra: str) -> Case:
    return Case(id, ("train", "--resume", "{run}", *extra), expect, damage=damage)


# the run directory's files, as the trained run leaves them
CKPT = "checkpoints/model_cp=latest_{}.th"


def edit_state(part: str, change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    """Load a part of ``latest``, let ``change`` edit it (or return a replacement), save it back."""

    def damage(run: Path) -> None:
        file = run / CKPT.format(part)
        state = torch.load(file, weights_only=True)
        replaced = change(state)
        torch.save(state if replaced is None else replaced, file)

    return damage


def write(relative: str, data: str | bytes) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        target = run / relative
        if isinstance(data, bytes):
            target.write_bytes(data)
        else:
            target.write_text(data, encoding="utf-8")

    return damage


def truncate(relative: str, keep: int) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        target = run / relative
        target.write_bytes(target.read_bytes()[:keep])

    return damage


def remove(relative: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        target = run / relative
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()

    return damage


def make_dir(relative: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        target = run / relative
        target.unlink()
        target.mkdir()

    return damage


def drop(key: str) -> Callable[[dict[str, Any]], None]:
    def change(state: dict[str, Any]) -> None:
        del state[key]

    return change


def wider() -> Callable[[Path], None]:
    """The run's config with other layer sizes, given as CONFIG to the resume."""

    def damage(run: Path) -> None:
        raw = yaml.safe_load((run / "config.yaml").read_text())
        raw["model"]["kwargs"]["hidden"] = 16
        (run.parent / "wider.yaml").write_text(yaml.safe_dump(raw))

    return damage


BIG = 2**64
HUGE_INT = "9" * 5000  # more digits than Python converts from text

CONFIG_CASES = [
    # bounded reading: aliases, depth, size
    validate(
        "anchor_bomb_in_kwargs", bomb(), r"datasets\.train\.kwargs\.\w: the config holds more than 50000"
    ),
    validate("anchor_bomb_small_fanout", bomb(12).replace('"lol",' * 7, ""), "more than 50000 values"),
    validate("recursive_alias", GOOD_YAML + "extra: &a [1, *a]\n", "refers to a value that contains it"),
    validate("recursive_alias_mapping", GOOD_YAML + "extra: &a {x: *a}\n", "contains it"),
    validate("nested_50000_deep_flow", "a: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested more than 100"),
    validate("nested_50000_deep_mappings", "a: " + "{b: " * 50_000 + "1" + "}" * 50_000, "nested more"),
    validate("nested_150_deep_block", nested_block(150), "nested more than 100 levels"),
    validate(
        "alias_deeper_than_limit",
        "deep: &d " + "[" * 60 + "]" * 60 + "\nuse: " + "[" * 50 + "*d" + "]" * 50 + "\n",
        "nests values more than 100 levels",
    ),
    validate("too_many_values", GOOD_YAML + "extra: [" + ",".join(["1"] * 60_000) + "]\n", "more than 50000"),
    validate("file_larger_than_limit", GOOD_YAML + "#" * 300_000 + "\n", "larger than 262144 bytes"),
    # duplicate keys
    validate("duplicate_section", GOOD_YAML + "trainer: {max_updates: 5}\n", r"^  trainer: duplicate key"),
    validate(
        "duplicate_field",
        GOOD_YAML.replace("  batch_size: 16\n", "  batch_size: 16\n  batch_size: 32\n"),
        r"trainer\.batch_size: duplicate key at line \d+, column 3 \(first at line",
    ),
    validate(
        "duplicate_in_entry",
        GOOD_YAML.replace("every_n_updates: 2", "every_n_updates: 2\n  every_n_updates: 3"),
        r"callbacks\[1\]\.every_n_updates: duplicate key",
    ),
    validate(
        "duplicate_in_kwargs",
        GOOD_YAML.replace("size: 64", "{size: 64, size: 65}").replace("kwargs:\n      {", "kwargs: {"),
        r"duplicate key",
    ),
    validate(
        "duplicate_int_key", GOOD_YAML + "metrics: {1: higher, 1: lower}\n", r"metrics\.1: duplicate key"
    ),
    # encodings and characters
    validate(
        "invalid_utf8_byte", GOOD_YAML.encode() + b"# \xff\n", r"not valid UTF-8: byte 0xff at offset \d+"
    ),
    validate("latin1_bytes", GOOD_YAML.encode() + "# café\n".encode("latin-1"), r"byte 0xe9 at offset"),
    validate("truncated_utf8_sequence", GOOD_YAML.encode() + b"# \xe2\x82\n", "not valid UTF-8"),
    validate("utf16_le_bom", codecs.BOM_UTF16_LE + GOOD_YAML.encode("utf-16-le"), "UTF-16"),
    validate("utf16_be_bom", codecs.BOM_UTF16_BE + GOOD_YAML.encode("utf-16-be"), "UTF-16"),
    validate("utf32_le_bom", codecs.BOM_UTF32_LE + GOOD_YAML.encode("utf-32-le"), "UTF-32"),
    validate("nul_byte", GOOD_YAML.encode() + b"# a\x00b\n", r"control character U\+0000 at byte offset"),
    validate("bell_character", GOOD_YAML + "# \x07\n", r"U\+0007"),
    validate(
        "escape_character_in_value",
        with_changes(trainer={"device": "cpu"}).replace("cpu", "c\x1bpu"),
        r"U\+001B",
    ),
    # tags and YAML syntax
    validate(
        "python_tag_in_config",
        GOOD_YAML + "extra: !!python/object/apply:os.system ['true']\n",
        r"cannot construct a value at line \d+.*plain data",
    ),
    validate("custom_tag", GOOD_YAML + "extra: !include other.yaml\n", "plain data"),
    validate("unhashable_key", GOOD_YAML + "metrics: {? [a, b] : higher}\n", "unhashable key"),
    validate("two_documents", GOOD_YAML + "---\n" + GOOD_YAML, "expected a single document"),
    validate("tab_indentation", GOOD_YAML.replace("  max_updates", "\tmax_updates"), "YAML syntax error"),
    validate("undefined_alias", GOOD_YAML + "extra: *nowhere\n", "undefined alias"),
    validate("top_level_list", "- trainer\n- model\n", "a config is a mapping of sections"),
    validate("top_level_string", "just text\n", "a config is a mapping of sections"),
    validate("integer_key_in_section", with_changes(trainer={1: 2}), r"trainer\.1: unknown field"),
    validate("int_of_5000_digits", GOOD_YAML.replace("seed: 0", f"seed: {HUGE_INT}"), "cannot read a value"),
    validate("impossible_date", GOOD_YAML.replace("seed: 0", "seed: 2024-13-45"), "cannot read a value"),
    # numbers out of range, for every kind of int and float field
    validate("seed_2_pow_64", with_changes(trainer={"seed": BIG}), r"trainer\.seed: expected an int between"),
    validate("seed_below_int64", with_changes(trainer={"seed": -(2**63) - 1}), r"trainer\.seed"),
    validate(
        "num_threads_1e11", with_changes(trainer={"num_threads": 10**11}), r"num_threads: must be <= 4096"
    ),
    validate("num_threads_float", with_changes(trainer={"num_threads": 1e11}), r"num_threads: expected int"),
    validate("max_updates_2_pow_63", with_changes(trainer={"max_updates": 2**63}), r"trainer\.max_updates"),
    validate("batch_size_2_pow_64", with_changes(trainer={"batch_size": BIG}), r"trainer\.batch_size"),
    validate(
        "log_interval_2_pow_70", with_changes(trainer={"log_every_n_updates": 2**70}), "log_every_n_updates"
    ),
    validate(
        "entry_interval_2_pow_64",
        with_changes(callbacks=[{"kind": "CheckpointCallback", "every_n_updates": BIG}]),
        r"callbacks\[0\]\.every_n_updates: expected an int",
    ),
    validate(
        "plugin_int_field_2_pow_64",
        with_changes(callbacks=[{"kind": "CheckpointCallback", "every_n_updates": 2, "keep_last_n": BIG}]),
        r"callbacks\[0\]\.keep_last_n",
    ),
    validate(
        "dataset_workers_2_pow_64",
        with_changes(datasets={"train": {"kind": "blobs", "num_workers": BIG}}),
        "num_workers",
    ),
    validate(
        "warmup_2_pow_64", with_changes(optimizer={"lr_schedule": {"warmup_updates": BIG}}), "warmup_updates"
    ),
    validate(
        "lr_infinite", GOOD_YAML.replace("lr: 0.01", "lr: .inf"), r"optimizer\.lr: must be a finite number"
    ),
    validate("lr_nan", GOOD_YAML.replace("lr: 0.01", "lr: .nan"), r"optimizer\.lr: must be a finite number"),
    validate(
        "lr_overflowing_float",
        GOOD_YAML.replace("lr: 0.01", "lr: 1.0e+400"),
        "finite number|a float can hold",
    ),
    validate(
        "lr_int_too_large_for_float",
        GOOD_YAML.replace("lr: 0.01", f"lr: {10**400}"),
        "finite number|a float can hold",
    ),
    validate(
        "clip_minus_infinity", with_changes(trainer={"clip_grad_norm": float("-inf")}), "clip_grad_norm"
    ),
    validate(
        "slow_share_nan", with_changes(trainer={"slow_plugin_share": float("nan")}), "slow_plugin_share"
    ),
    validate("betas_nan", with_changes(optimizer={"betas": [float("nan"), 0.9]}), r"optimizer\.betas"),
    validate(
        "schedule_end_factor_inf",
        with_changes(optimizer={"lr_schedule": {"end_factor": float("inf")}}),
        "end_factor",
    ),
    # names that become file names
    validate("model_name_dotdot", with_changes(model={"name": ".."}), r"model\.name: must be 1 to 100"),
    validate("model_name_dot", with_changes(model={"name": "."}), r"model\.name"),
    validate("model_name_slash", with_changes(model={"name": "a/b"}), r"model\.name"),
    validate("model_name_300_chars", with_changes(model={"name": "m" * 300}), r"model\.name"),
    validate("model_name_empty", with_changes(model={"name": ""}), r"model\.name"),
    validate(
        "part_name_with_slash",
        with_changes(model={"kind": "composite", "kwargs": {}, "parts": {"a/b": {"kind": "mlp"}}}),
        r"model\.parts\.a/b: a part's name",
    ),
    # plugins that cannot be used: exit status 3
    validate(
        "plugin_with_misspelled_hook",
        with_changes(callbacks=[{"kind": "sample_plugins:Misspelled"}]),
        "after_updat",
        status=3,
    ),
    validate(
        "plugin_with_unknown_argument",
        with_changes(callbacks=[{"kind": "sample_plugins:UnknownArgument"}]),
        "lossez",
        status=3,
    ),
    # the same checks when training: refused before anything is written
    Case(
        "train_plugin_constructor_raises",
        ("train", "{cfg}", "--output-dir", "{out}", "--run-id", "r"),
        "creating it for entry 'p' failed: ValueError: no GPU to profile",
        with_changes(callbacks=[{"kind": "sample_plugins:Refuses", "name": "p"}]),
        status=3,
    ),
    train("train_anchor_bomb", bomb(), "more than 50000 values"),
    train("train_nested_50000", "a: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested more than 100"),
    train("train_invalid_utf8", GOOD_YAML.encode() + b"\xff", "not valid UTF-8"),
    train("train_duplicate_key", GOOD_YAML + "trainer: {max_updates: 5}\n", "duplicate key"),
    train("train_seed_2_pow_64", with_changes(trainer={"seed": BIG}), r"trainer\.seed"),
    train("train_num_threads_1e11", with_changes(trainer={"num_threads": 10**11}), "num_threads"),
    train("train_model_name_dotdot", with_changes(model={"name": ".."}), r"model\.name"),
    train(
        "train_run_longer_than_int64",
        with_changes(trainer={"max_updates": None, "max_epochs": 2**62}),
        r"trainer\.max_epochs: the run would be .* more than 2\*\*63-1 samples",
    ),
    train(
        "train_samples_longer_than_int64",
        with_changes(trainer={"max_updates": None, "max_samples": 2**63 - 1}),
        r"trainer\.max_samples",
    ),
]

SET_CASES = [
    set_("set_without_equals", "trainer.max_updates", "expected KEY=VALUE"),
    set_("set_empty_key", "=3", "expected KEY=VALUE"),
    set_("set_double_dot", "trainer..max_updates=3", "cannot parse the key"),
    set_("set_unclosed_index", "callbacks[0.name=x", "cannot parse the key"),
    set_("set_index_out_of_range", "callbacks[5].name=x", r"callbacks\.5 does not exist"),
    set_("set_inside_a_scalar", "trainer.max_updates.x=1", "not a mapping"),
    set_("set_key_200_deep", ".".join(["k"] * 200) + "=1", "nested more than 100"),
    set_("set_value_200_deep", "trainer.device=" + "[" * 200 + "]" * 200, "nested more than 100"),
    set_("set_value_duplicate_keys", "trainer.device={a: 1, a: 2}", "duplicate key"),
    set_("set_value_anchor_bomb", "datasets.train.kwargs=" + flow_bomb(), "more than 50000"),
    set_("set_value_control_character", "trainer.device=c\x07pu", r"U\+0007"),
    set_("set_seed_2_pow_64", f"trainer.seed={BIG}", r"trainer\.seed"),
    set_("set_lr_infinite", "optimizer.lr=.inf", r"optimizer\.lr: must be a finite number"),
    set_("set_model_name_dotdot", "model.name=..", r"model\.name"),
    set_("set_unknown_field", "trainer.max_update=3", "did you mean 'max_updates'"),
    set_("set_float_for_int", "trainer.max_updates=3.5", "expected int"),
]

RUN = "{run}"
CLI_CASES = [
    Case(
        "run_id_empty", ("train", "{cfg}", "--output-dir", "{out}", "--run-id", ""), "it is empty", GOOD_YAML
    ),
    *[
        Case(
            f"run_id_{name}",
            ("train", "{cfg}", "--output-dir", "{out}", f"--run-id={value}"),
            expect,
            GOOD_YAML,
        )
        for name, value, expect in [
            ("parent_escape", "../escape", "no '/'"),
            ("absolute", "/tmp/x", "no '/'"),
            ("nested", "a/b", "no '/'"),
            ("dot", ".", "'.' or '..'"),
            ("dotdot", "..", "'.' or '..'"),
            ("backslash", "a\\b", "no '/', '\\\\'"),
            ("300_chars", "x" * 300, "300 characters long, more than 200"),
            ("newline", "a\nb", "control character"),
            ("nul", "a\x00b", "control character"),
            ("leading_dash", "-x", "starts with '-'"),
        ]
    ],
    Case(
        "checkpoint_without_resume",
        ("train", "{cfg}", "--output-dir", "{out}", "--checkpoint", "latest"),
        "only makes sense with --resume",
        GOOD_YAML,
    ),
    Case("config_missing", ("config", "validate", "no_such.yaml"), "does not exist"),
    Case("config_is_a_directory", ("config", "validate", "."), "is a directory"),
    Case("schedule_of_a_bomb", ("schedule", "{cfg}"), "more than 50000 values", bomb()),
    Case("resume_missing_dir", ("train", "--resume", "no_such_run"), "does not exist or is not a directory"),
    Case("eval_missing_dir", ("eval", "no_such_run"), "does not exist or is not a directory"),
    *[
        Case(f"resume_checkpoint_{name}", ("train", "--resume", RUN, f"--checkpoint={tag}"), expect)
        for name, tag, expect in [
            ("parent_escape", "../x", "is not a checkpoint tag"),
            ("absolute", "/etc/passwd", "is not a checkpoint tag"),
            ("empty", "", "is not a checkpoint tag"),
            ("with_cp", "a_cp=b", "is not a checkpoint tag"),
            ("unknown", "E9_U99_S999", "no checkpoint 'E9_U99_S999' with trainer state; tags present"),
        ]
    ],
    *[
        Case(f"eval_checkpoint_{name}", ("eval", RUN, f"--checkpoint={tag}"), expect)
        for name, tag, expect in [
            ("parent_escape", "../x", "is not a checkpoint tag"),
            ("dotdot", "..", "is not a checkpoint tag"),
            ("unknown", "nope", "no weights of 'model' for tag 'nope'"),
            ("best_without_one", "best", "has no best checkpoint"),
        ]
    ],
]

RUN_DIR_CASES = [
    resume("trainer_without_counter", edit_state("trainer", drop("counter")), "expected counter.update"),
    resume(
        "trainer_counter_not_int",
        edit_state("trainer", lambda s: s.update(counter={"update": "x"})),
        "expected counter.update",
    ),
    resume(
        "trainer_counter_negative",
        edit_state("trainer", lambda s: s.update(counter={"update": -1})),
        "expected counter.update",
        "--checkpoint",
        "latest",  # without it, the resume takes the newest whole set: the position tag before
    ),
    resume("trainer_is_a_list", edit_state("trainer", lambda s: [1, 2]), "expected a dict, found list"),
    resume("trainer_truncated", truncate(CKPT.format("trainer"), 100), "truncated or corrupt"),
    resume("trainer_garbage", write(CKPT.format("trainer"), b"garbage" * 20), r"cannot load checkpoint"),
    resume("trainer_empty_file", write(CKPT.format("trainer"), b""), "truncated or corrupt"),
    resume(
        "trainer_pickle_payload",
        edit_state("trainer", lambda s: s.update(evil=datetime.timedelta(1))),
        "weights_only loading refuses",
    ),
    resume(
        "trainer_plugins_not_a_mapping",
        edit_state("trainer", lambda s: s.update(plugins=5)),
        "its plugin states do not load",
    ),
    resume(
        "trainer_entry_state_not_a_mapping",
        edit_state("trainer", lambda s: s.update(entry_state=[1])),
        "its plugin states do not load",
    ),
    resume(
        "trainer_without_rng", edit_state("trainer", drop("rng")), "random generators' state does not load"
    ),
    resume(
        "trainer_is_a_directory",
        make_dir(CKPT.format("trainer")),
        "not a regular file|no checkpoint",
        "--checkpoint",
        "latest",
    ),
    resume("model_truncated", truncate(CKPT.format("model"), 200), "truncated or corrupt"),
    resume("model_garbage", write(CKPT.format("model"), os.urandom(64)), "cannot load checkpoint"),
    resume("model_without_state_dict", edit_state("model", drop("state_dict")), "holds no 'state_dict'"),
    resume(
        "model_state_dict_not_tensors",
        edit_state("model", lambda s: s.update(state_dict={k: 1 for k in s["state_dict"]})),
        "is a int, not a tensor",
    ),
    resume(
        "model_missing_parameter",
        edit_state("model", lambda s: drop("0.weight")(s["state_dict"])),
        "'0.weight' is missing",
    ),
    resume(
        "model_file_missing",
        remove(CKPT.format("model")),
        "cannot be resumed: this file is missing; resumable tags, newest first: ",
        "--checkpoint",
        "latest",
    ),
    resume("optim_garbage", write(CKPT.format("optim"), b"\x80\x02garbage"), "cannot load checkpoint"),
    resume(
        "optim_without_state_dict", edit_state("optim", drop("state_dict")), "optimizer state does not load"
    ),
    resume(
        "optim_state_of_another_model",
        edit_state("optim", lambda s: s.update(state_dict={"state": {}, "param_groups": [{"params": [0]}]})),
        "optimizer state does not load",
    ),
    resume(
        "optim_file_missing",
        remove(CKPT.format("optim")),
        "cannot be resumed: this file is missing",
        "--checkpoint",
        "latest",
    ),
    resume("checkpoints_dir_missing", remove("checkpoints"), "has no checkpoint to resume from.*--restart"),
    resume(
        "summary_python_tag",
        write("summary.yaml", "status: !!python/object/apply:os.system ['true']\n"),
        r"summary\.yaml' is not the plain YAML",
    ),
    resume("summary_garbage", write("summary.yaml", "status: [\n"), r"summary\.yaml.*YAML syntax error"),
    resume(
        "summary_invalid_utf8", write("summary.yaml", b"status: \xff\n"), r"summary\.yaml.*not valid UTF-8"
    ),
    resume("summary_anchor_bomb", write("summary.yaml", bomb()), r"summary\.yaml.*more than 50000"),
    resume("config_yaml_missing", remove("config.yaml"), "it has no config.yaml"),
    resume("config_yaml_garbage", write("config.yaml", "trainer: [\n"), "YAML syntax error"),
    resume(
        "config_yaml_python_tag", write("config.yaml", "trainer: !!python/name:os.system\n"), "plain data"
    ),
    resume("config_yaml_empty", write("config.yaml", ""), "the file is empty"),
    resume(
        "config_yaml_duplicate_keys",
        write("config.yaml", GOOD_YAML + "model: {kind: mlp}\n"),
        "duplicate key",
    ),
    resume("config_yaml_is_a_directory", make_dir("config.yaml"), "is a directory"),
    Case(
        "resume_with_other_layer_sizes",
        ("train", "{run}/../wider.yaml", "--resume", "{run}"),
        r"'0\.weight' has shape \[8, 2\] in the checkpoint, \[16, 2\] in the model",
        damage=wider(),
    ),
    Case(
        "resume_with_other_batch_size",
        ("train", "--resume", "{run}", "--set", "trainer.batch_size=8"),
        "batch geometry unchanged",
    ),
    Case(
        "eval_model_truncated",
        ("eval", "{run}", "--checkpoint", "latest"),
        "truncated or corrupt",
        damage=truncate(CKPT.format("model"), 50),
    ),
]

BAD_CONFIG_CASES = [
    Case(f"bad_configs/{name}", ("config", "validate", str(TESTS / "bad_configs" / name)), re.escape(name))
    for name in BAD_CONFIGS
]

ALL = CONFIG_CASES + SET_CASES + CLI_CASES + RUN_DIR_CASES + BAD_CONFIG_CASES
#: The size of the corpus, as ``docs/reliability.md`` states it.
CORPUS_SIZE = len(ALL)


def test_the_corpus_is_large_and_its_ids_unique() -> None:
    assert CORPUS_SIZE >= 100
    assert len({c.id for c in ALL}) == CORPUS_SIZE


# ------------------------------------------------------------------------------------------ running


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of :data:`GOOD` with checkpoints (``latest`` has every part)."""
    base = tmp_path_factory.mktemp("trained")
    config = base / "good.yaml"
    config.write_text(GOOD_YAML)
    with noether_loggers_restored():
        assert main(["train", str(config), "--output-dir", str(base), "--run-id", "run"]) == 0
    return base / "run"


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``, with a hash of each file's bytes."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<dir>"
    return out


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse
        status = int(exc.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_paragraph(status: int, err: str, case: Case) -> None:
    explain = f"{case.id}: exit status {status}\n--- stderr\n{err}"
    assert status == case.status, explain
    assert "Traceback" not in err, explain
    lines = err.rstrip("\n").split("\n")
    assert lines[0].startswith("noether: error: "), explain
    assert all(line.startswith("  ") for line in lines[1:]), explain
    assert re.search(case.expect, err, re.M), f"expected /{case.expect}/\n{explain}"


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_bad_input(
    case: Case,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    values = {"cfg": str(work / "config.yaml"), "out": str(work / "runs"), "run": str(work / "run")}
    if case.config is not None:
        data = case.config if isinstance(case.config, bytes) else case.config.encode("utf-8")
        (work / "config.yaml").write_bytes(data)
    if any("{run}" in a for a in case.argv) or case.damage is not None:
        shutil.copytree(request.getfixturevalue("trained_run"), work / "run")
    if case.damage is not None:
        case.damage(work / "run")
    before = snapshot(work)
    argv = [
        a.replace("{cfg}", values["cfg"]).replace("{out}", values["out"]).replace("{run}", values["run"])
        for a in case.argv
    ]
    status, _out, err = run_cli(argv, capsys)
    assert_one_paragraph(status, err, case)
    assert snapshot(work) == before, f"{case.id} changed files on disk"


def test_debug_adds_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bomb.yaml").write_text(bomb())
    status, _, err = run_cli(["config", "validate", "bomb.yaml", "--debug"], capsys)
    assert status == 2
    assert "Traceback" in err
    assert err.rstrip().endswith("(aliases expanded; at line 11, column 10)")


def test_a_damaged_metrics_line_is_kept_and_named_and_the_resume_goes_on(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One corrupt line in the middle of ``metrics.jsonl`` does not block a resume: it is named in a
    warning (file and line), kept as it is, and every good record is kept too."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    lines.insert(1, '{"update": 1, garbage\n')
    metrics.write_text("".join(lines))
    status, out, err = run_cli(["train", "--resume", str(run), "--checkpoint", "E0_U2_S32"], capsys)
    assert status == 0, err
    warning = f"{metrics}:2: not a JSON object"
    assert warning in out
    assert warning in (run / "log.txt").read_text()
    after = metrics.read_text().splitlines(keepends=True)
    assert after[1] == '{"update": 1, garbage\n'
    assert [yaml.safe_load(line)["update"] for i, line in enumerate(after) if i != 1] == [
        yaml.safe_load(line)["update"] for i, line in enumerate(lines) if i != 1
    ]


def test_max_updates_of_a_billion_starts_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Schedules are arithmetic: a run of 10**9 updates with a checkpoint interval plans in O(1) memory
    (its CheckpointCallback counts the saves to come) and stops where told."""
    raw = yaml.safe_load(with_changes(trainer={"max_updates": 10**9}))
    raw["callbacks"].append({"kind": "FixedEarlyStopper", "stop_at_update": 2})
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump(raw))
    status, out, err = run_cli(["schedule", str(config)], capsys)
    assert status == 0, err
    assert "CheckpointCallback: every_n_updates=2, fires 500000000 times" in out
    assert out.rstrip().endswith("the run goes on to U1000000000")
    status, out, err = run_cli(["train", str(config), "--output-dir", str(tmp_path), "--run-id", "r"], capsys)
    assert status == 0, err
    assert "500000000 to come" in (tmp_path / "r" / "log.txt").read_text()


def test_a_mapping_that_contains_itself_or_nests_too_deep_is_a_config_error(tmp_path: Path) -> None:
    """The Python API gets the limits too: no RecursionError, no run directory."""
    import noether_core
    from noether_core import ConfigError

    looped = yaml.safe_load(GOOD_YAML)
    looped["datasets"]["train"]["kwargs"]["again"] = looped
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):
        node["k"] = node = {}
    too_deep = {**yaml.safe_load(GOOD_YAML), "extra": deep}
    for config, message in [(looped, "contains itself"), (too_deep, "nested more than 100 levels")]:
        with pytest.raises(ConfigError, match=message):
            noether_core.train(config, output_dir=tmp_path / "runs", run_id="r")
    assert not (tmp_path / "runs").exists()


def test_set_on_an_aliased_value_changes_only_that_place(tmp_path: Path) -> None:
    from noether_core.config.loader import apply_overrides, parse_yaml

    raw = parse_yaml("a: &k {size: 1}\nb: *k\n", "<test>")
    apply_overrides(raw, ["b.size=2"])
    assert raw == {"a": {"size": 1}, "b": {"size": 2}}


# ------------------------------------------------------------------------------------------ fuzzing

_FIELDS = ["trainer", "model", "datasets", "callbacks", "kind", "kwargs", "max_updates", "name", "seed"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["mlp", "blobs", "CheckpointCallback", "..", "1e-3", "yes", "~", "&a", "*a", "!!str"]),
)
keys = st.one_of(st.sampled_from(_FIELDS), st.text(max_size=10), st.integers(-3, 3))
trees = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)),
    max_leaves=25,
)
FUZZ = settings(
    max_examples=60,
    # generous: a hang (the unbounded reader took minutes) still fails, a busy machine does not
    deadline=datetime.timedelta(seconds=20),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def check_validate(work: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> None:
    status, _out, err = run_cli(["config", "validate", str(work / "fuzz.yaml"), *extra], capsys)
    assert status in (0, 2, 3), err
    assert "Traceback" not in err
    if status:
        assert err.startswith("noether: error: "), err


@FUZZ
@given(
    tree=trees,
    where=st.sampled_from(["", "trainer", "model", "datasets", "callbacks", "kwargs", "optimizer"]),
)
def test_fuzz_yaml_trees(tree: Any, where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = yaml.safe_load(GOOD_YAML)
    if where == "":
        raw = tree
    elif where == "kwargs":
        raw["datasets"]["train"]["kwargs"] = tree
    elif where == "callbacks":
        raw["callbacks"] = [tree] if not isinstance(tree, list) else tree
    else:
        raw[where] = tree
    (tmp_path / "fuzz.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True))
    check_validate(tmp_path, capsys)


yaml_text = st.text(
    alphabet=st.sampled_from([*list("[]{}:,-&*!|>'\"#%@` \n\tabc01.~?<=\\"), "\x00", "é"]), max_size=80
)


@FUZZ
@given(text=yaml_text)
def test_fuzz_yaml_text(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fuzz.yaml").write_text(GOOD_YAML + text, encoding="utf-8")
    check_validate(tmp_path, capsys)


set_keys = st.lists(
    st.one_of(
        st.sampled_from([*_FIELDS, "callbacks[0]", "[0]", "[99]", "", ".", "optimizer"]), st.text(max_size=6)
    ),
    min_size=1,
    max_size=6,
).map(".".join)


@FUZZ
@given(key=set_keys, value=st.one_of(yaml_text, st.text(max_size=20)), sep=st.sampled_from(["=", "", "=="]))
@example(key="-", value="", sep="=")  # a value argparse took for an option and answered with its usage text
@example(key="¹", value="", sep="=")  # a digit (isdigit) that int() refuses: was a traceback
def test_fuzz_set_strings(
    key: str, value: str, sep: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if "\x00" in key + value:
        return  # a command line cannot hold NUL
    (tmp_path / "fuzz.yaml").write_text(GOOD_YAML)
    check_validate(tmp_path, capsys, "--set", f"{key}{sep}{value}")
