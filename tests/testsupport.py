"""Paths and helpers shared by every test folder (import as ``testsupport``)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Outcome:
    """What a command left: its exit status and what it printed."""

    exit_code: int
    stdout: str
    stderr: str


def invoke_metactl(*arguments: str, env: dict[str, str] | None = None,
                   cwd: Path | None = None) -> Outcome:
    """Run ``metactl ARGUMENTS`` in this process through the real entry point, ``main()``:
    a subprocess costs seconds of imports. Warnings appear on stderr as Python would print
    them, and an exception that escapes ``main`` as its traceback, so a test sees what a user
    would."""
    from metactl.cli.main import main

    stdout, stderr = io.StringIO(), io.StringIO()
    exit_code = 0
    with _patched_environment(env or {}, cwd), warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        warnings.simplefilter("default")
        sys.argv = ["metactl", *arguments]
        try:
            main()
        except SystemExit as exit:
            exit_code = exit.code if isinstance(exit.code, int) else 1
        except Exception:  # noqa: BLE001 - shown the way Python shows it
            stderr.write(traceback.format_exc())
            exit_code = 1
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
                    for w in caught)
    return Outcome(exit_code, stdout.getvalue(), shown + stderr.getvalue())


@contextlib.contextmanager
def _patched_environment(env: dict[str, str], cwd: Path | None):
    saved_environment, saved_cwd, saved_argv = dict(os.environ), Path.cwd(), sys.argv
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_environment)
        os.chdir(saved_cwd)
        sys.argv = saved_argv


def train_briefly(name: str, settings: dict, root: Path, out: Path):
    """Train ``name`` quietly with ``settings`` over its defaults; returns (config, run, state)."""
    from metactl.engine.config import resolve_config
    from metactl.engine.trainer import train
    from metactl.plugins import get_registry

    config = resolve_config(name, get_registry().get(name).defaults, {}, settings, {})
    run, state = train(name, config, out=out, root=str(root), report=lambda message: None,
                       show_progress=False)
    return config, run, state


def float64_task_batch(tasks: int, way: int, shot: int, query: int, side: int, seed: int = 0):
    """Random float64 tasks of 1-channel ``side``-px images, labels in class order: for exact
    comparisons of an inner loop with its plain PyTorch reference."""
    import torch

    from metactl.data.episodes import TaskBatch

    generator = torch.Generator().manual_seed(seed)
    support = torch.rand(tasks, way * shot, 1, side, side, generator=generator,
                         dtype=torch.float64)
    queries = torch.rand(tasks, way * query, 1, side, side, generator=generator,
                         dtype=torch.float64)
    return TaskBatch(support, torch.arange(way).repeat_interleave(shot).repeat(tasks, 1),
                     queries, torch.arange(way).repeat_interleave(query).repeat(tasks, 1),
                     torch.zeros(tasks, way, dtype=torch.long), way, shot, query)


def train_plainly(module, images, labels, steps: int, lr: float, optimizer: str = "sgd"):
    """The reference inner loop: ``steps`` full-batch cross-entropy steps of torch.optim on
    ``module`` in place (Adam with beta1 = 0, as Reptile uses it, or SGD); returns it."""
    import torch

    if optimizer == "adam":
        inner = torch.optim.Adam(module.parameters(), lr=lr, betas=(0.0, 0.999), eps=1e-8)
    else:
        inner = torch.optim.SGD(module.parameters(), lr=lr)
    for _ in range(steps):
        inner.zero_grad()
        torch.nn.functional.cross_entropy(module(images), labels).backward()
        inner.step()
    return module


def fake_plugin(folder: Path, name: str, source: str, version: str = "0.1") -> dict[str, str]:
    """A plugin importable from ``folder``: the module ``<name>`` holding ``source`` and the
    metadata of the distribution ``<name>`` with its ``metactl`` entry point, no pip needed.
    Returns the environment (``PYTHONPATH``) under which ``metactl`` finds it."""
    module = name.replace("-", "_")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(source, encoding="utf-8")
    info = folder / f"{module}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                                   encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[metactl]\n{name} = {module}\n", encoding="utf-8")
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


def png_pixels(path: Path):
    """The RGB pixels of a PNG as an (height, width, 3) uint8 array."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def single_threaded(env: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment for child processes, one thread each (CI has two cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}


def torchrun(*arguments: str, nproc: int = 2, env: dict[str, str] | None = None,
             cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node NPROC ARGUMENTS`` (torch.distributed.run, the
    module behind the torchrun script; standalone picks a free port), output captured."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={nproc}", *arguments], capture_output=True,
                          text=True, env=single_threaded(env), timeout=timeout, cwd=cwd)


def start_ranks(world_size: int, arguments: list[str], env: dict[str, str] | None = None,
                cwd: Path | None = None) -> list[subprocess.Popen]:
    """Start ``python ARGUMENTS`` as ranks 0 .. world_size - 1 of one job, the way a static
    launcher (srun, mpirun) does: RANK, WORLD_SIZE and a free MASTER_PORT, no torchrun agent
    watching them. Each rank's output is captured separately."""
    port = str(free_port())
    processes = []
    for rank in range(world_size):
        variables = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                     "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1",
                     "MASTER_PORT": port, **(env or {})}
        processes.append(subprocess.Popen([sys.executable, *arguments], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, cwd=cwd,
                                          env=single_threaded(variables)))
    return processes
