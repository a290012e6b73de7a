"""Fixtures for the data tests: a loopback HTTP file server with knobs to inject failures."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from testsupport import SHARED_DATASETS

# The offline mirror of genuine dataset files; tests that need it skip without it.

OMNIGLOT_FILES = (
    "splits/vinyals/val.txt",
    "images_background_small1.zip",
    "MD5SUMS",
    "SHA256SUMS",
)


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]

    @property
    def range(self) -> str | None:
        return self.headers.get("Range")


class FileServer:
    """Serves the files under ``root`` on 127.0.0.1, honouring ``Range: bytes=N-``.

    Knobs, read on every request, so a test may set them at any time:
        fail_first: the next N requests answer ``fail_status`` (503 unless changed).
        drops: the next N file responses send ``drop_after`` body bytes, then hang up.
        ignore_range: answer 200 with the whole file even when a range is asked for.
        wrong_range: answer a range request with 206 starting at byte 0.
        delay: seconds to wait before answering (to provoke client timeouts).
        statuses: a fixed status for given paths, e.g. ``{"/omniglot/a.zip": 403}``.
    Every request is recorded in ``requests``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fail_first = 0
        self.fail_status = 503
        self.drops = 0
        self.drop_after = 0
        self.ignore_range = False
        self.wrong_range = False
        self.delay = 0.0
        self.statuses: dict[str, int] = {}
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"file_server": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url_for(self, relative: str) -> str:
        return f"{self.url}/{urllib.parse.quote(relative)}"

    def add(self, relative: str, data: bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def copy(self, source: Path, relative: str) -> Path:
        return self.add(relative, Path(source).read_bytes())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(handler.path).path)
        failing, dropping = self._record(path, dict(handler.headers))
        time.sleep(self.delay)
        status = self.fail_status if failing else self.statuses.get(path)
        file = self.root / path.lstrip("/")
        if status is None and not file.is_file():
            status = 404
        if status is not None:
            return _send(handler, status, {}, b"")
        self._send_file(handler, file.read_bytes(), dropping)

    def _record(self, path: str, headers: dict[str, str]) -> tuple[bool, bool]:
        with self._lock:
            self.requests.append(RecordedRequest(path, headers))
            failing, dropping = self.fail_first > 0, self.drops > 0
            self.fail_first -= failing
            if not failing:
                self.drops -= dropping
            return failing, dropping and not failing

    def _send_file(self, handler: BaseHTTPRequestHandler, data: bytes, dropping: bool) -> None:
        match = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range", ""))
        if match is None or self.ignore_range:
            body = data
            status, headers = 200, {}
        elif int(match.group(1)) >= len(data):
            return _send(handler, 416, {"Content-Range": f"bytes */{len(data)}"}, b"")
        else:
            start = 0 if self.wrong_range else int(match.group(1))
            body = data[start:]
            status = 206
            headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        headers["Content-Length"] = str(len(body))
        _send(handler, status, headers, body[: self.drop_after] if dropping else body)


class _Handler(BaseHTTPRequestHandler):
    file_server: FileServer

    def do_GET(self) -> None:
        self.file_server.answer(self)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _send(handler: BaseHTTPRequestHandler, status: int, headers: dict, body: bytes) -> None:
    handler.send_response(status)
    headers.setdefault("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    # A body shorter than Content-Length followed by the close (HTTP/1.0) is a dropped
    # connection as the client sees it.
    handler.wfile.write(body)


@pytest.fixture
def file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    """An empty loopback file server; add files with ``add``/``copy``."""
    server = FileServer(tmp_path_factory.mktemp("served"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def omniglot_mirror_folder() -> Path:
    """The shared offline mirror's omniglot folder (skips the test without it)."""
    folder = SHARED_DATASETS / "omniglot"
    if not folder.is_dir():
        pytest.skip(f"the offline dataset mirror is not at {SHARED_DATASETS}")
    return folder


@pytest.fixture
def omniglot_server(file_server: FileServer, omniglot_mirror_folder: Path) -> FileServer:
    """A file server laid out as a mirror, with a few genuine Omniglot files under omniglot/."""
    for relative in OMNIGLOT_FILES:
        file_server.copy(omniglot_mirror_folder / relative, f"omniglot/{relative}")
    return file_server


@pytest.fixture
def refused_url() -> str:
    """A loopback URL where nothing listens, so connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/omniglot/file.zip"
