"""Faults that must leave nothing broken: a torn metrics file, a full disk, two writers, a double
Ctrl-C, litter from killed processes, kill -9 in the middle of training.

Training runs on the tiny real Omniglot stores (``tiny_omniglot_root``) with settings that take
a second or two; the full disk is simulated by a write wrapper that raises ENOSPC after writing
part of the data (``full_disk``), and for real by a small tmpfs where the test can mount one.
"""

from __future__ import annotations

import builtins
import errno
import fnmatch
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from testsupport import invoke_metactl, metactl_executable

from metactl.engine.checkpoint import load_checkpoint
from metactl.engine.run import RunFolder
from metactl.engine.trainer import Trainer

QUICK = ("--train-way", "5", "--set", "train_query=5", "--set", "val_every=2",
         "--set", "val_episodes=2", "--set", "eval_episodes=10", "--device", "cpu")


def train(run: Path, *extra: str, root: Path, algorithm: str = "prototypical"):
    return invoke_metactl("train", algorithm, "--out", str(run), *QUICK, *extra,
                          env={"METACTL_HOME": str(root)})


def resume(run: Path, *extra: str, root: Path):
    return invoke_metactl("train", "--resume", str(run), *extra, env={"METACTL_HOME": str(root)})


def one_error_line(outcome) -> str:
    assert "Traceback" not in outcome.stderr, outcome.stderr
    lines = [line for line in outcome.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, outcome.stderr
    assert outcome.stderr.rstrip().endswith(lines[0]), "the error is the last thing printed"
    return lines[0]


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".lock")))


# --- a torn metrics line ------------------------------------------------------------------------

def test_a_torn_metrics_line_is_dropped_and_the_run_resumes(tiny_omniglot_root, tmp_path):
    run = tmp_path / "run"
    assert train(run, "--episodes", "4", root=tiny_omniglot_root).exit_code == 0
    with (run / "metrics.jsonl").open("a") as stream:
        stream.write('{"kind": "train", "step": 5, "loss": 0.5}\n{"kind": "train", "st')
    outcome = resume(run, "--episodes", "6", root=tiny_omniglot_root)
    assert outcome.exit_code == 0, outcome.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 6
    logged = steps_logged(run)  # every line parses again
    assert logged == sorted(logged) and logged[-1] == 6 and logged.count(5) == 1


def test_retraining_into_a_folder_without_checkpoints_starts_new_metrics(tiny_omniglot_root,
                                                                         tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 99, "loss": 1.0}\n')
    assert train(run, "--episodes", "2", root=tiny_omniglot_root).exit_code == 0
    assert 99 not in steps_logged(run)


# --- a full disk ----------------------------------------------------------------------------------

class FullDiskWriter:
    """A file whose next write stores half the data, then fails as a full disk does."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, data):
        self._stream.write(data[: len(data) // 2])
        self._stream.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stream.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk("*.png")``: from now on, files whose name matches fill the disk when
    written (through Python's ``open``, which checkpoints, metrics and results use)."""
    real_open = io.open
    patterns: list[str] = []

    def opening(file, mode="r", *args, **kwargs):
        stream = real_open(file, mode, *args, **kwargs)
        name = os.path.basename(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else ""
        if set(mode) & set("wax") and any(fnmatch.fnmatch(name, p) for p in patterns):
            return FullDiskWriter(stream)
        return stream

    monkeypatch.setattr(builtins, "open", opening)
    monkeypatch.setattr(io, "open", opening)
    return patterns.append


def test_a_failed_checkpoint_save_says_where_to_continue(tiny_omniglot_root, tmp_path,
                                                         full_disk, monkeypatch):
    run = tmp_path / "run"
    saves = []
    real_save = Trainer.save_last

    def save_last(self):  # the disk fills up after the first checkpoint
        saves.append(self.state.step)
        if len(saves) == 2:
            full_disk(".last.pt.*.tmp")
        real_save(self)

    monkeypatch.setattr(Trainer, "save_last", save_last)
    outcome = train(run, "--episodes", "8", root=tiny_omniglot_root)
    assert outcome.exit_code == 1
    line = one_error_line(outcome)
    assert "No space left on device (the disk is full)" in line and "last.pt" in line
    assert "the last checkpoint is from step 2" in line and "--resume" in line
    assert "Free some disk space" in line
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    assert leftovers(run) == []
    monkeypatch.undo()  # space freed
    assert resume(run, "--episodes", "8", root=tiny_omniglot_root).exit_code == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 8


def test_a_failed_first_save_says_the_run_must_start_again(tiny_omniglot_root, tmp_path,
                                                           full_disk):
    full_disk(".last.pt.*.tmp")
    run = tmp_path / "run"
    line = one_error_line(train(run, "--episodes", "4", root=tiny_omniglot_root))
    assert "the disk is full" in line and "no checkpoint was saved" in line
    again = one_error_line(resume(run, root=tiny_omniglot_root))
    assert "no checkpoints/last.pt to resume from" in again and "best.pt is from step 2" in again


def test_a_full_disk_while_logging_metrics_is_one_line(tiny_omniglot_root, tmp_path,
                                                       full_disk):
    full_disk("metrics.jsonl")
    line = one_error_line(train(tmp_path / "run", "--episodes", "4", root=tiny_omniglot_root))
    assert "metrics.jsonl" in line and "the disk is full" in line


@pytest.fixture(scope="module")
def trained_run(tiny_omniglot_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "prototypical"
    assert train(run, "--episodes", "4", root=tiny_omniglot_root).exit_code == 0
    return run


def test_evaluate_on_a_full_disk_prints_the_result_then_fails(tiny_omniglot_root, trained_run,
                                                              tmp_path, full_disk):
    run = shutil.copytree(trained_run, tmp_path / "run")
    full_disk(".evaluation-*.tmp")
    outcome = invoke_metactl("evaluate", str(run), "--episodes", "10",
                             env={"METACTL_HOME": str(tiny_omniglot_root)})
    assert outcome.exit_code == 1
    assert "5-way 1-shot test: accuracy" in outcome.stdout
    assert "the disk is full" in one_error_line(outcome)
    assert not list(run.glob("evaluation-*")) and leftovers(run) == []


def test_predict_on_a_full_disk_prints_the_predictions_then_fails(tiny_omniglot_root,
                                                                  trained_run, tmp_path,
                                                                  full_disk):
    drawings = sorted((tiny_omniglot_root / "omniglot" / "extracted").rglob("*.png"))
    for index, label in enumerate(("alpha", "beta")):
        (tmp_path / "support" / label).mkdir(parents=True)
        shutil.copy(drawings[20 * index], tmp_path / "support" / label / "a.png")
    full_disk(".out.csv.*.tmp")
    outcome = invoke_metactl("predict", str(trained_run), "--support", str(tmp_path / "support"),
                             "--query", str(drawings[1]), "-o", str(tmp_path / "out.csv"))
    assert outcome.exit_code == 1
    assert outcome.stdout.count("\n") == 1 and "\talpha\t" in outcome.stdout
    assert "the disk is full" in one_error_line(outcome)
    assert not (tmp_path / "out.csv").exists() and leftovers(tmp_path) == []


def test_extraction_on_a_full_disk_says_so(tmp_path, full_disk):
    from metactl.data.archive import safe_extract
    from metactl.errors import DataError

    archive = tmp_path / "drawings.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for name in ("a", "b", "c"):
            bundle.writestr(f"drawings/{name}.png", bytes(range(256)) * 64)
    full_disk("b.png")
    with pytest.raises(DataError) as caught:
        safe_extract(archive, tmp_path / "extracted")
    assert "the disk is full" in caught.value.message and "corrupt" not in caught.value.message
    assert "free some disk space" in caught.value.hint
    assert list((tmp_path / "extracted").iterdir()) == []


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt || mount -t tmpfs -o "
                            "size=64k tmpfs /tmp"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.slow
def test_a_real_full_disk_leaves_a_resumable_run(tiny_omniglot_root, tmp_path):
    """Train into a 2.5 MB tmpfs: the first checkpoints fit, a later one does not."""
    if not _can_mount_tmpfs():
        pytest.skip("cannot mount a tmpfs here (needs unshare and user namespaces)")
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    script = (f'mount -t tmpfs -o size=2500k tmpfs "{disk}" && '
              f'"{metactl_executable()}" train prototypical --out "{disk}/run" --episodes 40 '
              f'{" ".join(QUICK)} 2> "{tmp_path}/stderr"; echo $? > "{tmp_path}/status"; '
              f'cp -a "{disk}/run" "{kept}"')
    subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], timeout=300, check=True,
                   env={**os.environ, "METACTL_HOME": str(tiny_omniglot_root),
                        "OMP_NUM_THREADS": "1"})
    stderr = (tmp_path / "stderr").read_text()
    assert (tmp_path / "status").read_text().strip() == "1", stderr
    assert "Traceback" not in stderr
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("Error: cannot write") and "the disk is full" in error, stderr
    step = load_checkpoint(kept / "checkpoints" / "last.pt")["step"]
    assert f"the last checkpoint is from step {step}" in error
    outcome = resume(kept, root=tiny_omniglot_root)
    assert outcome.exit_code == 0, outcome.stderr
    assert load_checkpoint(kept / "checkpoints" / "last.pt")["step"] == 40


# --- two writers ----------------------------------------------------------------------------------

HOLD_THE_RUN = ("import sys, time\nfrom pathlib import Path\n"
                "from metactl.engine.run import RunFolder\n"
                "with RunFolder(Path(sys.argv[1])).writing('metactl train'):\n"
                "    print('holding', flush=True)\n    time.sleep(120)\n")


def hold(run: Path) -> subprocess.Popen:
    """Another process that writes ``run`` (until it is killed)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_RUN, str(run)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_a_second_writer_is_refused_naming_the_first(tiny_omniglot_root, tmp_path):
    run = tmp_path / "run"
    holder = hold(run)
    try:
        outcome = train(run, "--episodes", "2", root=tiny_omniglot_root)
        assert outcome.exit_code == 2
        line = one_error_line(outcome)
        assert f"is in use by process {holder.pid}" in line and "metactl train" in line
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    outcome = train(run, "--episodes", "2", root=tiny_omniglot_root)  # released by the kill
    assert outcome.exit_code == 0, outcome.stderr
    assert steps_logged(run).count(2) == 2  # one train and one val record, not twice each
    assert leftovers(run) == []


def test_evaluate_is_refused_while_the_run_trains(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    holder = hold(run)
    try:
        line = one_error_line(invoke_metactl("evaluate", str(run)))
        assert f"is in use by process {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()


# --- interrupts -----------------------------------------------------------------------------------

def test_a_second_ctrl_c_aborts_and_names_the_last_checkpoint(tiny_omniglot_root, tmp_path,
                                                              monkeypatch):
    real_step = Trainer._one_step

    def one_step(self):
        if self.state.step == 3:  # Ctrl-C twice, during step 4
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self)

    monkeypatch.setattr(Trainer, "_one_step", one_step)
    outcome = train(tmp_path / "run", "--episodes", "20", root=tiny_omniglot_root)
    assert outcome.exit_code == 130
    line = one_error_line(outcome)
    assert "aborted without saving; the last checkpoint is from step 2" in line
    assert "stopping after this step" in outcome.stderr


# --- litter of killed processes -------------------------------------------------------------------

def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporaries_are_removed_but_not_a_live_process(tiny_omniglot_root, trained_run,
                                                              tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = run / "checkpoints" / f".last.pt.{dead_pid()}.tmp"
        busy = run / "checkpoints" / f".last.pt.{live.pid}.tmp"
        stale.write_bytes(b"half a checkpoint")
        busy.write_bytes(b"being written")
        assert resume(run, "--episodes", "6", root=tiny_omniglot_root).exit_code == 0
        assert not stale.exists() and busy.exists()
    finally:
        live.kill()
        live.wait()


def test_stale_staging_folders_are_removed_but_not_a_live_process(tmp_path):
    from metactl.data.archive import safe_extract

    target = tmp_path / "extracted"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = target / f".metactl-extract-{dead_pid()}-x1y2z3/content/images"
        busy = target / f".metactl-extract-{live.pid}-a1b2c3/content"
        stale.mkdir(parents=True)
        (stale / "0001_01.png").write_bytes(b"40 MB, once")
        busy.mkdir(parents=True)
        archive = tmp_path / "a.zip"
        with zipfile.ZipFile(archive, "w") as bundle:
            bundle.writestr("images/0002_01.png", b"a drawing")
        safe_extract(archive, tmp_path / "elsewhere")
        assert stale.exists()  # another target is not this extraction's business
        safe_extract(archive, target)
        assert not stale.parent.parent.exists() and busy.exists()
    finally:
        live.kill()
        live.wait()


# --- kill -9 during training, then resume -------------------------------------------------------

STEPS = 40
FAMILIES = {  # tiny settings; meta-batch, then what else makes a step quick
    "prototypical": (1, ("--set", "train_query=5")),
    "maml": (2, ("--set", "hidden=8", "--set", "train_query=1")),
    "mann": (2, ("--set", "controller_size=16", "--set", "memory_slots=16",
                 "--set", "memory_width=8", "--set", "read_heads=1", "--set", "train_shot=4")),
}


def family_arguments(algorithm: str) -> list[str]:
    meta_batch, settings = FAMILIES[algorithm]
    return ["--train-way", "5", "--episodes", str(STEPS * meta_batch), "--meta-batch",
            str(meta_batch), "--set", "val_every=5", "--set", "val_episodes=2", "--device",
            "cpu", *settings]


def assert_identical(expected, actual, where: str) -> None:
    if isinstance(expected, torch.Tensor):
        assert torch.equal(expected, actual), where
    elif isinstance(expected, dict):
        assert expected.keys() == actual.keys(), where
        for key in expected:
            assert_identical(expected[key], actual[key], f"{where}/{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), where
        for index, (one, other) in enumerate(zip(expected, actual, strict=True)):
            assert_identical(one, other, f"{where}[{index}]")
    else:
        assert expected == actual, where


@pytest.fixture
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the killed process: the same float summation order
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(FAMILIES))
def test_kill_9_then_resume_gives_the_uninterrupted_weights(algorithm, tiny_omniglot_root,
                                                            tmp_path, single_thread):
    arguments = family_arguments(algorithm)
    env = {"METACTL_HOME": str(tiny_omniglot_root)}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    outcome = invoke_metactl("train", algorithm, "--out", str(straight), *arguments, env=env)
    assert outcome.exit_code == 0, outcome.stderr
    process = subprocess.Popen([metactl_executable(), "train", algorithm, "--out", str(killed),
                                *arguments], env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
                               stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(last)["step"]
    assert killed_at < STEPS, "the run ended before the kill"
    outcome = invoke_metactl("train", "--resume", str(killed), env=env)
    assert outcome.exit_code == 0, outcome.stderr
    for name in ("last.pt", "best.pt"):  # weights, optimizer, random states: everything
        expected = load_checkpoint(straight / "checkpoints" / name)
        actual = load_checkpoint(killed / "checkpoints" / name)
        # The wall time spent training differs from run to run, and is all that may.
        assert expected.pop("train_seconds") > 0 and actual.pop("train_seconds") > 0
        assert_identical(expected, actual, name)
    assert leftovers(killed) == []
    assert steps_logged(killed) == steps_logged(straight)
    assert RunFolder(killed).holder() is None
