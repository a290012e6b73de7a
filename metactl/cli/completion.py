"""Shell completion of algorithm and dataset names (``metactl --install-completion``)."""

from __future__ import annotations


def algorithm_names(incomplete: str) -> list[str]:
    from metactl.plugins import get_registry

    return [name for name in get_registry().names() if name.startswith(incomplete)]


def dataset_names(incomplete: str) -> list[str]:
    from metactl.plugins import get_datasets

    return [name for name in get_datasets().names() if name.startswith(incomplete)]
