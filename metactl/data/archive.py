"""Unpack downloaded archives without letting any member escape the target folder.

Everything is extracted into a hidden staging folder inside the target first; the top-level
entries are moved into place only once the whole archive has extracted cleanly, so a
crafted or corrupt archive leaves nothing behind. A staging folder that a killed process left
(its name holds the process id) is removed by the next extraction into the same target.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PureWindowsPath
from typing import IO

from metactl.errors import DataError
from metactl.fileio import describe_os_error, disk_hint, process_is_alive

ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
STAGING_PREFIX = ".metactl-extract-"
STAGING_NAME = re.compile(rf"^{re.escape(STAGING_PREFIX)}(?P<pid>\d+)-")
UNSAFE_HINT = "delete the file and fetch it again; it may be corrupt or crafted"
CORRUPT_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    lzma.LZMAError,
    zlib.error,
    gzip.BadGzipFile,
    EOFError,
    OSError,
)
CHUNK_SIZE = 1 << 20


def safe_extract(archive: Path, target: Path, *, merge: bool = False,
                 content_sha256: str | None = None) -> list[str]:
    """Extract a .zip or .tar(.gz/.xz/.bz2) archive into ``target``.

    Args:
        archive: the archive file.
        target: the folder to extract into; created if needed.
        merge: merge folders that already exist in ``target`` file by file (for datasets
            split over several archives with the same top folder) instead of replacing them.
        content_sha256: when given, the extracted files must have this digest (see
            :func:`content_digest`), or nothing is placed in ``target``.

    Returns:
        The names of the top-level entries extracted, sorted.

    Raises:
        DataError: the archive is missing, of an unknown type, corrupt, or holds a member
            that is unsafe (absolute path, ``..``, link, device file, or outside ``target``).
    """
    archive, target = Path(archive), Path(target)
    extract = _extractor(archive)
    try:
        target.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(target)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-",
                                        dir=target)).resolve()
    except OSError as error:
        raise _write_error(archive, target, error) from None
    try:
        content = staging / "content"
        content.mkdir()
        digests: dict[str, str] = {}
        try:
            extract(archive, content, digests)
        except OSError as error:
            if error.errno is None:  # gzip's BadGzipFile: the archive, not the disk
                raise _corrupt(archive, error) from None
            raise _write_error(archive, target, error) from None
        except CORRUPT_ERRORS as error:
            raise _corrupt(archive, error) from None
        if content_sha256 is not None:
            _check_content(archive, digests, content_sha256)
        names = sorted(entry.name for entry in content.iterdir())
        for name in names:
            try:
                _place(content / name, target / name, staging / "replaced", merge)
            except OSError as error:
                raise _write_error(archive, target / name, error) from None
        return names
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def tree_digest(root: Path, folders: tuple[str, ...]) -> str:
    """SHA-256 of the ``sha256sum`` listing of every file under ``root/folder`` (for each of
    ``folders``), sorted by relative path: what
    ``find FOLDERS -type f | LC_ALL=C sort | xargs sha256sum | sha256sum`` prints in ``root``.
    It vouches for the names and the bytes of an extraction, whatever archive it came from."""
    root = Path(root)
    files = sorted(path.relative_to(root).as_posix() for folder in folders
                   for path in (root / folder).rglob("*") if path.is_file())
    listing = hashlib.sha256()
    for relative in files:
        digest = hashlib.sha256((root / relative).read_bytes()).hexdigest()
        listing.update(f"{digest}  {relative}\n".encode())
    return listing.hexdigest()


def content_digest(digests: dict[str, str]) -> str:
    """SHA-256 of the ``sha256sum`` listing of files, sorted by relative path: in the folder
    they were extracted to, ``find TOP -type f | LC_ALL=C sort | xargs sha256sum | sha256sum``.
    It vouches for the names and the bytes, whichever archive they came from.

    Args:
        digests: the SHA-256 (hex) of each file, by POSIX path relative to the target.
    """
    listing = "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))
    return hashlib.sha256(listing.encode()).hexdigest()


def _check_content(archive: Path, digests: dict[str, str], expected: str) -> None:
    actual = content_digest(digests)
    if actual != expected.lower():
        raise DataError(f"the files in {archive} are not the official ones (content sha256 "
                        f"{actual[:16]}..., expected {expected.lower()[:16]}...); the archive "
                        "checksum a mirror vouched for does not make its content official",
                        "fetch it from the official host or another mirror with `metactl data "
                        "fetch <dataset> --force`")


def remove_stale_staging(target: Path) -> list[Path]:
    """Delete the staging folders in ``target`` of extractions whose process is gone."""
    removed = []
    for path in target.glob(f"{STAGING_PREFIX}*"):
        match = STAGING_NAME.match(path.name)
        if match and path.is_dir() and not process_is_alive(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _corrupt(archive: Path, error: BaseException) -> DataError:
    return DataError(f"archive {archive} is corrupt or truncated ({error})", UNSAFE_HINT)


def _extractor(archive: Path):
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist", "fetch the dataset again")
    name = archive.name.lower()
    if name.endswith(ZIP_SUFFIXES):
        return _extract_zip
    if name.endswith(TAR_SUFFIXES):
        return _extract_tar
    raise DataError(
        f"cannot extract {archive}: unknown archive type",
        f"metactl extracts {', '.join(ZIP_SUFFIXES + TAR_SUFFIXES)} files",
    )


def _extract_zip(archive: Path, staging: Path, digests: dict[str, str]) -> None:
    with zipfile.ZipFile(archive) as bundle:
        members = bundle.infolist()
        # The central directory lists every member up front, so refuse before writing anything.
        paths = [_member_path(archive, info.filename, staging) for info in members]
        for info in members:
            _check_zip_type(archive, info)
        for info, path in zip(members, paths, strict=True):
            if path is None:
                continue
            if info.is_dir():
                _make_folder(archive, path)
            else:
                _write_member(archive, bundle.open(info), path, staging, digests)


def _check_zip_type(archive: Path, info: zipfile.ZipInfo) -> None:
    # Unix zips keep st_mode in the high bits; many writers set only the permission bits.
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise _unsafe(archive, info.filename, "a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _unsafe(archive, info.filename, "a device or special file")


def _extract_tar(archive: Path, staging: Path, digests: dict[str, str]) -> None:
    # Stream mode reads a compressed tar once; a member is checked before it is written.
    with tarfile.open(archive, mode="r|*") as bundle:
        for member in bundle:
            path = _member_path(archive, member.name, staging)
            _check_tar_type(archive, member)
            if path is None:
                continue
            if member.isdir():
                _make_folder(archive, path)
            else:
                reader = bundle.extractfile(member)
                assert reader is not None  # a regular file always has content
                _write_member(archive, reader, path, staging, digests)


def _check_tar_type(archive: Path, member: tarfile.TarInfo) -> None:
    if member.issym():
        raise _unsafe(archive, member.name, f"a symbolic link to {member.linkname}")
    if member.islnk():
        raise _unsafe(archive, member.name, f"a hard link to {member.linkname}")
    if not (member.isfile() or member.isdir()):
        raise _unsafe(archive, member.name, "a device or special file")


def _member_path(archive: Path, name: str, staging: Path) -> Path | None:
    """Where a member goes inside ``staging``; None for the archive's root folder itself."""
    if "\x00" in name:
        raise _unsafe(archive, name, "a NUL byte in its name")
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise _unsafe(archive, name, "an absolute path")
    parts = [part for part in re.split(r"[/\\]", name) if part not in ("", ".")]
    if ".." in parts:
        raise _unsafe(archive, name, "a '..' component")
    if not parts:
        return None
    path = staging.joinpath(*parts)
    # Links are refused, so nothing on disk can redirect a path: a lexical check is enough.
    if os.path.commonpath([staging, os.path.normpath(path)]) != str(staging):
        raise _unsafe(archive, name, "it resolves outside the target")
    return path


def _make_folder(archive: Path, path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _write_error(archive, path, error) from None


def _write_member(archive: Path, reader: IO[bytes], path: Path, staging: Path,
                  digests: dict[str, str]) -> None:
    """Copy one member to ``path``, recording its SHA-256 under its path in ``staging``."""
    _make_folder(archive, path.parent)
    try:
        writer = path.open("wb")
    except OSError as error:
        raise _write_error(archive, path, error) from None
    digest = hashlib.sha256()
    with reader, writer:
        for chunk in iter(lambda: reader.read(CHUNK_SIZE), b""):
            digest.update(chunk)
            try:
                writer.write(chunk)
            except OSError as error:
                raise _write_error(archive, path, error) from None
    digests[path.relative_to(staging).as_posix()] = digest.hexdigest()


def _place(new: Path, destination: Path, trash: Path, merge: bool) -> None:
    """Move ``new`` to ``destination``, merging or replacing what is there."""
    if merge and new.is_dir() and destination.is_dir() and not destination.is_symlink():
        for child in new.iterdir():
            _place(child, destination / child.name, trash, merge)
        return
    if destination.exists() or destination.is_symlink():
        trash.mkdir(exist_ok=True)
        # A fresh folder per replaced entry: several may share a name when merging.
        os.replace(destination, Path(tempfile.mkdtemp(dir=trash)) / destination.name)
    os.replace(new, destination)


def _unsafe(archive: Path, member: str, reason: str) -> DataError:
    message = f"archive {archive} contains an unsafe member {member!r} ({reason})"
    return DataError(message, UNSAFE_HINT)


def _write_error(archive: Path, path: Path, error: OSError) -> DataError:
    return DataError(
        f"cannot extract {archive.name} into {path}: {describe_os_error(error)}",
        disk_hint(error, "check free space and permissions in the data root "
                         "(--root / METACTL_HOME)"),
    )
