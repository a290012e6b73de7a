"""metactl: a plugin-based command-line toolkit for few-shot meta-learning.

The Python API (``train``, ``evaluate``, ``predict``, ``load_run``, ``Run``) is imported on
first use, so ``import metactl`` stays light: no torch, nothing changed process-wide.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from metactl.hookspecs import hookimpl  # noqa: E402  (the one name plugin modules import)

API = ("train", "evaluate", "predict", "load_run", "Run")

__all__ = ["__version__", "hookimpl", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        from metactl import api

        return getattr(api, name)
    raise AttributeError(f"module 'metactl' has no attribute {name!r}")
