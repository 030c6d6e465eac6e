"""The ``noether`` command.

Exit statuses: 0 success (an early stop is a success), 1 run failed, 2 invalid config or usage,
3 plugin failed to load, 130 interrupted after a resumable checkpoint was saved.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import textwrap
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from noether_core.config.loader import load_config
from noether_core.config.schema import RunConfig
from noether_core.errors import (
    EXIT_FAILED,
    EXIT_OK,
    NoetherError,
    PluginLoadError,
    UnknownKindError,
    UsageError,
)
from noether_core.plugins import hookspecs
from noether_core.plugins.registry import PluginRegistry
from noether_core.plugins.scheduling import INTERVAL_FIELDS, Interval
from noether_core.run.torchrun import (
    add_launcher_options,
    launcher_requested,
    run_torchrun,
    torchrun_command,
)

if TYPE_CHECKING:
    from noether_core.lookup import PluginSource
    from noether_core.run.plan import RunPlan


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="noether",
        description="Train PyTorch models with callbacks that are plugins.",
        epilog="Exit statuses: 0 ok, 1 run failed, 2 invalid config or usage, 3 plugin failed to load, "
        "130 interrupted (a resumable checkpoint was saved).",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=os.environ.get("NOETHER_DEBUG", "") not in ("", "0"),
        help="on an error, print the whole traceback too (or set NOETHER_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_debug(p: argparse.ArgumentParser) -> None:
        # also after the command (`noether train --debug`); SUPPRESS keeps the value given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def add_set(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. --set trainer.max_epochs=3 (repeatable)",
        )

    def add_keys(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--keys",
            action="append",
            metavar="PATTERN",
            help="metrics to show, as fnmatch patterns, e.g. --keys 'loss/*' (repeatable; default loss/*)",
        )

    train = sub.add_parser("train", help="train a model (the bundled example when no CONFIG is given)")
    train.add_argument("config", nargs="?", type=Path, help="YAML run config")
    add_set(train)
    train.add_argument(
        "--output-dir", type=Path, default=Path("runs"), help="where run directories go (runs/)"
    )
    train.add_argument("--run-id", help="name of the run directory (default: date and a random suffix)")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    train.add_argument(
        "--checkpoint", default=None, metavar="TAG", help="with --resume: tag to resume (latest)"
    )
    train.add_argument(
        "--restart",
        action="store_true",
        help="with --run-id: start that run over from update 0, removing its files (refused if it has "
        "any checkpoint)",
    )
    add_launcher_options(train)

    ev = sub.add_parser("eval", help="evaluate a run's checkpoint with its evaluators")
    ev.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ev.add_argument("--checkpoint", default="last", metavar="TAG", help="checkpoint tag (last)")

    plugins = sub.add_parser("plugins", help="list and inspect installed plugins, start a new one")
    psub = plugins.add_subparsers(dest="plugins_command", required=True, metavar="COMMAND")
    plist = psub.add_parser("list", help="installed plugins (reads metadata only)")
    plist.add_argument("--json", action="store_true", help="machine-readable output")
    plist.add_argument("--check", action="store_true", help="also import each plugin and report its status")
    plist.add_argument(
        "--group",
        choices=("callbacks", "trackers", "all"),
        default="all",
        help="which entry-point group: noether.callbacks, noether.trackers, or both (all)",
    )
    pshow = psub.add_parser("show", help="one plugin: origin, hooks, config fields")
    pshow.add_argument("kind")
    pnew = psub.add_parser("new", help="write a new plugin package, ready to install and test")
    pnew.add_argument("name", metavar="NAME", help="the distribution's name, e.g. noether-gradient-tools")
    pnew.add_argument(
        "--dir", type=Path, default=Path(), metavar="DIR", help="where the package's folder goes (.)"
    )

    config = sub.add_parser("config", help="validate configs, print the bundled example")
    csub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    validate = csub.add_parser("validate", help="check a config without training")
    validate.add_argument("config", type=Path)
    add_set(validate)
    example = csub.add_parser("example", help="print the bundled example config")

    schedule = sub.add_parser("schedule", help="which entry fires at which update, for the whole run")
    schedule.add_argument("config", nargs="?", type=Path, help="YAML run config (default: bundled example)")
    add_set(schedule)

    hooks = sub.add_parser("hooks", help="the events plugins can implement")

    plot = sub.add_parser("plot", help="draw metrics of runs against the update counter to an image")
    plot.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    add_keys(plot)
    plot.add_argument(
        "-o", "--output", type=Path, default=Path("plot.png"), metavar="FILE", help="the image (plot.png)"
    )

    runs = sub.add_parser("runs", help="list runs")
    rsub = runs.add_subparsers(dest="runs_command", required=True, metavar="COMMAND")
    rlist = rsub.add_parser("list", help="runs with status, position and last values of metrics")
    rlist.add_argument(
        "dir", nargs="?", type=Path, default=Path("runs"), metavar="DIR", help="where the runs are (runs)"
    )
    add_keys(rlist)
    rlist.add_argument("--json", action="store_true", help="machine-readable output")
    for leaf in (train, ev, plist, pshow, pnew, validate, example, schedule, hooks, plot, rlist):
        add_debug(leaf)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``noether`` command with ``argv`` (default: the process's own command line, which then ends
    with the command)."""
    args = _parser().parse_args(_set_values_joined(sys.argv[1:] if argv is None else argv))
    args.ends_process = argv is None
    try:
        return int(_dispatch(args) or EXIT_OK)
    except NoetherError as exc:
        if args.debug:
            traceback.print_exception(exc, file=sys.stderr)
        if not getattr(exc, "quiet", False) or args.debug:
            print(f"noether: error: {_rank_prefix()}{exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt as exc:
        if args.debug:
            traceback.print_exception(exc, file=sys.stderr)
        # 130 promises a resumable checkpoint; an interrupt that could not save one is a failed run
        reason = str(exc) or "interrupted; no checkpoint was saved"
        print(f"noether: {reason}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_FAILED


def _set_values_joined(argv: Sequence[str]) -> list[str]:
    """``argv`` with each ``--set VALUE`` written ``--set=VALUE``: argparse takes a separate value that
    starts with ``-`` (``--set -=1``) for an option and fails with its own usage text, while the joined
    form always reaches the config check, which names what is wrong with it."""
    joined: list[str] = []
    args = iter(argv)
    for arg in args:
        value = next(args, None) if arg == "--set" else None
        joined.append(arg if value is None else f"--set={value}")
    return joined


def _rank_prefix() -> str:
    """``rank R: `` in a process of a distributed run (torchrun's ``RANK``), so that a message says
    which process failed; empty with one process."""
    world_size = os.environ.get("WORLD_SIZE", "1")
    if world_size.isdigit() and int(world_size) > 1:
        return f"rank {os.environ.get('RANK', '?')}: "
    return ""


def _dispatch(args: argparse.Namespace) -> int | None:
    if args.command == "plugins":
        if args.plugins_command == "new":
            from noether_core.plugins.scaffold import new_plugin_command

            return new_plugin_command(args.name, args.dir)
        registry = PluginRegistry.from_environment()
        if args.plugins_command == "list":
            return _plugins_list(registry, as_json=args.json, check=args.check, group=args.group)
        return _plugins_show(registry, args.kind)
    if args.command == "config":
        if args.config_command == "example":
            from noether_core.example import example_yaml

            print(example_yaml(), end="")
            return EXIT_OK
        registry = PluginRegistry.from_environment()
        config = load_config(args.config, registry, args.overrides)
        _plan_checked(config, registry, str(args.config))
        n = len(config.callbacks)
        print(f"{args.config}: valid ({n} callback entr{'y' if n == 1 else 'ies'}, {config.trainer.end})")
        return EXIT_OK
    if args.command == "hooks":
        return _hooks()
    if args.command == "schedule":
        return _schedule(args)
    if args.command == "train":
        if launcher_requested(args):
            if args.resume is None:
                _checked_before_launch(args)
            command = torchrun_command(args, _train_arguments(args))
            return run_torchrun(command, replace_process=args.ends_process)
        from noether_core.run.launch import train_from_cli

        return train_from_cli(
            config_path=args.config,
            overrides=args.overrides,
            output_dir=args.output_dir,
            run_id=args.run_id,
            resume=args.resume,
            checkpoint=args.checkpoint,
            ends_process=args.ends_process,
            restart=args.restart,
        )
    if args.command == "eval":
        from noether_core.run.launch import eval_from_cli

        return eval_from_cli(run_dir=args.run_dir, checkpoint=args.checkpoint)
    if args.command == "plot":
        from noether_core.io.plots import plot_command

        return plot_command(args.run_dirs, args.keys, args.output)
    if args.command == "runs":
        from noether_core.io.runs import runs_list_command

        return runs_list_command(args.dir, args.keys, as_json=args.json)
    raise AssertionError(args.command)  # argparse only lets known commands through


def _checked_before_launch(args: argparse.Namespace) -> None:
    """What ``noether train --nproc-per-node N`` refuses once, before torchrun starts any process (each
    would print the same error, under torchrun's report of its failed children): a new run's invalid
    config, and a run on CUDA with more processes on this machine than it has GPUs. A resumed run's
    config is read by its processes, which refuse the same things."""
    from noether_core.run.device import check_gpus_per_process, pick_device
    from noether_core.run.launch import load_run_config

    registry = PluginRegistry.from_environment()
    config, source = load_run_config(args.config, args.overrides, registry)
    _plan_checked(config, registry, source)
    if pick_device(config.trainer.device).type == "cuda":
        check_gpus_per_process(config.trainer.device, args.nproc_per_node)


def _train_arguments(args: argparse.Namespace) -> list[str]:
    """``noether train``'s arguments in ``args``, the launcher's left out: what each process of a
    torchrun job gets."""
    out = ["train"]
    if args.config is not None:
        out.append(os.fspath(args.config))
    for override in args.overrides:
        out += ["--set", override]
    out += ["--output-dir", os.fspath(args.output_dir)]
    for option, value in (
        ("--run-id", args.run_id),
        ("--resume", args.resume),
        ("--checkpoint", args.checkpoint),
    ):
        if value is not None:
            out += [option, os.fspath(value)]
    if args.restart:
        out.append("--restart")
    if args.debug:
        out.append("--debug")
    return out


def _plan_checked(config: RunConfig, registry: PluginRegistry, source: str | None) -> RunPlan:
    """The run plan of ``config``, with the checks that need the model and data factories (their kinds
    exist, their arguments fit), the metric dependencies between entries, and every entry's plugin
    object made once."""
    from noether_core.io.trackers import load_trackers
    from noether_core.run.metric_collisions import check_metric_collisions
    from noether_core.run.metric_dependencies import check_metric_dependencies
    from noether_core.run.plan import RunPlan

    plan = RunPlan(config, registry, source=source)
    check_metric_dependencies(plan)
    check_metric_collisions(plan)
    plan.plugin_manager(defaults=False)  # a constructor that raises fails here, before any run directory
    load_trackers(config.tracker)  # and so does a tracker's, a missing library included
    return plan


# -------------------------------------------------------------------------------------------- plugins


#: The trackers' entry-point group (``noether_core.io.trackers.ENTRY_POINT_GROUP``, which imports torch).
_TRACKER_GROUP = "noether.trackers"


def _plugins_list(registry: PluginRegistry, *, as_json: bool, check: bool, group: str = "all") -> int:
    rows: list[dict[str, Any]] = []
    if group in ("callbacks", "all"):
        rows += _callback_rows(registry, check)
    if group in ("trackers", "all"):
        rows += _tracker_rows(check)
    if as_json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        groups = {"callbacks": "'noether.callbacks'", "trackers": f"{_TRACKER_GROUP!r}"}
        where = groups.get(group, f"{groups['callbacks']} and {groups['trackers']}")
        print(f"no {'plugins' if group == 'all' else group} installed (entry-point group {where})")
        return EXIT_OK
    width = max(len(r["kind"]) for r in rows)
    group_width = max(len(r["group"]) for r in rows)
    for r in rows:
        origin = f"{r['distribution']} {r['version']}" if r["distribution"] else r["value"]
        status = (
            ""
            if r["status"] == "available"
            else f"  [{r['status']}{': ' + r['error'] if r['error'] else ''}]"
        )
        print(f"{r['group']:<{group_width}}  {r['kind']:<{width}}  {origin}{status}")
    return EXIT_OK


def _source_row(
    group: str, kind: str, source: PluginSource, sources: Sequence[PluginSource]
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "group": group,
        "kind": kind,
        "value": source.value,
        "distribution": source.distribution,
        "version": source.version,
        "status": "conflict" if len(sources) > 1 else "available",
        "error": None,
    }
    if len(sources) > 1:
        others = ", ".join(s.describe() for s in sources if s is not source)
        row["error"] = f"also claimed by {others}"
    return row


def _callback_rows(registry: PluginRegistry, check: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for kind, sources in registry:
        for source in sources:
            row = _source_row("callbacks", kind, source, sources)
            if check and len(sources) == 1:
                try:
                    plugin = registry.load(kind)
                except PluginLoadError as exc:
                    row.update(status="error", error=exc.reason)
                else:
                    row.update(
                        status="ok",
                        hooks=list(plugin.hooks),
                        wrappers=list(plugin.wrappers),
                        config_class=_qualname(plugin.config_class),
                    )
            rows.append(row)
    return rows


def _tracker_rows(check: bool) -> list[dict[str, Any]]:
    """The ``noether.trackers`` entry points; ``check`` imports each and, when its constructor needs no
    argument, creates one (no side effects, by the protocol), so a missing library shows as an error."""
    from noether_core.lookup import claims_by_kind, entry_point_sources

    rows: list[dict[str, Any]] = []
    for kind, sources in sorted(claims_by_kind(entry_point_sources(_TRACKER_GROUP)).items()):
        for source in sources:
            row = _source_row("trackers", kind, source, sources)
            if check and len(sources) == 1:
                row.update(_tracker_check(source))
            rows.append(row)
    return rows


def _tracker_check(source: PluginSource) -> dict[str, Any]:
    from noether_core.errors import ConfigError
    from noether_core.lookup import kwargs_problem

    try:
        factory = source.load()
    except Exception as exc:
        return {"status": "error", "error": f"importing {source.value!r} failed: {type(exc).__name__}: {exc}"}
    if not callable(factory):
        return {"status": "error", "error": f"{source.value!r} is not a class or factory"}
    if kwargs_problem(factory, {}) is None:  # arguments it needs come from a config: not checked here
        try:
            factory()
        except ConfigError as exc:
            return {"status": "error", "error": "; ".join(issue.message for issue in exc.issues)}
        except Exception as exc:
            return {"status": "error", "error": f"creating it failed: {type(exc).__name__}: {exc}"}
    return {"status": "ok"}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _plugins_show(registry: PluginRegistry, kind: str) -> int:
    try:
        plugin = registry.load(kind)
    except UnknownKindError as exc:
        # a name that nothing provides is a usage mistake, not a plugin that failed to load
        raise UsageError(
            f"unknown plugin kind {kind!r}: {exc.reason} The installed ones: noether plugins list"
        ) from None
    source = plugin.source
    print(f"kind:          {plugin.kind}")
    print(f"distribution:  {source.distribution or '-'} {source.version or ''}".rstrip())
    print(f"object:        {source.value}")
    print(
        f"style:         {'class' if plugin.is_class else 'functions'}"
        f"{', stateful' if plugin.stateful else ''}"
    )
    print(f"hooks:         {', '.join(plugin.hooks) or '-'}")
    if plugin.wrappers:
        print(f"wraps:         {', '.join(plugin.wrappers)}")
    default_interval = _default_interval(plugin.config_class)
    if not plugin.scheduled:
        scheduled = "no"
    elif default_interval is not None:
        scheduled = f"yes (default {default_interval.verbose}; an entry may set another every_n_*)"
    else:
        scheduled = "yes (set one every_n_* in its entry)"
    print(f"scheduled:     {scheduled}")
    doc = inspect.getdoc(plugin.target)
    if doc:
        print("\n" + textwrap.indent(doc.split("\n\n")[0], "  "))
    print("\nconfig fields:")
    for field in attrs.fields(plugin.config_class):
        default = "required" if field.default is attrs.NOTHING else f"default {_default_repr(field.default)}"
        type_name = getattr(field.type, "__name__", None) or str(field.type).replace("typing.", "")
        print(f"  {field.name}: {type_name} ({default})")
    return EXIT_OK


def _default_interval(cls: type) -> Interval | None:
    """The interval a Config class's defaults set, if any."""
    defaults = {
        f.name: None if f.default is attrs.NOTHING else f.default
        for f in attrs.fields(cls)
        if f.name in INTERVAL_FIELDS
    }
    try:
        return Interval.from_fields(**defaults)
    except ValueError:
        return None


def _default_repr(default: Any) -> str:
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return repr(default.factory()) if not default.takes_self else "<computed>"
    return repr(default)


# -------------------------------------------------------------------------------------------- hooks


def _hooks() -> int:
    for name in hookspecs.HOOK_NAMES:
        spec = getattr(hookspecs, name)
        params = [p for p in inspect.signature(spec).parameters if p not in hookspecs.CORE_ARGUMENTS]
        doc = (inspect.getdoc(spec) or "").split("\n\n")[0].replace("\n", " ")
        extra = f"  + {', '.join(params)}" if params else ""
        print(f"{name}{extra}")
        print(textwrap.fill(doc, width=96, initial_indent="    ", subsequent_indent="    "))
    print(
        f"\nEvery event also passes: {', '.join(hookspecs.CORE_ARGUMENTS)}. "
        "Details: noether_core/plugins/hookspecs.py"
    )
    return EXIT_OK


# ----------------------------------------------------------------------------------------- schedule


def _schedule(args: argparse.Namespace) -> int:
    from noether_core.example import example_yaml
    from noether_core.run.plan import RunPlan

    registry = PluginRegistry.from_environment()
    if args.config is None:
        plan = RunPlan(load_config(None, registry, args.overrides, text=example_yaml()), registry)
    else:
        plan = _plan_checked(load_config(args.config, registry, args.overrides), registry, str(args.config))
    geometry, scheduler = plan.geometry, plan.scheduler
    labels = {id(e): f"{e.key} (default)" for e in plan.default_entries}
    rows = plan.all_entries
    upe, ebs, total = geometry.updates_per_epoch, geometry.effective_batch_size, geometry.total_updates
    print(f"{geometry.end}: {total} updates, {upe} per epoch, effective batch size {ebs}")
    for row in rows:
        if row.interval is not None:
            n = scheduler.count_due(row.interval)
            times = f"{n} time{'s' if n != 1 else ''}"
            print(f"  {labels.get(id(row), row.key)}: {row.interval.verbose}, fires {times}")
    print()
    width = len(str(total))
    # computed tick by tick, never as a whole: a run of 10**9 updates prints at once
    for shown, (update, due) in enumerate(scheduler.iter_timeline(rows)):
        if shown == SCHEDULE_ROWS:
            print(
                f"... the first {SCHEDULE_ROWS} updates with an entry due are shown; "
                f"the run goes on to U{total}"
            )
            break
        epoch_end = f"  end of epoch {update // upe}" if update % upe == 0 else ""
        print(f"U{update:<{width}}  {', '.join(labels.get(id(r), r.key) for r in due)}{epoch_end}")
    return EXIT_OK


#: How many ticks ``noether schedule`` prints at most.
SCHEDULE_ROWS = 500


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
