"""``metactl data ...`` through the real command, on the real Omniglot files."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from testsupport import SHARED_DATASETS, run_metactl

COMMANDS = [[], ["data"], ["data", "list"], ["data", "fetch"], ["data", "preprocess"],
            ["data", "import"], ["data", "split"], ["data", "info"], ["data", "show"], ["train"],
            ["evaluate"], ["predict"], ["plugins"], ["plugins", "list"], ["plugins", "info"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "metactl")
def test_every_command_has_help(command):
    result = run_metactl(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def test_version():
    result = run_metactl("--version")
    assert result.returncode == 0 and result.stdout.startswith("metactl 0.")


def test_data_list_does_not_import_torch(tmp_path):
    probe = ("import sys; sys.argv = ['metactl', 'data', 'list', '--root', sys.argv[1]]\n"
             "from metactl.cli.main import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
             "sys.stderr.write('torch imported: %s' % ('torch' in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert result.stderr.endswith("torch imported: False"), result.stderr


@pytest.mark.slow
def test_fetch_from_a_mirror_then_a_second_run_says_so_in_one_line(tmp_path):
    mirror = str(SHARED_DATASETS)
    first = run_metactl("data", "fetch", "omniglot", "--root", str(tmp_path), "--mirror", mirror)
    assert first.returncode == 0, first.stderr
    assert "differs from the official one" in first.stderr  # the rebuilt zips
    assert "matches the official checksum" in first.stderr  # the byte-identical split lists
    store = tmp_path / "omniglot" / "omniglot-vinyals-28.h5"
    assert store.is_file()
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("*.tmp"))
    second = run_metactl("data", "fetch", "omniglot", "--root", str(tmp_path), "--mirror", mirror)
    assert second.returncode == 0
    assert second.stderr.strip().count("\n") == 0 and "already fetched" in second.stderr
    listed = run_metactl("data", "list", "--root", str(tmp_path), "--json")
    (entry,) = [d for d in json.loads(listed.stdout) if d["name"] == "omniglot"]
    assert entry["state"] == "preprocessed" and entry["download_bytes"] > 14_000_000
    background = run_metactl("data", "preprocess", "omniglot", "--scheme", "background",
                             "--root", str(tmp_path))
    assert background.returncode == 0, background.stderr
    # The old spelling, --split for the scheme, still works and says what replaced it.
    info = run_metactl("data", "info", "omniglot", "--split", "background", "--root",
                       str(tmp_path), "--json")
    assert "--split here is now --scheme" in info.stderr
    classes = {split["name"]: split["classes"] for split in json.loads(info.stdout)["splits"]}
    assert classes == {"train": 964, "test": 659}


def test_info_describes_the_store(omniglot_root):
    result = run_metactl("data", "info", "omniglot", "--root", str(omniglot_root), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    splits = {split["name"]: split for split in summary["splits"]}
    assert {name: splits[name]["classes"] for name in splits} == {
        "train": 1028, "val": 172, "test": 423}
    assert splits["train"]["sampling_classes"] == 4112
    assert splits["test"]["image_shape"] == [28, 28]
    assert summary["provenance"]["scheme"] == "vinyals"
    assert "images_background.zip" in summary["provenance"]["source_checksums"]


def test_split_files_are_reproducible(omniglot_root, tmp_path):
    def write(name: str, seed: str):
        result = run_metactl("data", "split", "omniglot", "--way", "5", "--shot", "1",
                             "--query", "15", "--episodes", "50", "--split", "test", "--seed",
                             seed, "-o", str(tmp_path / name), "--root", str(omniglot_root))
        assert result.returncode == 0, result.stderr
        return (tmp_path / name).read_bytes()

    first, again, other = write("a.json", "0"), write("b.json", "0"), write("c.json", "1")
    assert first == again and first != other
    episodes = json.loads(first)
    assert (episodes["way"], episodes["shot"], episodes["query"], episodes["seed"]) == (5, 1, 15, 0)
    assert len(episodes["classes"]) == 50 and len(episodes["images"][0][0]) == 16


def test_show_renders_an_episode(omniglot_root, tmp_path):
    output = tmp_path / "episode.png"
    result = run_metactl("data", "show", "omniglot", "--way", "3", "--shot", "2", "--query", "2",
                         "-o", str(output), "--root", str(omniglot_root))
    assert result.returncode == 0, result.stderr
    from PIL import Image

    with Image.open(output) as image:
        assert image.format == "PNG" and image.width > image.height > 0


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def error_of(*arguments: str) -> str:
    result = run_metactl(*arguments)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_unknown_dataset(tmp_path):
    assert "Did you mean 'omniglot'?" in error_of("data", "fetch", "omniglott", "--root",
                                                  str(tmp_path))


def test_unwritable_root(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = error_of("data", "fetch", "omniglot", "--root", str(blocker / "data"))
    assert "cannot write to the data root" in line and "--root" in line


def test_mirror_that_does_not_answer_leaves_nothing_behind(tmp_path):
    line = error_of("data", "fetch", "omniglot", "--root", str(tmp_path),
                    "--mirror", f"http://127.0.0.1:{closed_port()}")
    assert "cannot reach" in line and "METACTL_MIRROR" in line
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_missing_and_corrupt_store(tmp_path):
    assert "metactl data" in error_of("data", "info", "omniglot", "--root", str(tmp_path))
    store = tmp_path / "omniglot" / "omniglot-vinyals-28.h5"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 100)
    assert "omniglot-vinyals-28.h5" in error_of("data", "info", "omniglot", "--root",
                                                str(tmp_path))


@pytest.mark.parametrize(("arguments", "message"), [
    (["--way", "2000"], "way 2000 is larger than the 1692 classes"),
    (["--shot", "5", "--query", "16"], "shot + query = 21 is more than the 20 images"),
    (["--split", "nope"], "no split 'nope'"),
    (["--episodes", "0"], "--episodes must be positive"),
])
def test_split_refuses_impossible_tasks(omniglot_root, tmp_path, arguments, message):
    output = tmp_path / "episodes.json"
    line = error_of("data", "split", "omniglot", *arguments, "-o", str(output), "--root",
                    str(omniglot_root))
    assert message in line
    assert not output.exists()
