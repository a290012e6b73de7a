"""safe_extract on archives made by the tests (good, crafted, corrupt) and a genuine one."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from metactl.data.archive import UNSAFE_HINT, safe_extract
from metactl.errors import DataError

Member = tuple[str, bytes]


def make_zip(path: Path, members: list[Member], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as bundle:
        for name, data in members:
            bundle.writestr(zipfile.ZipInfo(name), data)
    return path


def make_tar(path: Path, members: list[tarfile.TarInfo | Member]) -> Path:
    mode = {".xz": "w:xz", ".gz": "w:gz"}.get(path.suffix, "w")
    with tarfile.open(path, mode) as bundle:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                bundle.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                bundle.addfile(info, io.BytesIO(member[1]))
    return path


def tar_entry(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def zip_entry_with_mode(path: Path, name: str, mode: int, data: bytes = b"") -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("top/ok.txt", b"fine")
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = mode << 16
        bundle.writestr(info, data)
    return path


def everything_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return tmp_path / "extracted"


def test_zip_extracts_top_level_entries(tmp_path, target):
    archive = make_zip(tmp_path / "good.zip", [
        ("top/", b""), ("top/a.txt", b"alpha"), ("top/sub/b.txt", b"beta"), ("readme.txt", b"r"),
    ])
    assert safe_extract(archive, target) == ["readme.txt", "top"]
    assert (target / "top" / "sub" / "b.txt").read_bytes() == b"beta"
    assert everything_under(target) == [
        "readme.txt", "top", "top/a.txt", "top/sub", "top/sub/b.txt"]


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.xz"])
def test_tar_extracts_top_level_entries(tmp_path, target, suffix):
    archive = make_tar(tmp_path / f"good{suffix}", [
        tar_entry("./", tarfile.DIRTYPE), ("./images/n01.jpg", b"jpeg"), ("images/n02.jpg", b"2"),
    ])
    assert safe_extract(archive, target) == ["images"]
    assert everything_under(target) == ["images", "images/n01.jpg", "images/n02.jpg"]


@pytest.mark.slow
def test_genuine_omniglot_zip(omniglot_mirror_folder, target):
    names = safe_extract(omniglot_mirror_folder / "images_background_small1.zip", target)
    assert names == ["images_background_small1"]
    alphabets = sorted(path.name for path in (target / names[0]).iterdir())
    assert alphabets == ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
    assert sum(1 for _ in target.rglob("*.png")) == 2720


def test_existing_folder_is_replaced(tmp_path, target):
    (target / "top").mkdir(parents=True)
    (target / "top" / "old.txt").write_bytes(b"old")
    (target / "other.txt").write_bytes(b"kept")
    safe_extract(make_zip(tmp_path / "new.zip", [("top/new.txt", b"new")]), target)
    assert everything_under(target) == ["other.txt", "top", "top/new.txt"]


def test_merge_keeps_existing_files(tmp_path, target):
    # mini-ImageNet's train-1 and train-2 archives both hold an images/ folder.
    safe_extract(make_tar(tmp_path / "one.tar", [("images/a.jpg", b"a"), ("images/b.jpg", b"1")]),
                 target)
    safe_extract(make_tar(tmp_path / "two.tar", [("images/c.jpg", b"c"), ("images/b.jpg", b"2")]),
                 target, merge=True)
    assert everything_under(target) == ["images", "images/a.jpg", "images/b.jpg", "images/c.jpg"]
    assert (target / "images" / "b.jpg").read_bytes() == b"2"


def assert_refused(archive: Path, target: Path, member: str, reason: str) -> None:
    with pytest.raises(DataError) as caught:
        safe_extract(archive, target)
    assert f"contains an unsafe member {member!r}" in caught.value.message
    assert reason in caught.value.message
    assert caught.value.hint == UNSAFE_HINT
    assert everything_under(target) == []
    assert sorted(path.name for path in archive.parent.iterdir()) == [archive.name, target.name]


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("../evil.txt", "'..'"),
        ("top/../../evil.txt", "'..'"),
        ("..\\evil.txt", "'..'"),
        ("/tmp/metactl-test-evil.txt", "absolute path"),
        ("C:/evil.txt", "absolute path"),
    ],
)
def test_zip_refuses_escaping_names(tmp_path, target, member, reason):
    archive = make_zip(tmp_path / "crafted.zip", [("top/ok.txt", b"fine"), (member, b"evil")])
    assert_refused(archive, target, member, reason)
    assert not Path("/tmp/metactl-test-evil.txt").exists()


@pytest.mark.parametrize(
    ("mode", "reason"),
    [(stat.S_IFLNK | 0o777, "symbolic link"), (stat.S_IFCHR | 0o644, "device")],
)
def test_zip_refuses_links_and_devices(tmp_path, target, mode, reason):
    archive = zip_entry_with_mode(tmp_path / "crafted.zip", "top/link", mode, b"/etc/passwd")
    assert_refused(archive, target, "top/link", reason)


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (("../evil.txt", b"evil"), "'..'"),
        (("/tmp/metactl-test-evil.txt", b"evil"), "absolute path"),
        (tar_entry("top/link", tarfile.SYMTYPE, "/etc"), "symbolic link to /etc"),
        (tar_entry("top/up", tarfile.SYMTYPE, ".."), "symbolic link"),
        (tar_entry("top/hard", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
        (tar_entry("top/tty", tarfile.CHRTYPE), "device"),
        (tar_entry("top/disk", tarfile.BLKTYPE), "device"),
        (tar_entry("top/pipe", tarfile.FIFOTYPE), "special file"),
    ],
    ids=["parent", "absolute", "symlink", "symlink-up", "hardlink", "char", "block", "fifo"],
)
def test_tar_refuses_unsafe_members(tmp_path, target, member, reason):
    # A safe member first: it is already written when the unsafe one is met.
    archive = make_tar(tmp_path / "crafted.tar.gz", [("top/ok.txt", b"fine"), member])
    name = member.name if isinstance(member, tarfile.TarInfo) else member[0]
    assert_refused(archive, target, name, reason)
    assert not Path("/tmp/metactl-test-evil.txt").exists()


def test_tar_refuses_writing_through_a_symlink(tmp_path, target):
    archive = make_tar(tmp_path / "crafted.tar", [
        tar_entry("escape", tarfile.SYMTYPE, str(tmp_path)), ("escape/evil.txt", b"evil"),
    ])
    assert_refused(archive, target, "escape", "symbolic link")


def assert_corrupt(archive: Path, target: Path) -> None:
    with pytest.raises(DataError, match="corrupt or truncated") as caught:
        safe_extract(archive, target)
    assert "fetch it again" in caught.value.hint
    assert everything_under(target) == []


def test_zip_with_bad_crc(tmp_path, target):
    payload = b"omniglot" * 1000
    archive = make_zip(tmp_path / "bad.zip", [("top/a.txt", b"fine"), ("top/b.txt", payload)],
                       compression=zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    data[data.index(payload) + 10] ^= 0xFF
    archive.write_bytes(bytes(data))
    assert_corrupt(archive, target)


def test_truncated_zip(tmp_path, target):
    archive = make_zip(tmp_path / "cut.zip", [("top/a.txt", os.urandom(50_000))])
    archive.write_bytes(archive.read_bytes()[:30_000])
    assert_corrupt(archive, target)


@pytest.mark.parametrize("suffix", [".tar.xz", ".tar.gz"])
def test_truncated_compressed_tar(tmp_path, target, suffix):
    archive = make_tar(tmp_path / f"cut{suffix}", [
        ("images/a.jpg", os.urandom(100_000)), ("images/b.jpg", os.urandom(100_000)),
    ])
    archive.write_bytes(archive.read_bytes()[:150_000])
    assert_corrupt(archive, target)


def test_not_an_archive(tmp_path, target):
    archive = tmp_path / "noise.tar.xz"
    archive.write_bytes(os.urandom(1000))
    assert_corrupt(archive, target)


def test_unknown_archive_type(tmp_path, target):
    archive = tmp_path / "data.rar"
    archive.write_bytes(b"Rar!")
    with pytest.raises(DataError, match="unknown archive type"):
        safe_extract(archive, target)


def test_missing_archive(tmp_path, target):
    with pytest.raises(DataError, match="does not exist"):
        safe_extract(tmp_path / "absent.zip", target)
