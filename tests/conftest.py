"""Fixtures shared by every test folder."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from testsupport import SHARED_DATASETS


def pytest_configure(config) -> None:
    """Tune the allocator as the `metactl` command does (the library leaves the process alone):
    the in-process trainings and evaluations of the tests then run at the command's speed."""
    from metactl.engine.device import keep_freed_memory

    keep_freed_memory()
    _share_cores_among_workers()


def _share_cores_among_workers() -> None:
    """Under pytest-xdist (`-n auto`), give each worker its share of the cores: torch's default
    of one thread per core in every worker would oversubscribe the machine several times over.
    Subprocesses (the `metactl` command, torchrun) inherit the setting."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    import torch

    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def omniglot_root(tmp_path_factory) -> Path:
    """A data root holding the complete, real Omniglot (Vinyals store at 28 px), built once per
    session from the offline mirror. ``METACTL_TEST_HOME`` reuses a root across sessions."""
    from metactl.data.manage import fetch_dataset

    if not (SHARED_DATASETS / "omniglot" / "images_background.zip").is_file():
        pytest.skip(f"the Omniglot mirror is not at {SHARED_DATASETS}")
    reuse = os.environ.get("METACTL_TEST_HOME")
    root = Path(reuse) if reuse else tmp_path_factory.mktemp("metactl-home")
    with _held(root / ".test-fetch.lock"):  # xdist workers share a reused root
        fetch_dataset("omniglot", root=root, mirror=str(SHARED_DATASETS))
    return root


@contextlib.contextmanager
def _held(lock: Path) -> Iterator[None]:
    """Block until this process holds the exclusive lock file ``lock``."""
    import fcntl

    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


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
