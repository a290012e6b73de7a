"""Finding and loading plugins: entry points, one at a time, each in isolation."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from importlib import metadata
from typing import Any

import pluggy

from metactl import hookspecs
from metactl.algorithm import FAMILIES, Algorithm
from metactl.dataset import Dataset, ImageDataset, TaskFamily
from metactl.errors import PluginError, UsageError
from metactl.nn import BUILT_IN_BACKBONES

BackboneFactory = Callable[..., Any]
"""``factory(channels, hidden, options) -> nn.Module``, (N, C, H, W) -> (N, features)."""

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or registered; shown by ``metactl plugins list``."""

    plugin: str
    distribution: str
    error: str


@dataclass(frozen=True)
class RegisteredAlgorithm:
    algorithm: type[Algorithm]
    plugin: str
    distribution: str


@dataclass(frozen=True)
class RegisteredDataset:
    dataset: Dataset
    plugin: str
    distribution: str


@dataclass(frozen=True)
class RegisteredBackbone:
    factory: BackboneFactory
    plugin: str
    distribution: str


class _Registry:
    """Entries contributed by plugins, by name; what one plugin adds stays pending until its
    hooks have all returned, and is dropped if one raises."""

    kind = "entry"

    def __init__(self) -> None:
        self._entries: dict[str, Any] = {}
        self._plugin = "?"
        self._distribution = "?"
        self._pending: list[str] = []

    def _begin(self, plugin: str, distribution: str) -> None:
        """Attribute the next registrations to ``plugin``; they stay pending until committed."""
        self._plugin, self._distribution, self._pending = plugin, distribution, []

    def _rollback(self) -> None:
        for name in self._pending:
            del self._entries[name]
        self._pending = []

    def _put(self, name: str, make: Callable[[str, str], Any]) -> None:
        existing = self._entries.get(name)
        if existing is not None:
            raise PluginError(
                f"{self.kind} {name!r} is registered by both {existing.distribution} "
                f"and {self._distribution}",
                "uninstall one of the two packages")
        self._entries[name] = make(self._plugin, self._distribution)
        self._pending.append(name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Any]:
        return [self._entries[name] for name in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entry(self, name: str) -> Any:
        """The entry called ``name``, or a one-line error suggesting the nearest names."""
        if name in self._entries:
            return self._entries[name]
        raise unknown_name(self.kind, name, self.names())


def unknown_name(kind: str, name: str, known: list[str]) -> UsageError:
    """``unknown <kind> 'name'``, suggesting the nearest of ``known``."""
    close = [candidate for candidate in known if name and candidate.startswith(name)]
    close = close[:3] or difflib.get_close_matches(name, known, n=3)
    hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close
            else f"known {kind}s: {', '.join(sorted(known)) or 'none'}")
    return UsageError(f"unknown {kind} {name!r}", hint)


class AlgorithmRegistry(_Registry):
    """The algorithms contributed by plugins, by name."""

    kind = "algorithm"

    def add(self, algorithm: type[Algorithm]) -> None:
        """Register ``algorithm`` (a subclass of :class:`metactl.algorithm.Algorithm`)."""
        _check_algorithm(algorithm)
        self._put(algorithm.name, partial(RegisteredAlgorithm, algorithm))

    def get(self, name: str) -> type[Algorithm]:
        return self.entry(name).algorithm


class DatasetRegistry(_Registry):
    """The datasets contributed by plugins, by name."""

    kind = "dataset"

    def add(self, dataset: type[Dataset]) -> None:
        """Register ``dataset``, a subclass of :class:`metactl.dataset.ImageDataset` (its card
        is read and checked now) or of :class:`metactl.dataset.TaskFamily`."""
        if not (isinstance(dataset, type) and issubclass(dataset, (ImageDataset, TaskFamily))):
            raise PluginError(f"{dataset!r} is not a subclass of metactl.dataset.ImageDataset "
                              "or TaskFamily", "register dataset classes only")
        instance = dataset()
        if not NAME_PATTERN.match(instance.name or ""):
            raise PluginError(f"dataset class {dataset.__name__} has an invalid name "
                              f"{instance.name!r}", "use lower-case letters, digits and dashes")
        self._put(instance.name, partial(RegisteredDataset, instance))

    def get(self, name: str) -> Dataset:
        return self.entry(name).dataset


class BackboneRegistry(_Registry):
    """Backbones contributed by plugins, by name, beside the built-in ``conv4`` and
    ``resnet12``."""

    kind = "backbone"

    def add(self, name: str, factory: BackboneFactory) -> None:
        """Register ``factory(channels, hidden, options) -> nn.Module`` as ``name``."""
        if not NAME_PATTERN.match(name or "") or not callable(factory):
            raise PluginError(f"backbone {name!r} needs a lower-case name and a callable "
                              "factory", "call registry.add('my-net', build_my_net)")
        if name in BUILT_IN_BACKBONES:
            raise PluginError(f"backbone {name!r} is built into metactl",
                              "register it under another name")
        self._put(name, partial(RegisteredBackbone, factory))


def _check_algorithm(algorithm: type[Algorithm]) -> None:
    if not (isinstance(algorithm, type) and issubclass(algorithm, Algorithm)):
        raise PluginError(f"{algorithm!r} is not a subclass of metactl.algorithm.Algorithm",
                          "register Algorithm subclasses only")
    if not NAME_PATTERN.match(algorithm.name or ""):
        raise PluginError(f"algorithm class {algorithm.__name__} has an invalid name "
                          f"{algorithm.name!r}", "use lower-case letters, digits and dashes")
    if algorithm.family not in FAMILIES:
        raise PluginError(f"algorithm {algorithm.name!r} has family {algorithm.family!r}",
                          f"use one of {', '.join(FAMILIES)}")
    for result in algorithm.paper_results:
        if result.protocol not in algorithm.paper_protocols:
            raise PluginError(f"algorithm {algorithm.name!r} reports {result.setting} on "
                              f"{result.dataset} with protocol {result.protocol!r}, which its "
                              "paper_protocols do not define",
                              "add the protocol to paper_protocols or fix its name")


@dataclass(frozen=True)
class RegisteredLogger:
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str


class LoggerRegistry:
    """The metrics loggers contributed by plugins (``--set logger=NAME``), by name."""

    def __init__(self) -> None:
        self._entries: dict[str, RegisteredLogger] = {}
        self._plugin, self._distribution, self._pending = "?", "?", []

    def _begin(self, plugin: str, distribution: str) -> None:
        self._plugin, self._distribution, self._pending = plugin, distribution, []

    def _rollback(self) -> None:
        for name in self._pending:
            del self._entries[name]
        self._pending = []

    def add(self, name: str, factory: Callable[..., Any]) -> None:
        """Register ``factory(run_folder, config, start_step) -> logger`` under ``name``."""
        if not NAME_PATTERN.match(name or ""):
            raise PluginError(f"invalid logger name {name!r}",
                              "use lower-case letters, digits and dashes")
        existing = self._entries.get(name)
        if existing is not None:
            raise PluginError(f"logger {name!r} is registered by both {existing.distribution} "
                              f"and {self._distribution}", "uninstall one of the two packages")
        self._entries[name] = RegisteredLogger(name, factory, self._plugin, self._distribution)
        self._pending.append(name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> RegisteredLogger:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = (f"did you mean {close[0]!r}?" if close
                    else f"known loggers: {', '.join(self.names()) or 'none'}")
            raise UsageError(f"unknown logger {name!r}", hint)
        return self._entries[name]


@dataclass
class PluginSet:
    manager: pluggy.PluginManager
    registry: AlgorithmRegistry
    failures: list[PluginFailure]
    datasets: DatasetRegistry
    backbones: BackboneRegistry
    loggers: LoggerRegistry

    @property
    def registries(self) -> tuple[_Registry | LoggerRegistry, ...]:
        return (self.registry, self.datasets, self.backbones, self.loggers)


def _distribution_name(entry_point: metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return f"{dist.metadata['Name']} {dist.version}" if dist is not None else "unknown"


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP), key=lambda e: e.name)


@lru_cache(maxsize=1)
def load_plugins() -> PluginSet:
    """Load every entry point of the ``metactl`` group and collect what their hooks register:
    algorithms, datasets and backbones.

    Entry points are loaded one by one, each inside its own ``try``, so a broken plugin is
    recorded in ``failures`` (with nothing it registered kept) and the others keep working.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    plugins = PluginSet(manager, AlgorithmRegistry(), [], DatasetRegistry(), BackboneRegistry(),
                        LoggerRegistry())
    for entry_point in _entry_points():
        distribution = _distribution_name(entry_point)
        for registry in plugins.registries:
            registry._begin(entry_point.name, distribution)
        try:
            _load_one(plugins, entry_point)
        except Exception as error:  # noqa: BLE001 - a broken plugin must not break the others
            for registry in plugins.registries:
                registry._rollback()
            plugins.failures.append(PluginFailure(entry_point.name, distribution,
                                                  _describe(error)))
    return plugins


HOOKS = {"metactl_register_algorithms": "registry", "metactl_register_datasets": "datasets",
         "metactl_register_backbones": "backbones", "metactl_register_loggers": "loggers"}


def _load_one(plugins: PluginSet, entry_point: metadata.EntryPoint) -> None:
    manager = plugins.manager
    module = entry_point.load()
    manager.register(module, name=entry_point.name)
    try:
        manager.check_pending()
        for hook, registry in HOOKS.items():
            for implementation in getattr(manager.hook, hook).get_hookimpls():
                if implementation.plugin is module:
                    implementation.function(registry=getattr(plugins, registry))
    except BaseException:
        manager.unregister(module)
        raise


def _describe(error: Exception) -> str:
    text = getattr(error, "one_line", None)
    return text() if callable(text) else f"{type(error).__name__}: {error}"


def get_registry() -> AlgorithmRegistry:
    return load_plugins().registry


def get_loggers() -> LoggerRegistry:
    return load_plugins().loggers


def plugin_of(module_name: str) -> RegisteredAlgorithm | None:
    """The registered algorithm whose plugin owns ``module_name``: the algorithm's own module,
    else one of the same top-level package; None for modules of no plugin."""
    entries = get_registry().entries()
    for entry in entries:
        if module_name == entry.algorithm.__module__:
            return entry
    package = module_name.partition(".")[0]
    for entry in entries:
        if entry.algorithm.__module__.partition(".")[0] == package:
            return entry
    return None


def get_datasets() -> DatasetRegistry:
    return load_plugins().datasets
