"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from testsupport import SHARED_DATASETS


def pytest_configure(config) -> None:
    """Tune the allocator as the `metactl` command does (the library leaves the process alone):
    the in-process trainings and evaluations of the tests then run at the command's speed."""
    from metactl.engine.device import keep_freed_memory

    keep_freed_memory()


@pytest.fixture(scope="session")
def omniglot_root(tmp_path_factory) -> Path:
    """A data root holding the complete, real Omniglot (Vinyals store at 28 px), built once per
    session from the offline mirror. ``METACTL_TEST_HOME`` reuses a root across sessions."""
    from metactl.data.manage import fetch_dataset

    if not (SHARED_DATASETS / "omniglot" / "images_background.zip").is_file():
        pytest.skip(f"the Omniglot mirror is not at {SHARED_DATASETS}")
    reuse = os.environ.get("METACTL_TEST_HOME")
    root = Path(reuse) if reuse else tmp_path_factory.mktemp("metactl-home")
    fetch_dataset("omniglot", root=root, mirror=str(SHARED_DATASETS))
    return root


@pytest.fixture(scope="session")
def tiny_omniglot_root(tmp_path_factory) -> Path:
    """A data root holding the tiny real Omniglot (13 characters, see
    ``tests/data/omniglot_fixtures.py``) as Vinyals and background stores at 28 px, where
    ``--root`` finds them: enough for the CLI to train, evaluate and draw episodes in seconds."""
    from data.omniglot_fixtures import TINY_CHECKSUMS, make_tiny_omniglot

    from metactl_datasets.omniglot import build_store

    root = tmp_path_factory.mktemp("tiny-home")
    layout = make_tiny_omniglot(root)
    for scheme in ("vinyals", "background"):
        build_store(layout, scheme, 28, TINY_CHECKSUMS)
    return root
