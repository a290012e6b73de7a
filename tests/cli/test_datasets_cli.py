"""Datasets through the real command: mini-ImageNet's bad inputs, broken dataset plugins, and a
user's own folder of images imported, trained on, evaluated and predicted with.

Every failure must be one ``Error:`` line, a non-zero exit, and leave nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from testsupport import (
    SHARED_DATASETS,
    class_folders_of_colours,
    one_line_error,
    run_metactl,
    tiny_mini_imagenet_files,
    write_files,
)

MINI = SHARED_DATASETS / "mini-imagenet"
PARTS = ("train-1.tar.xz", "train-2.tar.xz", "val.tar.xz", "test.tar.xz")
NO_MIRROR = {"METACTL_MIRROR": ""}


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def require_split_lists() -> None:
    if not (MINI / "splits" / "ravi" / "train.csv").is_file():
        pytest.skip(f"the mini-ImageNet split lists are not in {MINI}")


def mirror_with(folder: Path, parts: dict[str, bytes]) -> Path:
    """A mirror holding the genuine split lists and the given parts."""
    require_split_lists()
    target = folder / "mini-imagenet"
    shutil.copytree(MINI / "splits", target / "splits")
    write_files(target, parts)
    return folder


def test_an_unknown_dataset_suggests_the_nearest_names(tmp_path):
    line = one_line_error(run_metactl("data", "fetch", "mini-imagnet", "--root", str(tmp_path)))
    assert "unknown dataset 'mini-imagnet'" in line and "'mini-imagenet'" in line
    line = one_line_error(run_metactl("data", "info", "omniglott", "--root", str(tmp_path)))
    assert "Did you mean 'omniglot'?" in line


def test_without_a_mirror_the_fetch_says_how_to_provide_one(tmp_path):
    line = one_line_error(run_metactl("data", "fetch", "mini-imagenet", "--root", str(tmp_path),
                                      env=NO_MIRROR))
    assert "come from no public host" in line and "train-1.tar.xz" in line
    assert "--mirror DIR" in line and "METACTL_MIRROR" in line
    assert files_under(tmp_path) == []


def test_a_mirror_that_lacks_a_part_is_named_before_anything_is_copied(tmp_path):
    mirror = mirror_with(tmp_path / "mirror", {part: b"x" for part in PARTS if "2" not in part})
    root = tmp_path / "root"
    line = one_line_error(run_metactl("data", "fetch", "mini-imagenet", "--root", str(root),
                                      "--mirror", str(mirror)))
    assert "lacks train-2.tar.xz" in line and str(mirror / "mini-imagenet") in line
    assert files_under(root) == []


def test_a_truncated_part_fails_its_checksum_and_is_deleted(tmp_path):
    if not (MINI / "train-1.tar.xz").is_file():
        pytest.skip(f"the mini-ImageNet parts are not in {MINI}")
    with (MINI / "train-1.tar.xz").open("rb") as stream:
        truncated = stream.read(1 << 20)
    mirror = mirror_with(tmp_path / "mirror", {"train-1.tar.xz": truncated,
                                               **{part: b"x" for part in PARTS[1:]}})
    root = tmp_path / "root"
    line = one_line_error(run_metactl("data", "fetch", "mini-imagenet", "--root", str(root),
                                      "--mirror", str(mirror)))
    assert "train-1.tar.xz" in line and "does not match its checksum" in line
    downloads = root / "mini-imagenet" / "downloads"
    assert [p.relative_to(downloads).as_posix() for p in files_under(root)] == [
        "splits/ravi/test.csv", "splits/ravi/train.csv", "splits/ravi/val.csv"]


@pytest.mark.parametrize(("damage", "message"), [
    (lambda files: {**files, "val.tar.xz": files["val.tar.xz"][:-200]},
     "val.tar.xz is corrupt or truncated"),
    (lambda files: {**files, "splits/ravi/test.csv": files["splits/ravi/test.csv"]
                    + b"n0000000799999999.jpg,n00000007\n"},
     "n0000000799999999.jpg (line 14 of splits/ravi/test.csv)"),
])
def test_preprocessing_names_a_bad_part_or_a_row_without_an_image(tmp_path, damage, message):
    """The files of a tiny synthetic mini-ImageNet, placed as a fetch leaves them (preprocess
    reads the downloads without checking their checksums again)."""
    downloads = tmp_path / "mini-imagenet" / "downloads"
    write_files(downloads, damage(tiny_mini_imagenet_files(per_class=6)))
    line = one_line_error(run_metactl("data", "preprocess", "mini-imagenet", "--root",
                                      str(tmp_path)))
    assert message in line
    assert not list((tmp_path / "mini-imagenet").glob("*.h5"))
    assert not list(tmp_path.rglob("*.tmp"))


BROKEN_CARD = """\
name: broken-shapes
title: Broken shapes
summary: a card without its image channels
licence: CC0
citation: none
sources: []
geometry: {height: 28, width: 28, default_size: 28}
content: {classes: 3}
splits: {only: {folders: {train: shapes}}}
default_split: only
"""
BROKEN_MODULE = """\
from pathlib import Path

from metactl import hookimpl
from metactl.dataset import ImageDataset


class BrokenShapes(ImageDataset):
    card_file = Path(__file__).with_name("broken-shapes.yaml")


@hookimpl
def metactl_register_datasets(registry):
    registry.add(BrokenShapes)
"""


@pytest.fixture
def broken_plugin(tmp_path) -> dict[str, str]:
    """A dataset plugin with an invalid card, installed as a package with its entry point."""
    site = tmp_path / "site"
    info = site / "broken_shapes-0.1.dist-info"
    write_files(site, {"broken_shapes.py": BROKEN_MODULE.encode(),
                       "broken-shapes.yaml": BROKEN_CARD.encode()})
    write_files(info, {"METADATA": b"Metadata-Version: 2.1\nName: broken-shapes\nVersion: 0.1\n",
                       "entry_points.txt": b"[metactl]\nbroken-shapes = broken_shapes\n"})
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


def test_a_dataset_plugin_with_an_invalid_card_is_listed_and_the_others_work(broken_plugin,
                                                                             tmp_path):
    listed = run_metactl("data", "list", "--root", str(tmp_path), env=broken_plugin)
    assert listed.returncode == 0, listed.stderr
    assert "mini-imagenet" in listed.stdout and "omniglot" in listed.stdout
    broken = listed.stdout.split("Broken plugins")[1]
    assert "broken-shapes [broken-shapes 0.1]" in broken
    assert "geometry.channels is missing" in broken and "broken-shapes.yaml" in broken
    plugins = json.loads(run_metactl("plugins", "list", "--json", env=broken_plugin).stdout)
    assert [f["plugin"] for f in plugins["failures"]] == ["broken-shapes"]
    line = one_line_error(run_metactl("data", "fetch", "broken-shapes", "--root", str(tmp_path),
                                      env=broken_plugin))
    assert "unknown dataset 'broken-shapes'" in line


def test_data_list_shows_each_dataset_with_its_package(tmp_path):
    listed = json.loads(run_metactl("data", "list", "--root", str(tmp_path), "--json").stdout)
    packages = {entry["name"]: (entry["state"], entry["package"]) for entry in listed}
    assert packages["mini-imagenet"] == ("absent", packages["omniglot"][1])
    assert packages["sinusoid"][0] == "synthetic"
    assert packages["omniglot"][1].startswith("metactl ")


# --- a user's own images -------------------------------------------------------------------

def import_error(tmp_path: Path, folder: Path, *options: str) -> str:
    root = tmp_path / "root"
    line = one_line_error(run_metactl("data", "import", str(folder), "--name", "mine",
                                      "--root", str(root), *options))
    assert not root.exists() or files_under(root) == []
    return line


def test_an_import_with_fewer_classes_than_the_way_is_refused(tmp_path):
    folder = class_folders_of_colours(tmp_path / "images", classes=3, per_class=3)
    assert "has 3 classes, fewer than the requested way 5" in import_error(tmp_path, folder)
    line = import_error(tmp_path, folder, "--way", "2")  # 3 classes: 2 / 1 / 0 after the split
    assert "fewer than the requested way 2" in line


def test_an_import_with_a_class_of_too_few_images_is_refused(tmp_path):
    folder = class_folders_of_colours(tmp_path / "images", classes=10, per_class=3)
    for extra in sorted((folder / "class-04").iterdir())[1:]:
        extra.unlink()
    line = import_error(tmp_path, folder, "--way", "2")
    assert "class 'class-04'" in line and "has 1 image, fewer than --min-images 2" in line


def test_an_import_with_an_unreadable_image_names_it(tmp_path):
    folder = class_folders_of_colours(tmp_path / "images", classes=10, per_class=3)
    (folder / "class-07" / "broken.jpg").write_bytes(b"\xff\xd8 this is no JPEG")
    line = import_error(tmp_path, folder, "--way", "2")
    assert "broken.jpg is not an image Pillow can read" in line


@pytest.mark.parametrize(("options", "message"), [
    (["--split-by", "alphabet"], "--split-by 'alphabet' is not class or folder"),
    (["--split-by", "folder"], "needs"),
    (["--fractions", "0.5,0.5"], "is not three numbers"),
    (["--size", "4"], "--size 4 is outside"),
])
def test_bad_import_options_are_refused(tmp_path, options, message):
    folder = class_folders_of_colours(tmp_path / "images", classes=6, per_class=2)
    assert message in import_error(tmp_path, folder, "--way", "2", *options)


@pytest.mark.slow
def test_an_imported_folder_trains_evaluates_and_predicts(tmp_path):
    folder = class_folders_of_colours(tmp_path / "images", classes=12, per_class=6)
    root, run = tmp_path / "root", tmp_path / "run"
    imported = run_metactl("data", "import", str(folder), "--name", "colours", "--size", "24",
                           "--way", "2", "--root", str(root))
    assert imported.returncode == 0, imported.stderr
    info = json.loads(run_metactl("data", "info", "colours", "--root", str(root),
                                  "--json").stdout)
    classes = {split["name"]: split["classes"] for split in info["splits"]}
    assert classes == {"train": 8, "val": 2, "test": 2}
    assert info["splits"][0]["image_shape"] == [24, 24, 3]
    assert len(info["provenance"]["normalisation"]["mean"]) == 3
    listed = json.loads(run_metactl("data", "list", "--root", str(root), "--json").stdout)
    assert {"name": "colours", "state": "imported"}.items() <= listed[-1].items()

    trained = run_metactl("train", "prototypical", "--dataset", "colours", "--way", "2",
                          "--shot", "1", "--query", "3", "--train-way", "4", "--episodes", "30",
                          "--set", "val_episodes=20", "--device", "cpu", "--root", str(root),
                          "--out", str(run))
    assert trained.returncode == 0, trained.stderr
    evaluated = run_metactl("evaluate", str(run), "--episodes", "200", "--json", "--root",
                            str(root))
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["episodes"] == 200 and result["mean"] > 0.9, result  # chance: 0.5

    chosen = sorted(folder.iterdir())[:2]  # any two classes: one support image each
    support = tmp_path / "support"
    for class_folder in chosen:
        shutil.copytree(class_folder, support / class_folder.name,
                        ignore=lambda _, names: [n for n in names if not n.startswith("image-0")])
    predicted = run_metactl("predict", str(run), "--support", str(support), "--query",
                            str(chosen[0] / "image-3.png"), "--query",
                            str(chosen[1] / "image-4.jpg"))
    assert predicted.returncode == 0, predicted.stderr
    assert [line.split("\t")[1] for line in predicted.stdout.splitlines()] == [
        chosen[0].name, chosen[1].name]
