"""Shell completion of algorithm and dataset names (``metactl --install-completion``)."""

from __future__ import annotations


def algorithm_names(incomplete: str) -> list[str]:
    from metactl.plugins import get_registry

    return [name for name in get_registry().names() if name.startswith(incomplete)]


def dataset_names(incomplete: str) -> list[str]:
    from metactl.data.cards import SYNTHETIC, builtin_cards

    return [name for name in sorted({*builtin_cards(), *SYNTHETIC}) if name.startswith(incomplete)]
