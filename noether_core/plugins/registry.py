"""Finding and loading plugins: the ``noether.callbacks`` entry-point group, seed spellings, import paths.

Discovery reads distribution metadata only; a plugin's module is imported when a config (or
``noether plugins show``) names its kind, and a plugin that fails to import breaks only what uses it.

A plugin author registers a kind in their package's ``pyproject.toml``::

    [project.entry-points."noether.callbacks"]
    MyCallback = "my_package.callbacks:MyCallback"        # a class plugin
    my_heartbeat = "my_package.heartbeat"                 # a module of @hookimpl functions
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import attrs

from noether_core.config.schema import CallbackConfig
from noether_core.errors import (
    ImportPathError,
    PluginLoadError,
    PluginValidationError,
    UnknownKindError,
    raised_at,
)
from noether_core.lookup import (
    PluginSource,
    claims_by_kind,
    did_you_mean,
    entry_point_sources,
    import_object,
)
from noether_core.plugins import hookspecs
from noether_core.plugins.markers import PROJECT_NAME

ENTRY_POINT_GROUP = "noether.callbacks"
#: Qualified spellings of the reference documents: ``noether.core.callbacks.EmaCallback`` is ``EmaCallback``.
SEED_PREFIXES = ("noether.core.callbacks.", "noether.training.callbacks.")

_IMPL_ATTR = f"{PROJECT_NAME}_impl"


@attrs.frozen
class Plugin:
    """A loaded plugin: what it is, which hooks it implements, and how to make one per config entry."""

    source: PluginSource
    target: Any
    config_class: type[CallbackConfig]
    #: The events it implements plainly (``@hookimpl``), in hook-spec order.
    hooks: tuple[str, ...]
    is_class: bool
    stateful: bool
    #: Whether ``at_eval`` needs the model in eval mode (the default). A plugin that never runs the
    #: model (it logs a learning rate, a loss already computed, a time) sets ``needs_eval_mode = False``
    #: on its class or module; when only such entries are due, the trainer leaves the model in train
    #: mode, which saves two walks over every submodule per tick.
    needs_eval_mode: bool = True
    #: The events it wraps (``@hookimpl(wrapper=True)``), in hook-spec order.
    wrappers: tuple[str, ...] = ()
    #: ``(attribute, event)`` of every implementation: they differ for ``@hookimpl(specname=...)``.
    members: tuple[tuple[str, str], ...] = attrs.field(
        default=attrs.Factory(lambda self: tuple((h, h) for h in self.hooks + self.wrappers), takes_self=True)
    )

    @property
    def kind(self) -> str:
        return self.source.kind

    @property
    def scheduled(self) -> bool:
        """Whether entries of this kind take an interval (the plugin implements ``at_eval``)."""
        return "at_eval" in self.hooks

    def instantiate(self, config: CallbackConfig) -> object:
        """A fresh plugin object for one config entry, so two entries of one kind never share state."""
        if self.is_class:
            return self.target(config)
        return FunctionPlugin(self.target, tuple(attribute for attribute, _ in self.members))


class FunctionPlugin:
    """One entry's plugin object for a module (or object) of ``@hookimpl`` functions.

    pluggy registers objects and refuses the same object twice, so each entry gets its own holder of
    the shared functions; identity (not attribute) equality keeps two holders apart.
    """

    def __init__(self, source: object, attributes: tuple[str, ...]) -> None:
        self.source = source
        for name in attributes:
            setattr(self, name, getattr(source, name))

    def __repr__(self) -> str:
        return f"<FunctionPlugin of {getattr(self.source, '__name__', self.source)!r}>"


class PluginRegistry:
    """The kinds available in this environment and, on demand, the plugins behind them."""

    def __init__(self, sources: Iterable[PluginSource]) -> None:
        self._sources = claims_by_kind(sources)
        self._loaded: dict[str, Plugin] = {}

    @classmethod
    def from_environment(cls) -> PluginRegistry:
        """Every ``noether.callbacks`` entry point of the installed distributions (no imports)."""
        return cls(entry_point_sources(ENTRY_POINT_GROUP))

    def kinds(self) -> list[str]:
        return sorted(self._sources)

    def sources(self, kind: str) -> list[PluginSource]:
        """All distributions claiming ``kind`` (more than one is a conflict)."""
        return list(self._sources.get(kind, ()))

    def __iter__(self) -> Iterator[tuple[str, list[PluginSource]]]:
        return iter(sorted(self._sources.items()))

    def canonical(self, kind: str) -> str:
        """The registered kind a spelling means: itself, or the last part of a seed spelling."""
        if kind in self._sources or ":" in kind:
            return kind
        for prefix in SEED_PREFIXES:
            if kind.startswith(prefix):
                short = kind.rsplit(".", 1)[-1]
                if short in self._sources:
                    return short
        return kind

    def did_you_mean(self, kind: str) -> str:
        """`` Did you mean 'X'?`` for installed kinds close to ``kind``, else ``""``."""
        hint = did_you_mean(kind.rsplit(".", 1)[-1], self.kinds(), n=3, capital=True)
        return f" {hint}" if hint else ""

    def source(self, kind: str) -> PluginSource:
        """The one source of ``kind``; raises :class:`PluginLoadError` for unknown or conflicting kinds."""
        kind = self.canonical(kind)
        if ":" in kind:
            return PluginSource(kind=kind, value=kind)
        claims = self._sources.get(kind)
        if not claims and "." in kind and not kind.startswith(SEED_PREFIXES):
            # the seeds' spelling of unpackaged code: path.to.CustomCallback means path.to:CustomCallback
            module, _, attr = kind.rpartition(".")
            return PluginSource(kind=kind, value=f"{module}:{attr}")
        if not claims:
            raise UnknownKindError(
                kind,
                f"no installed plugin provides it (entry-point group {ENTRY_POINT_GROUP!r})."
                f"{self.did_you_mean(kind)} A kind is an installed plugin's name, or an import path "
                "'package.module:Name'.",
            )
        if len(claims) > 1:
            owners = ", ".join(c.describe() for c in claims)
            raise PluginLoadError(
                kind,
                f"the kind is claimed by {len(claims)} distributions ({owners}); uninstall all but one",
            )
        return claims[0]

    def load(self, kind: str) -> Plugin:
        """Import the plugin behind ``kind`` (cached) and check it against the hook specs."""
        source = self.source(kind)
        plugin = self._loaded.get(source.kind)
        if plugin is None:
            plugin = self._loaded[source.kind] = inspect_plugin(source, _import_target(source, self))
        return plugin


def _import_target(source: PluginSource, registry: PluginRegistry | None = None) -> Any:
    """The object ``source`` names. A wrong import path written in a config is an unknown kind (a config
    mistake); anything else that fails, and any failure of a distribution's entry point, is a plugin
    that cannot be loaded."""
    try:
        return import_object(source.value)
    except ImportPathError as exc:
        if source.distribution is None:
            if exc.attribute is None:
                hint = registry.did_you_mean(source.kind) if registry is not None else ""
                reason = f"{exc.reason} (as an import path).{hint}"
            else:
                hint = f" Did you mean {exc.suggestion}?" if exc.suggestion else ""
                reason = f"{exc.reason}.{hint}"
            raise UnknownKindError(source.kind, reason) from None
        cause: BaseException = exc
    except Exception as exc:
        cause = exc
    raise PluginLoadError(
        source.kind,
        f"importing {source.value!r} failed: {type(cause).__name__}: {cause}{raised_at(cause)}",
        source.distribution,
        source.version,
    ) from cause


_SPEC_ARGS: dict[str, frozenset[str]] = {
    name: frozenset(inspect.signature(getattr(hookspecs, name)).parameters) for name in hookspecs.HOOK_NAMES
}


def _impl_opts(obj: Any) -> dict[str, Any] | None:
    opts = getattr(obj, _IMPL_ATTR, None)
    return opts if isinstance(opts, dict) else None


#: pluggy's ordering options, which noether refuses: entries run in the order of the ``callbacks`` list.
_ORDERING = ("tryfirst", "trylast")


def inspect_plugin(source: PluginSource, target: Any) -> Plugin:
    """Check ``target`` against the hook specs and describe it as a :class:`Plugin`.

    Catches what pluggy would only notice later or never: misspelled hook names, argument names that no
    event passes, hook-named methods without ``@hookimpl``, pluggy options noether does not honour
    (``tryfirst``/``trylast``: the order is the ``callbacks`` list's; old-style ``hookwrapper``), and a
    ``Config`` (of a class, or of a module of functions) that is not a ``CallbackConfig``.
    """

    def fail(reason: str) -> PluginValidationError:
        return PluginValidationError(source.kind, reason, source.distribution, source.version)

    is_class = inspect.isclass(target)
    if not is_class and not isinstance(target, types.ModuleType) and callable(target):
        raise fail(
            f"{source.value!r} is a function; a plugin is a class, or a module/object of @hookimpl functions"
        )

    hooks: list[str] = []
    wrappers: list[str] = []
    members: list[tuple[str, str]] = []
    for name in dir(target):
        if name.startswith("__"):
            continue
        member = inspect.getattr_static(target, name, None) if is_class else getattr(target, name, None)
        binds_first = is_class and not isinstance(member, staticmethod)
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        opts = _impl_opts(member)
        if opts is None:
            if name in _SPEC_ARGS and callable(member):
                raise fail(f"{name!r} has the name of a hook but is not marked with @hookimpl")
            continue
        hook = opts.get("specname") or name
        if hook not in _SPEC_ARGS:
            close = did_you_mean(hook, _SPEC_ARGS)
            hint = f" ({close})" if close else ""
            raise fail(
                f"@hookimpl {hook!r} is not a noether hook{hint}; hooks are {', '.join(hookspecs.HOOK_NAMES)}"
            )
        ordering = [option for option in _ORDERING if opts.get(option)]
        if ordering:
            raise fail(
                f"@hookimpl({ordering[0]}=True) on {name!r}: noether calls entries in the order of the "
                "config's callbacks list, so list the entry earlier or later instead"
            )
        if opts.get("hookwrapper"):
            raise fail(
                f"@hookimpl(hookwrapper=True) on {name!r} is pluggy's old-style wrapper; write "
                "@hookimpl(wrapper=True), a generator that yields once (result = yield)"
            )
        params = list(inspect.signature(cast(Callable[..., Any], member)).parameters.values())
        if binds_first and params:
            params = params[1:]  # ``self`` (or ``cls``), whatever it is called: bound, never passed
        unknown = [
            p.name
            for p in params
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in _SPEC_ARGS[hook]
        ]
        if unknown:
            raise fail(
                f"{hook}() takes {', '.join(repr(u) for u in unknown)}, which the event does not pass; "
                f"it passes {', '.join(sorted(_SPEC_ARGS[hook]))}"
            )
        if opts.get("wrapper"):
            if not inspect.isgeneratorfunction(member):
                raise fail(f"@hookimpl(wrapper=True) {name!r} must be a generator that yields once")
            wrappers.append(hook)
        else:
            hooks.append(hook)
        members.append((name, hook))
    if not hooks and not wrappers:
        raise fail(f"{source.value!r} implements none of the hooks {', '.join(hookspecs.HOOK_NAMES)}")
    twice = sorted({h for h in hooks if hooks.count(h) > 1} | {h for h in wrappers if wrappers.count(h) > 1})
    if twice:
        raise fail(f"{twice[0]!r} is implemented twice (a second @hookimpl under specname=?)")

    name = getattr(target, "__name__", type(target).__name__)
    declared = getattr(target, "Config", CallbackConfig)
    if not (inspect.isclass(declared) and attrs.has(declared) and issubclass(declared, CallbackConfig)):
        raise fail(f"{name}.Config must be an attrs class extending noether_core.CallbackConfig")
    shadowing = sorted({"key", "interval"} & {f.name for f in attrs.fields(declared)})
    if shadowing:
        raise fail(
            f"{name}.Config has a field named {shadowing[0]!r}, which would hide "
            f"CallbackConfig.{shadowing[0]}; rename the field"
        )
    stateful = (
        is_class
        and callable(getattr(target, "state_dict", None))
        and callable(getattr(target, "load_state_dict", None))
    )
    needs_eval_mode = getattr(target, "needs_eval_mode", True)
    if not isinstance(needs_eval_mode, bool):
        raise fail(f"needs_eval_mode must be True or False, got {needs_eval_mode!r}")
    order = {hook: i for i, hook in enumerate(hookspecs.HOOK_NAMES)}
    return Plugin(
        source=source,
        target=target,
        config_class=declared,
        hooks=tuple(sorted(hooks, key=order.__getitem__)),
        is_class=is_class,
        stateful=stateful,
        needs_eval_mode=needs_eval_mode,
        wrappers=tuple(sorted(wrappers, key=order.__getitem__)),
        members=tuple(members),
    )


__all__ = [
    "ENTRY_POINT_GROUP",
    "SEED_PREFIXES",
    "Plugin",
    "PluginRegistry",
    "PluginSource",
    "inspect_plugin",
]
