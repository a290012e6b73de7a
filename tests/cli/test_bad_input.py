"""The bad-input matrix: every command refuses nonsense with one line, a fitting exit code, no
traceback, and without touching a file that was there before.

Each case runs ``metactl`` through its real entry point, in this process (see
``testsupport.invoke_metactl``), against the tiny real Omniglot stores, a short Prototypical
Networks run and a short MAML sinusoid run. Placeholders in the arguments: ``{run}``, ``{sine}``
(the runs, copied for each case), ``{episodes}`` (a 5-way 1-shot test episode file of the tiny
Vinyals store), ``{file}`` (a regular file), ``{folder}`` (an empty folder), ``{support}`` and
``{queries}`` (folders of drawings), ``{tmp}`` (the case's own folder).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from testsupport import invoke_metactl, train_briefly

from metactl.data.episodes import EpisodeSet
from metactl.data.manage import open_split

USAGE, DATA = 2, 1


@dataclass(frozen=True)
class Case:
    """``metactl ARGUMENTS`` must exit with ``exit_code`` and print one line holding
    ``message`` on stderr (exit 0: print nothing on stderr); ``prepare(folder, root)`` edits
    the case's folder first."""

    name: str
    arguments: str
    exit_code: int
    message: str
    prepare: Callable[[Path, Path], None] | None = None
    needs_no_cuda: bool = False
    pixel_limit: int | None = None  # Pillow's decompression-bomb warning threshold


# --- preparations: each gets the case's folder and the data root -----------------------

def _edit_episodes(change: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    def prepare(folder: Path, root: Path) -> None:
        path = folder / "episodes.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    return prepare


def _set_class(value: int) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        data["classes"][3][1] = value
    return change


def _set_image(value: int) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        data["images"][3][1][0] = value
    return change


def _repeat_image(data: dict) -> None:
    row = data["images"][3][1]
    row[1] = row[0]


def _other_fingerprint(data: dict) -> None:
    data["store_fingerprint"] = "0" * 64


def _best_as_last(folder: Path, root: Path) -> None:
    checkpoints = folder / "run" / "checkpoints"
    shutil.copy(checkpoints / "best.pt", checkpoints / "last.pt")


def _only_best(folder: Path, root: Path) -> None:
    (folder / "run" / "checkpoints" / "last.pt").unlink()


def _truncated_last(folder: Path, root: Path) -> None:
    last = folder / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def _pickled_last(folder: Path, root: Path) -> None:
    torch.save({"format": "metactl-checkpoint", "payload": _Exploit()},
               folder / "run" / "checkpoints" / "last.pt")


def _background_episodes(folder: Path, root: Path) -> None:
    split = open_split("omniglot", "test", root=root, scheme="background", size=28)
    EpisodeSet.draw(split, dataset="omniglot", scheme="background", size=28, way=5, shot=1,
                    query=15, episodes=4, seed=0).save(folder / "background.json")


def _config_file(text: str) -> Callable[[Path, Path], None]:
    def prepare(folder: Path, root: Path) -> None:
        (folder / "settings.yaml").write_text(text)
    return prepare


def _huge_image(folder: Path, root: Path) -> None:
    """An image past Pillow's decompression-bomb warning: 90 megapixels, or, to keep the test
    quick, 120x120 pixels with the warning's threshold lowered to 12,000, above the 105x105
    support drawings (see the test)."""
    from PIL import Image

    Image.new("1", (120, 120), 1).save(folder / "queries" / "huge.png")


# Short, so that a case the code fails to refuse costs seconds; a later --episodes wins.
TRAIN = ("train prototypical --out {tmp}/new --episodes 4 --train-way 5 --set val_every=2 "
         "--set val_episodes=2")
CASES = [
    # Training settings
    Case("negative lr", f"{TRAIN} --lr -1", USAGE, "lr must not be negative"),
    Case("nan lr", f"{TRAIN} --lr nan", USAGE, "lr must be a finite number"),
    Case("infinite lr", f"{TRAIN} --set lr=inf", USAGE, "lr must be a finite number"),
    Case("text lr", f"{TRAIN} --set lr=abc", USAGE, "lr must be a number"),
    Case("negative momentum", f"{TRAIN} --set momentum=-5", USAGE,
         "momentum must not be negative"),
    Case("nan momentum", f"{TRAIN} --set momentum=nan", USAGE, "momentum must be a finite"),
    Case("negative weight decay", f"{TRAIN} --set weight_decay=-1", USAGE,
         "weight_decay must not be negative"),
    Case("negative grad clip", f"{TRAIN} --set grad_clip=-1", USAGE,
         "grad_clip must not be negative"),
    Case("zero lr decay", f"{TRAIN} --set lr_decay=0", USAGE, "lr_decay must be positive"),
    Case("text way", f"{TRAIN} --set way=abc", USAGE, "way must be a whole number"),
    Case("fractional way", f"{TRAIN} --set way=2.5", USAGE, "way must be a whole number"),
    Case("text --way", f"{TRAIN} --way abc", USAGE, "--way"),
    Case("misspelt setting", f"{TRAIN} --set lerning_rate=0.1", USAGE, "Did you mean 'lr'"),
    Case("typo in a setting", f"{TRAIN} --set hiden=3", USAGE, "no setting 'hiden'"),
    Case("zero way", f"{TRAIN} --way 0", USAGE, "way must be positive"),
    Case("zero shot", f"{TRAIN} --shot 0", USAGE, "shot must be positive"),
    Case("zero query", f"{TRAIN} --query 0", USAGE, "query must be positive"),
    Case("negative query", f"{TRAIN} --query -1", USAGE, "query must be positive"),
    Case("zero training query", f"{TRAIN} --set train_query=0", USAGE,
         "train_query must be positive"),
    Case("zero episodes", f"{TRAIN} --episodes 0", USAGE, "episodes must be positive"),
    Case("negative episodes", f"{TRAIN} --episodes -5", USAGE, "episodes must be positive"),
    Case("zero meta-batch", f"{TRAIN} --meta-batch 0", USAGE, "meta_batch must be positive"),
    Case("zero size", f"{TRAIN} --set size=0", USAGE, "size must be positive"),
    Case("text size", f"{TRAIN} --set size=big", USAGE, "size must be a whole number"),
    Case("zero eval episodes", f"{TRAIN} --set eval_episodes=0", USAGE,
         "eval_episodes must be positive"),
    Case("unknown optimizer", f"{TRAIN} --set optimizer=lbfgs", USAGE, "unknown optimizer"),
    Case("unknown device", f"{TRAIN} --device tpu", USAGE, "unknown device"),
    Case("cuda without cuda", f"{TRAIN} --device cuda", USAGE, "CUDA is not available",
         needs_no_cuda=True),
    Case("unknown scheme", f"{TRAIN} --set scheme=vinyal", USAGE, "no split 'vinyal'"),
    Case("unknown dataset", f"{TRAIN} --dataset omniglott", USAGE, "omniglott"),
    Case("misspelt algorithm", "train protoypical", USAGE, "Did you mean 'prototypical'"),
    Case("way above the classes", f"{TRAIN} --way 500", USAGE, "way 500 is larger"),
    Case("way above the classes, default folder", "train prototypical", USAGE,
         "way 60 is larger than the 28 classes"),
    Case("--out is a file", "train prototypical --out {file}", USAGE, "is a file"),
    Case("missing config file", f"{TRAIN} --config {{tmp}}/absent.yaml", USAGE,
         "does not exist"),
    Case("config file of a list", f"{TRAIN} --config {{tmp}}/settings.yaml", USAGE,
         "must hold a mapping", _config_file("- way\n- 5\n")),
    Case("config file with a text way", f"{TRAIN} --config {{tmp}}/settings.yaml", USAGE,
         "way must be a whole number", _config_file("way: five\n")),
    # Resuming
    Case("resume to fewer episodes", "train --resume {run} --episodes 1", USAGE,
         "already trained 4 steps"),
    Case("resume with changed settings", "train --resume {run} --lr 0.5", USAGE,
         "lr differ"),
    Case("resume as another algorithm", "train maml --resume {run}", USAGE,
         "is a prototypical run"),
    Case("train into a run", "train prototypical --out {run}", USAGE, "already holds a run"),
    Case("resume a missing run", "train --resume {tmp}/absent", USAGE, "does not exist"),
    Case("resume from best.pt as last.pt", "train --resume {run}", DATA, "holds no training "
         "state", _best_as_last),
    Case("resume without last.pt", "train --resume {run}", DATA, "best.pt is from step",
         _only_best),
    Case("resume a truncated checkpoint", "train --resume {run}", DATA, "is truncated",
         _truncated_last),
    Case("resume a pickled object", "train --resume {run}", DATA, "never unpickles",
         _pickled_last),
    # Evaluation
    Case("evaluate zero way", "evaluate {run} --way 0", USAGE, "--way must be positive"),
    Case("evaluate one way", "evaluate {run} --way 1", USAGE, "way must be at least 2"),
    Case("evaluate zero shot", "evaluate {run} --shot 0", USAGE, "--shot must be positive"),
    Case("evaluate zero query", "evaluate {run} --query 0", USAGE, "--query must be positive"),
    Case("evaluate zero episodes", "evaluate {run} --episodes 0", USAGE,
         "--episodes must be positive"),
    Case("evaluate negative episodes", "evaluate {run} --episodes -2", USAGE,
         "--episodes must be positive"),
    Case("evaluate text way", "evaluate {run} --way five", USAGE, "--way"),
    Case("evaluate an unknown split", "evaluate {run} --split nope", USAGE, "no split 'nope'"),
    Case("evaluate negative steps", "evaluate {run} --inner-steps -1", USAGE,
         "must not be negative"),
    Case("evaluate plot of a classifier", "evaluate {run} --plot {tmp}/plot.png", USAGE,
         "draws generated tasks"),
    Case("evaluate on cuda without cuda", "evaluate {run} --device cuda", USAGE,
         "CUDA is not available", needs_no_cuda=True),
    Case("evaluate a folder without a run", "evaluate {folder}", USAGE, "not a metactl run"),
    Case("evaluate a missing episode file", "evaluate {run} --episode-file {tmp}/absent.json",
         DATA, "does not exist"),
    Case("episode file and --way", "evaluate {run} --episode-file {episodes} --way 3", USAGE,
         "--episode-file fixes"),
    Case("episode class -1", "evaluate {run} --episode-file {episodes}", DATA,
         "class -1", _edit_episodes(_set_class(-1))),
    Case("episode class beyond the split", "evaluate {run} --episode-file {episodes}", DATA,
         "class 9999", _edit_episodes(_set_class(9999))),
    Case("episode image 1e9", "evaluate {run} --episode-file {episodes}", DATA,
         "image 1000000000", _edit_episodes(_set_image(10**9))),
    Case("episode image 25 of 20", "evaluate {run} --episode-file {episodes}", DATA,
         "image 25", _edit_episodes(_set_image(25))),
    Case("episode image -1", "evaluate {run} --episode-file {episodes}", DATA,
         "image -1", _edit_episodes(_set_image(-1))),
    Case("episode image twice", "evaluate {run} --episode-file {episodes}", DATA,
         "twice", _edit_episodes(_repeat_image)),
    Case("episode file of another store", "evaluate {run} --episode-file {episodes}", DATA,
         "different omniglot store", _edit_episodes(_other_fingerprint)),
    Case("episode file of another scheme", "evaluate {run} --episode-file {tmp}/background.json",
         USAGE, "background", _background_episodes),
    # Sinusoid runs
    Case("sinusoid with an episode file", "evaluate {sine} --episode-file {episodes}", USAGE,
         "sinusoid"),
    Case("sinusoid with --way", "evaluate {sine} --way 5", USAGE, "--way"),
    Case("predict with a regression run", "predict {sine} --support {support} --query "
         "{queries}", USAGE, "regression"),
    # Prediction
    Case("predict into a folder", "predict {run} --support {support} --query {queries} "
         "-o {folder}.csv", USAGE, "is a folder", lambda folder, root: (folder / "folder.csv")
         .mkdir()),
    Case("predict to an unknown format", "predict {run} --support {support} --query {queries} "
         "-o {tmp}/out.txt", USAGE, "unknown format"),
    Case("predict a 90-megapixel image", "predict {run} --support {support} --query "
         "{queries}/huge.png", 0, "", _huge_image, pixel_limit=12_000),
    # Data commands
    Case("preprocess size 0", "data preprocess omniglot --size 0", USAGE,
         "--size must be positive"),
    Case("preprocess negative size", "data preprocess omniglot --size -5", USAGE,
         "--size must be positive"),
    Case("split size 0", "data split omniglot --size 0 -o {tmp}/e.json", USAGE,
         "--size must be positive"),
    Case("split zero way", "data split omniglot --way 0 -o {tmp}/e.json", USAGE,
         "--way must be positive"),
    Case("split zero shot", "data split omniglot --shot 0 -o {tmp}/e.json", USAGE,
         "--shot must be positive"),
    Case("split zero query", "data split omniglot --query 0 -o {tmp}/e.json", USAGE,
         "--query must be positive"),
    Case("split zero episodes", "data split omniglot --episodes 0 -o {tmp}/e.json", USAGE,
         "--episodes must be positive"),
    Case("split into a folder", "data split omniglot -o {folder}", USAGE, "is a folder"),
    Case("info size 0", "data info omniglot --size 0", USAGE, "--size must be positive"),
    Case("show episode -1", "data show omniglot --episode -1 -o {tmp}/e.png", USAGE,
         "--episode must not be negative"),
    Case("show an episode past the file", "data show omniglot --episode-file {episodes} "
         "--episode 10 -o {tmp}/e.png", USAGE, "--episode 10 is outside"),
    Case("show zero way", "data show omniglot --way 0 -o {tmp}/e.png", USAGE,
         "--way must be positive"),
    Case("show an edited episode file", "data show omniglot --episode-file {episodes} --episode "
         "3 -o {tmp}/e.png", DATA, "image 25", _edit_episodes(_set_image(25))),
    Case("show into a folder", "data show omniglot -o {folder}", USAGE, "is a folder"),
    Case("fetch an unknown dataset", "data fetch omniglott", USAGE, "Did you mean 'omniglot'"),
    # The command line itself
    Case("a missing option value", "train prototypical --way", USAGE, "--way"),
    Case("a missing argument", "evaluate", USAGE, "Missing argument 'run'"),
    Case("an unknown command", "trian", USAGE, "trian"),
    Case("an unknown option", "train prototypical --wya 5", USAGE, "--wya"),
]


@pytest.fixture(scope="module")
def prototypical_run(tiny_omniglot_root, tmp_path_factory) -> Path:
    """Prototypical Networks after 4 steps on the tiny store (validated at steps 2 and 4)."""
    out = tmp_path_factory.mktemp("runs") / "prototypical"
    train_briefly("prototypical", {"episodes": 4, "val_every": 2, "val_episodes": 2,
                                   "eval_episodes": 10, "train_way": 5, "train_query": 5,
                                   "device": "cpu"},
                  tiny_omniglot_root, out)
    return out


@pytest.fixture(scope="module")
def sinusoid_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "sinusoid"
    train_briefly("maml", {"dataset": "sinusoid", "episodes": 4, "meta_batch": 2,
                           "val_episodes": 2, "device": "cpu"}, Path("unused"), out)
    return out


@pytest.fixture
def workspace(tmp_path, tiny_omniglot_root, prototypical_run, sinusoid_run) -> Path:
    folder = tmp_path / "case"
    folder.mkdir()
    shutil.copytree(prototypical_run, folder / "run")
    shutil.copytree(sinusoid_run, folder / "sine")
    split = open_split("omniglot", "test", root=tiny_omniglot_root, size=28)
    EpisodeSet.draw(split, dataset="omniglot", scheme="vinyals", size=28, way=5, shot=1,
                    query=15, episodes=10, seed=0).save(folder / "episodes.json")
    (folder / "file").write_text("not a folder\n")
    (folder / "folder").mkdir()
    drawings = sorted((tiny_omniglot_root / "omniglot" / "extracted").rglob("*.png"))
    for index, label in enumerate(("alpha", "beta")):
        (folder / "support" / label).mkdir(parents=True)
        shutil.copy(drawings[20 * index], folder / "support" / label / "a.png")
    (folder / "queries").mkdir()
    shutil.copy(drawings[1], folder / "queries" / "q.png")
    return folder


def snapshot(*folders: Path) -> dict[Path, str]:
    """Every file under ``folders`` with the SHA-256 of its bytes, and every folder."""
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
            for folder in folders for path in sorted(folder.rglob("*"))}


def placeholders(workspace: Path) -> dict[str, str]:
    return {"run": str(workspace / "run"), "sine": str(workspace / "sine"),
            "episodes": str(workspace / "episodes.json"), "file": str(workspace / "file"),
            "folder": str(workspace / "folder"), "support": str(workspace / "support"),
            "queries": str(workspace / "queries"), "tmp": str(workspace)}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_bad_input_is_refused_cleanly(case, workspace, tiny_omniglot_root, monkeypatch):
    if case.needs_no_cuda and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if case.pixel_limit is not None:
        from PIL import Image

        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", case.pixel_limit)
    if case.prepare is not None:
        case.prepare(workspace, tiny_omniglot_root)
    before = snapshot(workspace, tiny_omniglot_root)
    arguments = case.arguments.format(**placeholders(workspace)).split()
    outcome = invoke_metactl(*arguments, cwd=workspace,
                             env={"METACTL_HOME": str(tiny_omniglot_root),
                                  "METACTL_MIRROR": str(workspace / "no-mirror")})
    after = snapshot(workspace, tiny_omniglot_root)
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.exit_code == case.exit_code, outcome
    lines = outcome.stderr.strip().splitlines()
    if case.exit_code == 0:
        assert lines == [], outcome.stderr
    else:
        assert len(lines) == 1 and lines[0].startswith("Error: "), outcome.stderr
        assert case.message in lines[0], lines[0]
        assert outcome.stdout == ""
    changed = sorted(str(path) for path in before if after.get(path) != before[path])
    assert changed == [], "changed or removed"
    created = sorted(str(path) for path in after if path not in before)
    assert created == [], "left behind"
