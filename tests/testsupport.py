"""Paths and helpers shared by every test folder (import as ``testsupport``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("METACTL_TEST_DATASETS",
                                      REPOSITORY.parent / "shared" / "datasets"))


def metactl_executable() -> str:
    """The installed ``metactl`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("metactl")
    if not script.exists():
        pytest.skip("metactl is not installed in this environment (pip install -e .)")
    return str(script)


def run_metactl(*arguments: str, env: dict[str, str] | None = None, timeout: float = 600,
                cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``metactl`` command and capture its output."""
    return subprocess.run([metactl_executable(), *arguments], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=cwd)


def train_briefly(name: str, settings: dict, root: Path, out: Path):
    """Train ``name`` quietly with ``settings`` over its defaults; returns (config, run, state)."""
    from metactl.engine.config import resolve_config
    from metactl.engine.trainer import train
    from metactl.plugins import get_registry

    config = resolve_config(name, get_registry().get(name).defaults, {}, settings, {})
    run, state = train(name, config, out=out, root=str(root), report=lambda message: None,
                       show_progress=False)
    return config, run, state
