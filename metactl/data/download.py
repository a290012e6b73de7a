"""Fetch one source file from its official host or a mirror: streamed, verified, resumable.

A file is written to ``<destination>.part`` and renamed to ``<destination>`` only once its
checksums match, so the destination name never holds a half-written or unverified file.
A mirror is a base URL (``http://``, ``https://``, ``file://``) or a local folder laid out as
``<mirror>/<dataset>/<source path>``, optionally with ``MD5SUMS`` / ``SHA256SUMS`` manifests.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import posixpath
import re
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, Literal

import requests
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from urllib3.exceptions import ReadTimeoutError

from metactl import __version__
from metactl.data.cards import Source
from metactl.errors import DataError, DownloadError, UsageError
from metactl.fileio import describe_os_error, disk_hint

Verdict = Literal["official", "mirror"]

CHUNK_SIZE = 1 << 16
MANIFESTS = {"md5": "MD5SUMS", "sha256": "SHA256SUMS"}
DIGEST_LENGTHS = {"md5": 32, "sha256": 64}
URL_SCHEMES = ("http://", "https://", "file://")
MAX_RETRY_DELAY = 60.0
MIRROR_HINT = "check your network or the mirror (--mirror / METACTL_MIRROR)"


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch_file` did; ``message`` is meant for the user."""

    path: Path
    verified_against: Verdict
    downloaded: bool
    message: str


def resolve(source: Source, dataset: str, mirror: str | None) -> str:
    """Where to fetch ``source`` from: its official URL, or ``<mirror>/<dataset>/<path>``."""
    if not mirror:
        return source.url
    return _mirror_location(mirror, dataset, source.path)


def mirror_manifest(
    dataset: str, mirror: str, session: requests.Session | None = None, timeout: float = 30
) -> dict[str, dict[str, str]]:
    """The mirror's checksums for ``dataset``, by relative path: ``{"md5": ..., "sha256": ...}``.

    Reads ``<mirror>/<dataset>/MD5SUMS`` and ``SHA256SUMS``; a manifest that is missing
    counts as empty.
    """
    entries: dict[str, dict[str, str]] = {}
    with _session_scope(session) as active:
        for algorithm, name in MANIFESTS.items():
            text = _read_text(_mirror_location(mirror, dataset, name), active, timeout)
            for relative, digest in _parse_manifest(text, algorithm):
                entries.setdefault(relative, {})[algorithm] = digest
    return entries


def fetch_file(
    source: Source,
    dataset: str,
    destination: Path,
    *,
    mirror: str | None = None,
    force: bool = False,
    session: requests.Session | None = None,
    progress: Progress | None = None,
    retries: int = 5,
    backoff: float = 0.5,
    timeout: float = 30,
) -> FetchResult:
    """Make ``destination`` hold ``source``, verified, downloading it only when needed.

    Args:
        source: the file to fetch, with its official checksums.
        dataset: the dataset's name; a mirror keeps the file under ``<mirror>/<dataset>/``.
        destination: where the verified file ends up.
        mirror: a base URL or local folder that replaces the official host.
        force: download again even when ``destination`` already verifies.
        session: a ``requests`` session to reuse; one is made when omitted.
        progress: a shared rich progress display; when omitted, one is made that shows only
            on a terminal. Pass ``Progress(disable=True)`` to hide it.
        retries: further attempts after a connection error, a timeout, a 5xx or a 429.
        backoff: the first delay between attempts in seconds; it doubles each time.
        timeout: seconds to wait for the server to connect or send data.

    Raises:
        DownloadError: the file cannot be fetched or matches neither the official checksums
            nor the mirror's manifest.
    """
    destination = Path(destination)
    location = resolve(source, dataset, mirror)
    with _session_scope(session) as active:
        expected = _Expected(source, dataset, mirror, active, timeout)
        if not force and destination.is_file():
            verdict = expected.verdict(file_checksums(destination))
            if verdict is not None:
                return FetchResult(destination, verdict, False, _present_message(source, verdict))
        partial = destination.with_name(destination.name + ".part")
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            if force:
                partial.unlink(missing_ok=True)
            with _progress_task(progress, source.path) as (display, task):
                transfer = _Transfer(active, display, task, retries, backoff, timeout)
                actual, verdict = _download_verified(transfer, location, partial, expected)
            os.replace(partial, destination)
        except OSError as error:
            raise DataError(
                f"cannot write {partial}: {describe_os_error(error)}",
                disk_hint(error, "check free space and permissions in the data root "
                                 "(--root / METACTL_HOME)"),
            ) from None
    message = _downloaded_message(source, verdict, actual, destination.stat().st_size)
    return FetchResult(destination, verdict, True, message)


def file_checksums(path: Path) -> dict[str, str]:
    """The md5 and sha256 hex digests of a file."""
    return _hashes_of(Path(path)).hexdigests()


def download_progress(console: Console | None = None) -> Progress:
    """A progress display with size and speed, shown only when the console is a terminal."""
    console = console or Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )


class _Hashes:
    def __init__(self) -> None:
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sha256 = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self.md5.update(chunk)
        self.sha256.update(chunk)

    def hexdigests(self) -> dict[str, str]:
        return {"md5": self.md5.hexdigest(), "sha256": self.sha256.hexdigest()}


class _Expected:
    """What a file must hash to: the card's checksums, else the mirror manifest's entry."""

    def __init__(
        self,
        source: Source,
        dataset: str,
        mirror: str | None,
        session: requests.Session,
        timeout: float,
    ) -> None:
        self.source = source
        self.dataset = dataset
        self.mirror = mirror
        self.session = session
        self.timeout = timeout

    @cached_property
    def mirror_entry(self) -> dict[str, str]:
        # Read only when the official checksums fail, and at most once per fetch.
        if not self.mirror:
            return {}
        manifest = mirror_manifest(self.dataset, self.mirror, self.session, self.timeout)
        return manifest.get(_normalise(self.source.path), {})

    def verdict(self, actual: dict[str, str]) -> Verdict | None:
        if _matches(actual, self.source.checksums):
            return "official"
        if self.mirror and _matches(actual, self.mirror_entry):
            return "mirror"
        return None


def _matches(actual: dict[str, str], expected: dict[str, str]) -> bool:
    return bool(expected) and all(
        actual.get(name) == value.lower() for name, value in expected.items()
    )


def _download_verified(
    transfer: _Transfer, location: str, partial: Path, expected: _Expected
) -> tuple[dict[str, str], Verdict]:
    actual = transfer.run(location, partial)
    verdict = expected.verdict(actual)
    if verdict is None and transfer.resumed:
        # The kept .part may itself have been corrupt; one fresh download settles it.
        partial.unlink(missing_ok=True)
        actual = transfer.run(location, partial)
        verdict = expected.verdict(actual)
    if verdict is None:
        partial.unlink(missing_ok=True)
        raise _mismatch_error(location, actual, expected)
    return actual, verdict


class _Retryable(Exception):
    """A failure worth another attempt: a connection problem, a timeout, a 5xx or a 429."""

    def __init__(self, reason: str, *, reachable: bool, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reachable = reachable
        self.delay = delay

    def final_error(self, url: str, attempts: int) -> DownloadError:
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        if not self.reachable:
            return DownloadError(f"cannot reach {url}: {self.reason}{tries}", MIRROR_HINT)
        return DownloadError(
            f"cannot download {url}: {self.reason}{tries}",
            "the server may be busy; try again later or use a mirror (--mirror / METACTL_MIRROR)",
        )


@dataclass
class _Transfer:
    """Copies one location into a ``.part`` file, hashing as it goes."""

    session: requests.Session
    progress: Progress
    task: TaskID
    retries: int
    backoff: float
    timeout: float
    resumed: bool = field(default=False, init=False)

    def run(self, location: str, partial: Path) -> dict[str, str]:
        local = _local_path(location)
        if local is not None:
            return self.copy(local, partial)
        return self.download(location, partial)

    def copy(self, origin: Path, partial: Path) -> dict[str, str]:
        if not origin.is_file():
            raise DownloadError(
                f"cannot copy {origin}: the file does not exist",
                "check the mirror folder (--mirror / METACTL_MIRROR)",
            )
        hashes = _Hashes()
        self.progress.update(self.task, total=origin.stat().st_size, completed=0)
        try:
            reader = origin.open("rb")
        except OSError as error:
            raise DownloadError(f"cannot read {origin}: {error.strerror}", MIRROR_HINT) from None
        with reader, partial.open("wb") as writer:
            self._pump(iter(lambda: reader.read(CHUNK_SIZE), b""), writer, hashes)
        return hashes.hexdigests()

    def download(self, url: str, partial: Path) -> dict[str, str]:
        failures = 0
        while True:
            try:
                return self._attempt(url, partial)
            except _Retryable as problem:
                failures += 1
                if failures > self.retries:
                    raise problem.final_error(url, failures) from None
                delay = problem.delay or self.backoff * 2 ** (failures - 1)
                time.sleep(min(delay, MAX_RETRY_DELAY))

    def _attempt(self, url: str, partial: Path) -> dict[str, str]:
        offset = partial.stat().st_size if partial.exists() else 0
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with _transport_errors(url):
            response = self.session.get(url, headers=headers, stream=True, timeout=self.timeout)
            with response:
                return self._receive(url, response, partial, offset)

    def _receive(
        self, url: str, response: requests.Response, partial: Path, offset: int
    ) -> dict[str, str]:
        if response.status_code == 416:
            if _range_total(response) == offset:
                return file_checksums(partial)
            partial.unlink()
            raise _Retryable("the server could not resume the download", reachable=True)
        _check_status(url, response)
        if offset and not _resumes(response, offset):
            if response.status_code == 206:
                partial.unlink()
                raise _Retryable("the server sent the wrong byte range", reachable=True)
            offset = 0
        self.resumed = self.resumed or offset > 0
        hashes = _hashes_of(partial) if offset else _Hashes()
        length = _content_length(response)
        total = offset + length if length is not None else None
        self.progress.update(self.task, total=total, completed=offset)
        with partial.open("ab" if offset else "wb") as writer:
            received = self._pump(response.iter_content(CHUNK_SIZE), writer, hashes)
        if length is not None and received < length:
            raise _Retryable("the connection dropped", reachable=True)
        return hashes.hexdigests()

    def _pump(self, chunks: Iterable[bytes], writer: BinaryIO, hashes: _Hashes) -> int:
        received = 0
        for chunk in chunks:
            writer.write(chunk)
            hashes.update(chunk)
            received += len(chunk)
            self.progress.advance(self.task, len(chunk))
        return received


@contextmanager
def _transport_errors(url: str) -> Iterator[None]:
    """Turn requests' exceptions into a retry or a one-line DownloadError."""
    try:
        yield
    except requests.exceptions.SSLError as error:
        raise DownloadError(
            f"cannot reach {url}: the secure connection failed ({_first_line(error)})",
            "check the system's certificates, or use a mirror (--mirror / METACTL_MIRROR)",
        ) from None
    except requests.exceptions.ChunkedEncodingError:
        raise _Retryable("the connection dropped", reachable=True) from None
    except (requests.ConnectionError, requests.Timeout) as error:
        raise _Retryable(_connection_reason(error), reachable=False) from None
    except requests.RequestException as error:
        raise DownloadError(f"cannot download {url}: {_first_line(error)}", MIRROR_HINT) from None


def _check_status(url: str, response: requests.Response) -> None:
    status = response.status_code
    answer = f"the server answered {status} {response.reason or ''}".rstrip()
    if status == 429 or status >= 500:
        raise _Retryable(answer, reachable=True, delay=_retry_after(response))
    if status >= 400:
        hint = "the file is not there; check the mirror (--mirror / METACTL_MIRROR)"
        if status in (401, 403):
            hint = "the server refused access; use a mirror (--mirror / METACTL_MIRROR)"
        raise DownloadError(f"cannot download {url}: {answer}", hint)


def _resumes(response: requests.Response, offset: int) -> bool:
    match = re.match(r"bytes\s+(\d+)-", response.headers.get("Content-Range", ""))
    return response.status_code == 206 and match is not None and int(match.group(1)) == offset


def _range_total(response: requests.Response) -> int | None:
    match = re.match(r"bytes\s+\*/(\d+)", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _content_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _retry_after(response: requests.Response) -> float | None:
    """Seconds the server asks to wait: ``Retry-After`` as a number or an HTTP date."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _hashes_of(path: Path) -> _Hashes:
    hashes = _Hashes()
    with path.open("rb") as reader:
        for chunk in iter(lambda: reader.read(CHUNK_SIZE), b""):
            hashes.update(chunk)
    return hashes


def _connection_reason(error: BaseException) -> str:
    causes = list(_causes(error))
    named = (
        (ConnectionRefusedError, "connection refused"),
        (socket.gaierror, "host not found"),
        (ConnectionResetError, "connection reset"),
        ((requests.Timeout, ReadTimeoutError, TimeoutError), "timed out"),
    )
    for kinds, reason in named:
        if any(isinstance(cause, kinds) for cause in causes):
            return reason
    system = [cause for cause in causes if type(cause).__module__ == "builtins"]
    for cause in system:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
    return "connection failed"


def _causes(error: BaseException) -> Iterator[BaseException]:
    """Every exception that ``error`` wraps: causes, contexts, urllib3 reasons and args."""
    pending, seen = [error], set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = (current.__cause__, current.__context__, getattr(current, "reason", None))
        pending.extend(item for item in (*linked, *current.args) if isinstance(item, BaseException))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextmanager
def _session_scope(session: requests.Session | None) -> Iterator[requests.Session]:
    if session is not None:
        yield session
        return
    with requests.Session() as own:
        own.headers["User-Agent"] = f"metactl/{__version__}"
        yield own


@contextmanager
def _progress_task(
    progress: Progress | None, description: str
) -> Iterator[tuple[Progress, TaskID]]:
    if progress is not None:
        yield progress, progress.add_task(description, total=None)
        return
    with download_progress() as own:
        yield own, own.add_task(description, total=None)


def _mirror_location(mirror: str, dataset: str, relative: str) -> str:
    if mirror.lower().startswith(URL_SCHEMES):
        return f"{mirror.rstrip('/')}/{urllib.parse.quote(dataset)}/{urllib.parse.quote(relative)}"
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", mirror):
        raise UsageError(
            f"mirror {mirror!r} uses an unsupported scheme",
            "use an http://, https:// or file:// URL, or a local folder",
        )
    return str(Path(mirror).expanduser() / dataset / relative)


def _local_path(location: str) -> Path | None:
    """The file a location names on this machine, or None for an http(s) URL."""
    lowered = location.lower()
    if lowered.startswith(("http://", "https://")):
        return None
    if lowered.startswith("file://"):
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(location).path))
    return Path(location)


def _read_text(location: str, session: requests.Session, timeout: float) -> str:
    """A small text file's content, or "" when it does not exist."""
    local = _local_path(location)
    if local is not None:
        return local.read_text(encoding="utf-8", errors="replace") if local.is_file() else ""
    try:
        with _transport_errors(location):
            response = session.get(location, timeout=timeout)
    except _Retryable as problem:
        raise problem.final_error(location, 1) from None
    return response.content.decode("utf-8", errors="replace") if response.ok else ""


def _parse_manifest(text: str, algorithm: str) -> Iterator[tuple[str, str]]:
    """(relative path, digest) pairs from ``md5sum``/``sha256sum`` output."""
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or parts[0].startswith("#"):
            continue
        digest, name = parts[0].lower(), parts[1].lstrip("*")
        if re.fullmatch(f"[0-9a-f]{{{DIGEST_LENGTHS[algorithm]}}}", digest):
            yield _normalise(name), digest


def _normalise(relative: str) -> str:
    return posixpath.normpath(relative.replace("\\", "/")).lstrip("/")


def _mismatch_error(location: str, actual: dict[str, str], expected: _Expected) -> DownloadError:
    source = expected.source
    algorithm = "sha256" if source.sha256 else "md5"
    message = (
        f"{source.path} from {location} does not match its checksum: expected {algorithm} "
        f"{source.checksums[algorithm].lower()}, got {actual[algorithm]}"
    )
    if expected.mirror_entry:
        listed = "; ".join(f"{name} {value}" for name, value in expected.mirror_entry.items())
        message += f"; the mirror's manifest lists {listed}"
    elif expected.mirror:
        message += "; the mirror's manifest has no entry for it"
    return DownloadError(
        message,
        "the bad download was deleted; run the command again, and if it still fails use "
        "another mirror (--mirror / METACTL_MIRROR)",
    )


def _present_message(source: Source, verdict: Verdict) -> str:
    if verdict == "official":
        return f"{source.path}: already present, matches the official checksum"
    return (
        f"{source.path}: already present; it differs from the official file and matches "
        "the mirror's checksum manifest"
    )


def _downloaded_message(
    source: Source, verdict: Verdict, actual: dict[str, str], size: int
) -> str:
    if verdict == "official":
        return f"{source.path}: fetched {size:,} bytes, matches the official checksum"
    algorithm = next(iter(source.checksums))
    return (
        f"{source.path}: the mirror's file differs from the official one ({algorithm} "
        f"{actual[algorithm]} instead of {source.checksums[algorithm].lower()}); "
        "it was verified against the mirror's checksum manifest instead"
    )
