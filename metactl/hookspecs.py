"""The whole plugin API: the hooks a metactl plugin may implement.

A plugin is a module listed under the ``metactl`` entry-point group::

    [project.entry-points.metactl]
    my_algorithm = "my_package.plugin"

It implements hooks with ``@metactl.hookimpl``. Every hook is a *registration* hook: metactl
calls it once, when it first needs the plugins, and hands it a registry to add to. Training,
evaluation and prediction are methods of the registered :class:`metactl.algorithm.Algorithm`,
not hooks, so one plugin never runs another plugin's code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from metactl.plugins import AlgorithmRegistry, LoggerRegistry

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
