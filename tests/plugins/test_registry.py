"""Plugin discovery: each entry point is loaded on its own, and a broken one is reported."""

from __future__ import annotations

import sys
import textwrap
import types
from dataclasses import dataclass, field
from importlib import metadata

import pytest

from metactl import plugins
from metactl.errors import PluginError, UsageError
from metactl.plugins import load_plugins

ALGORITHM_SOURCE = '''
from metactl import hookimpl
from metactl.algorithm import Algorithm

class {class_name}(Algorithm):
    name = "{name}"
    family = "{family}"
    summary = "a fake algorithm for the registry tests"
'''
HOOK_SOURCE = '''
@hookimpl
def metactl_register_algorithms(registry):
    registry.add({class_name})
'''


@dataclass
class FakeDistribution:
    name: str
    version: str = "1.0"
    metadata: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.metadata = {"Name": self.name}


@dataclass
class FakeEntryPoint:
    """What ``metactl.plugins`` uses of an ``importlib.metadata.EntryPoint``: name, dist, load().

    ``load()`` executes ``source`` as a fresh module, the way importing the entry point's module
    would, so an exception in the source is an exception at import.
    """

    name: str
    source: str
    distribution: str = "fake-plugin"

    @property
    def dist(self) -> FakeDistribution:
        return FakeDistribution(self.distribution)

    def load(self) -> types.ModuleType:
        module = types.ModuleType(f"fake_metactl_plugin_{self.name.replace('-', '_')}")
        exec(compile(textwrap.dedent(self.source), module.__name__, "exec"), module.__dict__)
        return module


def algorithm_plugin(name: str, algorithm: str, distribution: str = "fake-plugin",
                     family: str = "metric", extra: str = "") -> FakeEntryPoint:
    class_name = "".join(part.title() for part in algorithm.split("-")) or "Nameless"
    source = (ALGORITHM_SOURCE.format(class_name=class_name, name=algorithm, family=family)
              + extra + HOOK_SOURCE.format(class_name=class_name))
    return FakeEntryPoint(name, source, distribution)


@pytest.fixture
def installed(monkeypatch):
    """Replace the installed entry points with the list a test fills in."""
    entry_points: list = []
    monkeypatch.setattr(plugins, "_entry_points", lambda: entry_points)
    load_plugins.cache_clear()
    yield entry_points
    load_plugins.cache_clear()


def failure_of(plugin_set: plugins.PluginSet, plugin: str) -> plugins.PluginFailure:
    matching = [failure for failure in plugin_set.failures if failure.plugin == plugin]
    assert len(matching) == 1, plugin_set.failures
    return matching[0]


def test_good_plugins_load_and_are_attributed_to_their_distribution(installed):
    installed += [algorithm_plugin("one", "first-method", "pkg-one"),
                  algorithm_plugin("two", "second-method", "pkg-two")]
    loaded = load_plugins()
    assert loaded.failures == []
    assert [(e.algorithm.name, e.plugin, e.distribution) for e in loaded.registry.entries()] == [
        ("first-method", "one", "pkg-one 1.0"), ("second-method", "two", "pkg-two 1.0")]


def test_a_module_that_raises_at_import_is_isolated(installed):
    installed += [FakeEntryPoint("broken", "import metactl\nraise ImportError('no module foo')",
                                 "pkg-broken"),
                  algorithm_plugin("fine", "still-works")]
    loaded = load_plugins()
    failure = failure_of(loaded, "broken")
    assert failure.distribution == "pkg-broken 1.0"
    assert failure.error == "ImportError: no module foo"
    assert loaded.registry.names() == ["still-works"]


def test_a_hook_that_raises_keeps_nothing_it_registered(installed):
    raising_hook = '''
@hookimpl
def metactl_register_algorithms(registry):
    registry.add(HalfDone)
    raise RuntimeError("configuration file missing")
'''
    installed += [FakeEntryPoint("raising", ALGORITHM_SOURCE.format(
        class_name="HalfDone", name="half-done", family="metric") + raising_hook),
                  algorithm_plugin("fine", "still-works")]
    loaded = load_plugins()
    assert failure_of(loaded, "raising").error == "RuntimeError: configuration file missing"
    assert loaded.registry.names() == ["still-works"]
    assert loaded.manager.get_plugin("raising") is None
    assert loaded.manager.get_plugin("fine") is not None


def test_registering_something_that_is_not_an_algorithm_is_reported(installed):
    installed += [FakeEntryPoint("wrong-type", '''
from metactl import hookimpl

class NotAnAlgorithm:
    name = "impostor"

@hookimpl
def metactl_register_algorithms(registry):
    registry.add(NotAnAlgorithm)
''')]
    loaded = load_plugins()
    assert "is not a subclass of metactl.algorithm.Algorithm" in failure_of(
        loaded, "wrong-type").error
    assert loaded.registry.names() == []


@pytest.mark.parametrize("algorithm, family, message", [
    ("Bad_Name", "metric", "invalid name 'Bad_Name'"),
    ("", "metric", "invalid name ''"),
    ("good-name", "telepathy", "family 'telepathy'"),
])
def test_invalid_names_and_families_are_reported(installed, algorithm, family, message):
    installed += [algorithm_plugin("invalid", algorithm, family=family)]
    assert message in failure_of(load_plugins(), "invalid").error


def test_a_duplicate_name_is_an_error_naming_both_packages(installed):
    installed += [algorithm_plugin("a-first", "shared-name", "pkg-alpha"),
                  algorithm_plugin("b-second", "shared-name", "pkg-beta")]
    loaded = load_plugins()
    error = failure_of(loaded, "b-second").error
    assert "'shared-name'" in error and "pkg-alpha 1.0" in error and "pkg-beta 1.0" in error
    assert loaded.registry.entry("shared-name").distribution == "pkg-alpha 1.0"


def test_a_misspelled_hook_implementation_is_caught_by_check_pending(installed):
    installed += [FakeEntryPoint("typo", '''
from metactl import hookimpl

@hookimpl
def metactl_register_algorithm(registry):
    pass
'''), algorithm_plugin("fine", "still-works")]
    loaded = load_plugins()
    error = failure_of(loaded, "typo").error
    assert "metactl_register_algorithm" in error and "PluginValidationError" in error
    assert loaded.manager.get_plugin("typo") is None
    assert loaded.registry.names() == ["still-works"]


def test_a_module_without_hooks_registers_nothing_and_is_not_an_error(installed):
    installed += [FakeEntryPoint("quiet", "x = 1\n")]
    loaded = load_plugins()
    assert loaded.failures == [] and loaded.registry.names() == []


def test_a_real_entry_point_without_a_distribution_is_reported_as_unknown(installed, monkeypatch):
    module = types.ModuleType("fake_metactl_real_entry_point")
    exec(textwrap.dedent(ALGORITHM_SOURCE.format(class_name="Real", name="real-entry",
                                                 family="metric")
                         + HOOK_SOURCE.format(class_name="Real")), module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    installed.append(metadata.EntryPoint("real", module.__name__, "metactl"))
    entry = load_plugins().registry.entry("real-entry")
    assert (entry.plugin, entry.distribution) == ("real", "unknown")


def test_plugins_are_loaded_once_per_process(installed):
    installed.append(algorithm_plugin("one", "first-method"))
    assert load_plugins() is load_plugins()


def test_an_unknown_name_suggests_the_nearest(installed):
    installed += [algorithm_plugin("one", "prototypical")]
    with pytest.raises(UsageError, match="unknown algorithm 'prototypicl'") as raised:
        load_plugins().registry.get("prototypicl")
    assert "'prototypical'" in raised.value.hint


def test_adding_a_duplicate_directly_raises_plugin_error():
    from metactl.algorithm import Algorithm

    class Twice(Algorithm):
        name, family = "twice", "metric"

    registry = plugins.AlgorithmRegistry()
    registry.add(Twice)
    with pytest.raises(PluginError, match="registered by both"):
        registry.add(Twice)


def test_the_built_in_plugin_is_found_through_its_entry_point():
    load_plugins.cache_clear()
    try:
        entry = load_plugins().registry.entry("prototypical")
    finally:
        load_plugins.cache_clear()
    assert entry.plugin == "prototypical"
    assert entry.distribution.startswith("metactl ")
    assert entry.algorithm.__module__ == "metactl_plugins.prototypical"


DATASET_SOURCE = '''
from metactl import hookimpl
from metactl.dataset import TaskFamily

class {class_name}(TaskFamily):
    name = "{name}"
    title = "a fake task family"
    summary = "for the registry tests"

@hookimpl
def metactl_register_datasets(registry):
    registry.add({class_name})
'''


def dataset_plugin(name: str, dataset: str, distribution: str = "fake-datasets",
                   extra: str = "") -> FakeEntryPoint:
    class_name = "".join(part.title() for part in dataset.split("-")) or "Nameless"
    return FakeEntryPoint(name, DATASET_SOURCE.format(class_name=class_name, name=dataset)
                          + extra, distribution)


def test_datasets_register_beside_algorithms_and_are_attributed(installed):
    installed += [dataset_plugin("tasks", "wave-tasks", "pkg-waves"),
                  algorithm_plugin("method", "some-method")]
    loaded = load_plugins()
    assert loaded.failures == []
    entry = loaded.datasets.entry("wave-tasks")
    assert (entry.plugin, entry.distribution) == ("tasks", "pkg-waves 1.0")
    assert loaded.registry.names() == ["some-method"]


def test_a_broken_dataset_plugin_keeps_nothing_and_the_others_load(installed):
    # The backbone hook runs after the dataset hook, so the dataset was registered, then dropped.
    raising = "\n@hookimpl\ndef metactl_register_backbones(registry):\n    raise OSError('x')\n"
    installed += [dataset_plugin("broken", "lost-tasks", extra=raising),
                  dataset_plugin("fine", "kept-tasks")]
    loaded = load_plugins()
    assert failure_of(loaded, "broken").error == "OSError: x"
    assert loaded.datasets.names() == ["kept-tasks"]


def test_a_dataset_name_registered_twice_names_both_packages(installed):
    installed += [dataset_plugin("a", "same-tasks", "pkg-alpha"),
                  dataset_plugin("b", "same-tasks", "pkg-beta")]
    error = failure_of(load_plugins(), "b").error
    assert "dataset 'same-tasks'" in error and "pkg-alpha 1.0" in error and "pkg-beta 1.0" in error


def test_registering_a_non_dataset_is_reported(installed):
    installed.append(FakeEntryPoint("odd", '''
from metactl import hookimpl

@hookimpl
def metactl_register_datasets(registry):
    registry.add(dict)
'''))
    assert "is not a subclass of metactl.dataset.ImageDataset" in failure_of(
        load_plugins(), "odd").error


def test_an_unknown_dataset_suggests_registered_names(installed):
    installed += [dataset_plugin("tasks", "wave-tasks")]
    with pytest.raises(UsageError, match="unknown dataset 'wave-task'") as raised:
        load_plugins().datasets.get("wave-task")
    assert "'wave-tasks'" in raised.value.hint
