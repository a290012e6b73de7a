"""Fixtures shared by the plugin tests."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture(scope="session")
def offline_builds() -> None:
    """Skip unless pip can build a wheel with ``--no-build-isolation`` (no index is reachable):
    setuptools must be installed, and from 70.1 on it no longer needs the ``wheel`` package."""
    try:
        import setuptools
    except ImportError:
        pytest.skip("building packages offline needs setuptools in this environment")
    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    if (major, minor) < (70, 1) and importlib.util.find_spec("wheel") is None:
        pytest.skip(f"setuptools {setuptools.__version__} needs the wheel package to build")
