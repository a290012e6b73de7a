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


def untrained_run(name: str, settings: dict, root: Path | None, out: Path):
    """A run folder holding the model that ``train_briefly(name, settings, ...)`` starts from,
    saved as step 0: the untrained baseline that an "it learns" test must beat."""
    from metactl.engine.config import resolve_config
    from metactl.engine.trainer import save_untrained
    from metactl.plugins import get_registry

    config = resolve_config(name, get_registry().get(name).defaults, {}, settings, {})
    return save_untrained(name, config, Path(out), root=None if root is None else str(root))


@dataclass(frozen=True)
class TrainingGain:
    """One "it learns" measurement: the same evaluation before and after a short training."""

    untrained: object  # metactl.engine.evaluator.EvaluationResult
    trained: object
    config: dict
    steps: int
    run: object  # metactl.engine.run.RunFolder


def measure_training_gain(name: str, settings: dict, root: Path, out: Path,
                          evaluation: dict, record_property) -> TrainingGain:
    """Evaluate the untrained model, train briefly, evaluate again on the same fixed test
    episodes (``evaluation``: evaluate_run's episodes, way, shot and query), and record both
    means as test properties (``pytest --junitxml`` keeps them for the next calibration)."""
    untrained = evaluate_briefly(untrained_run(name, settings, root, out / "untrained").path,
                                 root, evaluation)
    config, run, state = train_briefly(name, settings, root, out / "run")
    trained = evaluate_briefly(run.path, root, evaluation)
    record_property("untrained", round(untrained.mean, 4))
    record_property("trained", round(trained.mean, 4))
    return TrainingGain(untrained, trained, config, state.step, run)


def evaluate_briefly(run_path: Path, root: Path, evaluation: dict):
    """``evaluate_run`` on the fixed test episodes that ``evaluation`` describes, checked to be
    the episodes asked for."""
    from metactl.engine.evaluator import evaluate_run

    result = evaluate_run(run_path, root=str(root), **evaluation)
    asked = tuple(evaluation.get(key) for key in ("episodes", "way", "shot", "query"))
    got = (result.episodes, result.way, result.shot, result.query)
    assert all(want is None or want == value for want, value in zip(asked, got, strict=True)), (
        asked, got)
    assert 0 < result.ci95 < 0.1
    return result


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


def jpeg_bytes(rng, side: int = 84, colour=(128, 128, 128), mode: str = "RGB") -> bytes:
    """A JPEG of ``side`` x ``side`` pixels: ``colour`` plus seeded noise (``rng``: a
    numpy Generator), so that images of one colour form a learnable class."""
    import io

    import numpy as np
    from PIL import Image

    noise = rng.integers(-40, 41, size=(side, side, 3))
    pixels = np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


TINY_MINI_IMAGENET = {"train": ["n00000001", "n00000002", "n00000003", "n00000004"],
                      "val": ["n00000005", "n00000006"], "test": ["n00000007", "n00000008"]}
MINI_IMAGENET_PARTS = {"train-1.tar.xz": ("train", 0, 2), "train-2.tar.xz": ("train", 2, 4),
                       "val.tar.xz": ("val", 0, 2), "test.tar.xz": ("test", 0, 2)}


def tiny_mini_imagenet_files(per_class: int = 6, seed: int = 0,
                             classes: dict[str, list[str]] | None = None) -> dict[str, bytes]:
    """A tiny mini-ImageNet laid out like the mirror: ``splits/ravi/<split>.csv`` and the four
    tar.xz parts of ``images/<filename>.jpg`` members, by relative path. Eight classes (4/2/2)
    of ``per_class`` 84x84 JPEGs; each class has its own colour."""
    import io
    import tarfile

    import numpy as np

    classes = classes or TINY_MINI_IMAGENET
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    images: dict[str, dict[str, bytes]] = {}
    for split, wnids in classes.items():
        rows = ["filename,label"]
        for wnid in wnids:
            colour = rng.integers(30, 226, size=3)
            for index in range(per_class):
                filename = f"{wnid}{index + 1:08d}.jpg"
                rows.append(f"{filename},{wnid}")
                images.setdefault(wnid, {})[filename] = jpeg_bytes(rng, colour=colour)
        files[f"splits/ravi/{split}.csv"] = ("\n".join(rows) + "\n").encode()
    for part, (split, first, last) in MINI_IMAGENET_PARTS.items():
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:xz") as bundle:
            for wnid in classes[split][first:last]:
                for filename, data in images[wnid].items():
                    member = tarfile.TarInfo(f"images/{filename}")
                    member.size = len(data)
                    bundle.addfile(member, io.BytesIO(data))
        files[part] = buffer.getvalue()
    return files


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` (relative path -> bytes) under ``folder``; returns ``folder``."""
    for relative, data in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The ``Error: ...`` line of a failed command, checking that the exit status is non-zero,
    that no traceback escaped and that the error is one line, the last on stderr (progress
    notes may come before it)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert errors == lines[-1:], result.stderr
    return errors[0]


def class_folders_of_colours(folder: Path, classes: int, per_class: int, seed: int = 0,
                             side: int = 40) -> Path:
    """``classes`` folders of ``per_class`` images each, one colour (plus noise) per class, in
    mixed formats and sizes (JPEG, PNG; ``side`` to ``2 * side`` pixels): a dataset a model can
    learn to tell apart in a few steps."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for number in range(classes):
        colour = rng.integers(20, 236, size=3)
        target = folder / f"class-{number:02d}"
        target.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            width = int(rng.integers(side, 2 * side))
            noise = rng.integers(-30, 31, size=(side, width, 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            suffix = ".png" if index % 2 else ".jpg"
            Image.fromarray(pixels).save(target / f"image-{index}{suffix}")
    return folder


def install_example(name: str, work: Path) -> Path:
    """pip-install ``examples/<name>`` into a folder of its own under ``work`` (never into the
    running environment) and return that folder, for ``PYTHONPATH``. The package is copied first
    so that pip's in-tree build leaves no ``build/`` folder in the checkout."""
    import shutil

    source = work / "source"
    shutil.copytree(REPOSITORY / "examples" / name, source, ignore=shutil.ignore_patterns(
        "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                    "--no-index", "--disable-pip-version-check", "--quiet", "--target",
                    str(target), str(source)], check=True, capture_output=True, text=True)
    return target


def with_pythonpath(folder: Path) -> dict[str, str]:
    """Environment variables that put ``folder`` first on the subprocesses' import path."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder),
                                                        os.environ.get("PYTHONPATH")]))}


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
