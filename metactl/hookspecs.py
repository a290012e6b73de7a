"""The whole plugin API: the hooks a metactl plugin may implement.

A plugin is a module listed under the ``metactl`` entry-point group::

    [project.entry-points.metactl]
    my_algorithm = "my_package.plugin"

It implements hooks with ``@metactl.hookimpl``. Every hook is a *registration* hook: metactl
calls it once, when it first needs the plugins, and hands it a registry to add to. Training,
evaluation and prediction are methods of the registered :class:`metactl.algorithm.Algorithm`,
building a store is a method of the registered dataset, not hooks, so one plugin never runs
another plugin's code. A module may implement any of the hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from metactl.plugins import (
        AlgorithmRegistry,
        BackboneRegistry,
        DatasetRegistry,
        LoggerRegistry,
    )

PROJECT = "metactl"
ENTRY_POINT_GROUP = "metactl"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def metactl_register_algorithms(registry: AlgorithmRegistry) -> None:
    """Add algorithms: call ``registry.add(AlgorithmClass)`` once per algorithm.

    Called once per process, the first time metactl looks an algorithm up (``metactl train``,
    ``metactl plugins list``...). Each plugin's implementation is called on its own: if it raises,
    the plugin is reported as broken and the others still load. Return nothing. A name that
    another package already registered is an error naming both packages.
    """


@hookspec
def metactl_register_loggers(registry: LoggerRegistry) -> None:
    """Add metrics loggers: call ``registry.add(name, factory)`` once per logger.

    Called once per process, like :func:`metactl_register_algorithms` and with the same
    isolation. ``factory(run_folder, config, start_step)`` is called when a run that selects
    the logger (``--set logger=NAME``) starts or resumes, and returns an object with
    ``log(record)`` (a dict with ``kind`` "train" or "val", ``step`` and numbers; called after
    each line of ``metrics.jsonl``) and ``close()``. On a resumed run, records after
    ``start_step`` were discarded. Import the logging library inside the factory, not at the top
    of the module.
    """


@hookspec
def metactl_register_datasets(registry: DatasetRegistry) -> None:
    """Add datasets: call ``registry.add(DatasetClass)`` once per dataset, a subclass of
    :class:`metactl.dataset.ImageDataset` (a card and a builder) or
    :class:`metactl.dataset.TaskFamily` (tasks generated on the fly).

    Called once per process, the first time metactl looks a dataset up (``metactl data ...``,
    ``metactl train``...), with the same isolation as algorithms: an invalid card (the error
    names the file and the key) or an exception makes the plugin broken, listed by
    ``metactl data list``, and keeps nothing it registered. Return nothing.
    """


@hookspec
def metactl_register_backbones(registry: BackboneRegistry) -> None:
    """Add backbones: call ``registry.add(name, factory)``, where ``factory(channels, hidden,
    options)`` returns an ``nn.Module`` mapping (N, C, H, W) images to (N, features) and
    ``options`` are the run's settings. Algorithms that take ``--set backbone=NAME`` find it.

    Called once per process, like the other hooks. Return nothing.
    """
