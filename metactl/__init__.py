"""metactl: a plugin-based command-line toolkit for few-shot meta-learning."""

from __future__ import annotations

__version__ = "0.1.0"

from metactl.hookspecs import hookimpl  # noqa: E402  (the one name plugin modules import)

__all__ = ["__version__", "hookimpl"]
