"""Data-parallel training and evaluation in two processes on the CPU (gloo), through torchrun,
``metactl ... --nproc`` and a bare static launch, on the real Omniglot store."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from testsupport import (
    REPOSITORY,
    run_metactl,
    single_threaded,
    start_ranks,
    torchrun,
    train_briefly,
)

from metactl.engine.checkpoint import load_checkpoint
from metactl.engine.run import RunFolder

pytestmark = pytest.mark.slow

AUDIT_HOOK = Path(__file__).parent / "write_audit"
# Tiny tasks and models: each launch costs mostly the processes' start (importing torch).
PROTOTYPICAL = {"train_way": 5, "train_query": 5, "query": 5, "meta_batch": 4, "episodes": 24,
                "val_every": 2, "val_episodes": 4, "hidden": 16, "optimizer": "sgd", "lr": 0.01}
MAML = {"train_way": 5, "query": 5, "meta_batch": 4, "episodes": 12, "val_every": 3,
        "val_episodes": 4, "hidden": 8}


def options(settings: dict) -> list[str]:
    return [argument for key, value in settings.items() for argument in ("--set", f"{key}={value}")]


def assert_same_weights(actual: dict, expected: dict, tolerance: float,
                        skip: re.Pattern | None = None) -> float:
    """Every float tensor of ``expected`` (but those ``skip`` matches) within ``tolerance``,
    absolute and relative, of ``actual``'s; returns the largest absolute difference."""
    largest = 0.0
    for name, tensor in expected.items():
        if tensor.is_floating_point() and not (skip and skip.fullmatch(name)):
            difference = (actual[name] - tensor).abs()
            assert bool((difference <= tolerance * (1 + tensor.abs())).all()), \
                (name, float(difference.max()))
            largest = max(largest, float(difference.max()))
    return largest


def largest_change(before: dict, after: dict) -> float:
    return max(float((after[name] - tensor).abs().max()) for name, tensor in before.items()
               if tensor.is_floating_point())


@pytest.fixture(scope="module")
def two_process_run(omniglot_root, tmp_path_factory):
    """A prototypical run trained by ``metactl train --nproc 2``; rank 1 records every file it
    writes (tests/cli/write_audit)."""
    folder = tmp_path_factory.mktemp("distributed")
    audit = folder / "audit"
    audit.mkdir()
    env = {"METACTL_HOME": str(omniglot_root), "METACTL_TEST_AUDIT": str(audit),
           "PYTHONPATH": os.pathsep.join([str(AUDIT_HOOK), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    run = folder / "two"
    result = run_metactl("train", "prototypical", *options(PROTOTYPICAL), "--nproc", "2",
                         "--out", str(run), env=env, cwd=folder)
    assert result.returncode == 0, result.stderr
    return SimpleNamespace(run=RunFolder(run), result=result, audit=audit, root=omniglot_root)


def test_two_processes_train_prototypical_like_one(two_process_run, omniglot_root, tmp_path):
    _, single, _ = train_briefly("prototypical", PROTOTYPICAL, omniglot_root, tmp_path / "one")
    expected = load_checkpoint(single.last)["model"]
    actual = load_checkpoint(two_process_run.run.last)
    assert actual["step"] == 6 and actual["world_size"] == 2
    # One process sums the batch-norm statistics and the loss over 4 tasks at once; two sum 2
    # tasks each and add the halves across processes. Float32 rounding differs (~1e-7
    # relative per sum) and six SGD steps carry it to ~1e-5 at most; statistics taken per
    # process instead of over both (the error this guards against) move the weights by 1e-2.
    # The convolutions' biases are left out: the batch norm after each cancels it, so its
    # gradient is zero in exact arithmetic and what SGD applies is rounding noise.
    assert_same_weights(actual["model"], expected, tolerance=1e-4,
                        skip=re.compile(r"encoder\.\d+\.0\.bias"))
    assert largest_change(initial_weights("prototypical", single), expected) > 100 * 2e-5
    assert two_process_run.result.stdout.strip() == str(two_process_run.run.path)


def initial_weights(name: str, run) -> dict:
    """The model a run starts from (seeded like the trainer)."""
    import yaml

    from metactl.algorithm import ModelSpec
    from metactl.plugins import get_registry

    config = yaml.safe_load(run.config_path.read_text())
    torch.manual_seed(int(config["seed"]))
    algorithm = get_registry().get(name)(config)
    checkpoint = load_checkpoint(run.last)
    spec = ModelSpec(*checkpoint["image_shape"], way=int(config["train_way"]))
    return algorithm.build_model(spec).state_dict()


def test_only_rank_0_writes(two_process_run, tmp_path):
    # The file exists only if the hook ran in rank 1.
    records = json.loads((two_process_run.audit / "rank-1.json").read_text())
    # Rank 1 may open /dev/null or let torch make a temporary folder; nothing of the job's.
    watched = (two_process_run.run.path.parent, two_process_run.root)
    written = [path for _, path in records
               if any(Path(path).resolve().is_relative_to(folder.resolve()) for folder in watched)]
    assert written == [], written
    names = sorted(str(path.relative_to(two_process_run.run.path))
                   for path in two_process_run.run.path.rglob("*"))
    assert names == ["checkpoints", "checkpoints/best.pt", "checkpoints/last.pt", "config.yaml",
                     "console.log", "metrics.jsonl", "run.json"]


def test_rank_0_records_the_run_once(two_process_run):
    record = json.loads((two_process_run.run.path / "run.json").read_text())
    assert record["status"] == "finished" and record["steps"] == {"done": 6, "total": 6}
    assert record["device"].endswith(", 2 processes"), record["device"]
    log = (two_process_run.run.path / "console.log").read_text()
    assert log.count("training prototypical on omniglot") == 1
    assert log.count("step 6/6: validation accuracy") == 1
    steps = [row["step"] for row in two_process_run.run.read_metrics() if row["kind"] == "val"]
    assert steps == [2, 4, 6]


def test_maml_in_two_processes_equals_one(omniglot_root, tmp_path):
    run = tmp_path / "two"
    result = torchrun("-m", "metactl", "train", "maml", *options(MAML), "--out", str(run),
                      env={"METACTL_HOME": str(omniglot_root)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    _, single, _ = train_briefly("maml", MAML, omniglot_root, tmp_path / "one")
    expected = load_checkpoint(single.last)["model"]
    # MAML's batch norm is per task, so the processes share nothing but the averaged
    # meta-gradient: the one float32 difference is (a + b) / 2 against a mean over 4 tasks
    # (~1e-7 relative), which three Adam steps keep near 1e-7; a task on the wrong rank, or
    # missing, moves them by ~1e-3.
    assert_same_weights(load_checkpoint(RunFolder(run).last)["model"], expected, tolerance=1e-5)
    assert largest_change(initial_weights("maml", single), expected) > 100 * 1e-5


def worker_processes(launcher: int) -> list[int]:
    """The launcher's child processes, whichever of its threads started them."""
    return [int(pid) for children in Path(f"/proc/{launcher}/task").glob("*/children")
            for pid in children.read_text().split()]


def is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_resume_after_kill_9_of_the_launcher_is_bit_identical(two_process_run, omniglot_root,
                                                              tmp_path):
    run = tmp_path / "killed"
    endless = {**PROTOTYPICAL, "episodes": 10**6}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "metactl", "train", "prototypical", *options(endless), "--out", str(run)],
        env=single_threaded({"METACTL_HOME": str(omniglot_root)}), cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900  # seconds when the machine is idle
    while not (run / "checkpoints" / "last.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = worker_processes(launcher.pid)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    assert len(workers) == 2
    deadline = time.monotonic() + 30
    while not all(is_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(is_gone(pid) for pid in workers), "the workers outlived their launcher"
    assert (run / "checkpoints" / "last.pt").is_file(), "no checkpoint before the deadline"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] < 6
    resumed = torchrun("-m", "metactl", "train", "--resume", str(run), "--set", "episodes=24",
                       env={"METACTL_HOME": str(omniglot_root)}, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    expected = load_checkpoint(two_process_run.run.last)
    actual = load_checkpoint(run / "checkpoints" / "last.pt")
    assert actual["step"] == expected["step"] == 6
    for name, tensor in expected["model"].items():
        assert torch.equal(actual["model"][name], tensor), name


def test_evaluation_in_two_processes_equals_one(two_process_run, omniglot_root):
    from metactl.engine.evaluator import evaluate_run

    result = torchrun("-m", "metactl", "evaluate", str(two_process_run.run.path), "--episodes",
                      "40", "--json", env={"METACTL_HOME": str(omniglot_root)})
    assert result.returncode == 0, result.stderr
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each process; kernels then sum in the same order
    try:
        single = evaluate_run(two_process_run.run.path, episodes=40, root=str(omniglot_root))
    finally:
        torch.set_num_threads(threads)
    assert json.loads(result.stdout) == single.to_json()
    saved = two_process_run.run.path / "evaluation-test-5way-1shot.json"
    assert json.loads(saved.read_text()) == single.to_json()
    log = (two_process_run.run.path / "console.log").read_text()
    assert log.count("evaluate: 5-way 1-shot test") == 1


def test_a_rank_that_raises_stops_the_job(omniglot_root, tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(FAILING_PLUGIN)
    started = time.monotonic()
    ranks = start_ranks(2, [str(script), "train", "failing", *options(PROTOTYPICAL),
                            "--set", "episodes=400", "--out", str(tmp_path / "run")],
                        env={"METACTL_HOME": str(omniglot_root),
                             "METACTL_COLLECTIVE_TIMEOUT": "60"}, cwd=tmp_path)
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    assert time.monotonic() - started < 300
    assert [rank.returncode != 0 for rank in ranks] == [True, True]
    assert "rank 1 fails on purpose" in outputs[1][1]
    error = outputs[0][1].strip().splitlines()[-1]
    assert error.startswith("Error: lost contact with the other processes"), outputs[0][1]
    assert "Traceback" not in outputs[0][1]


FAILING_PLUGIN = """
import os
from metactl.cli.main import main
from metactl.plugins import get_registry
from metactl_plugins.prototypical import PrototypicalNetworks


class FailingOnRank1(PrototypicalNetworks):
    name = "failing"

    def meta_gradient(self, model, batch):
        if os.environ["RANK"] == "1" and self.progress >= 0.01:
            raise RuntimeError("rank 1 fails on purpose")
        return super().meta_gradient(model, batch)


get_registry().add(FailingOnRank1)
main()
"""


def test_a_locked_run_stops_every_rank_at_once(two_process_run, omniglot_root):
    run = two_process_run.run
    with run.writing("a test that holds the run"):
        ranks = start_ranks(2, ["-m", "metactl", "evaluate", str(run.path), "--episodes", "4",
                                "--split", "val"],
                            env={"METACTL_HOME": str(omniglot_root),
                                 "METACTL_COLLECTIVE_TIMEOUT": "600"})
        outputs = [rank.communicate(timeout=300) for rank in ranks]  # not the 600 s timeout
    assert [rank.returncode != 0 for rank in ranks] == [True, True]
    assert outputs[0][1].startswith(f"Error: run folder {run.path} is in use by"), outputs[0][1]
    assert outputs[1][1].startswith("Error (rank 1): rank 0 stopped before the work began"), \
        outputs[1][1]
    assert not list(run.path.glob("evaluation-val-*.json"))


def test_a_meta_batch_the_processes_cannot_share_is_refused_on_every_rank(omniglot_root,
                                                                         tmp_path):
    ranks = start_ranks(2, ["-m", "metactl", "train", "prototypical", "--meta-batch", "3",
                            "--out", str(tmp_path / "run")],
                        env={"METACTL_HOME": str(omniglot_root)}, cwd=tmp_path)
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [2, 2]
    for label, (_, stderr) in zip(("Error:", "Error (rank 1):"), outputs, strict=True):
        assert stderr.strip().count("\n") == 0, stderr
        assert stderr.startswith(f"{label} a meta-batch of 3 tasks does not divide among 2 "
                                 "processes. Use --meta-batch 4"), stderr
    assert not (tmp_path / "run").exists()


def test_a_resume_with_another_number_of_processes_is_refused(two_process_run, omniglot_root):
    before = load_checkpoint(two_process_run.run.last)
    result = run_metactl("train", "--resume", str(two_process_run.run.path),
                         env={"METACTL_HOME": str(omniglot_root)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"Error: {two_process_run.run.path} was trained by 2 processes and this resume has 1."), \
        result.stderr
    assert "--allow-world-size-change" in result.stderr and "Traceback" not in result.stderr
    assert load_checkpoint(two_process_run.run.last)["step"] == before["step"]


def test_a_resume_with_another_number_of_processes_continues_when_allowed(two_process_run,
                                                                        omniglot_root,
                                                                        tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(two_process_run.run.path, run)
    result = run_metactl("train", "--resume", str(run), "--episodes", "32",
                         "--allow-world-size-change", env={"METACTL_HOME": str(omniglot_root)})
    assert result.returncode == 0, result.stderr
    checkpoint = load_checkpoint(RunFolder(run).last)
    assert checkpoint["step"] == 8 and checkpoint["world_size"] == 1


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this machine has 2 GPUs")
def test_nproc_with_more_processes_than_gpus_is_refused(tmp_path):
    result = run_metactl("train", "prototypical", "--nproc", "2", "--device", "cuda",
                         cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: 2 processes on this machine need one GPU each, "
                                     f"and it has {torch.cuda.device_count()}."), result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not any(tmp_path.iterdir())


def test_python_m_metactl_is_the_cli():
    result = subprocess.run([sys.executable, "-m", "metactl", "--version"], capture_output=True,
                            text=True, cwd=REPOSITORY)
    assert result.returncode == 0 and result.stdout.startswith("metactl ")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_maml_on_two_gpus_with_nccl_equals_one_gpu(omniglot_root, tmp_path):
    settings = {**MAML, "device": "cuda"}
    result = torchrun("-m", "metactl", "train", "maml", *options(settings), "--out",
                      str(tmp_path / "two"), env={"METACTL_HOME": str(omniglot_root)},
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    _, single, _ = train_briefly("maml", settings, omniglot_root, tmp_path / "one")
    # As on the CPU, plus cuDNN's choice of convolution algorithm in each process.
    assert_same_weights(load_checkpoint(RunFolder(tmp_path / "two").last)["model"],
                        load_checkpoint(single.last)["model"], tolerance=1e-4)
