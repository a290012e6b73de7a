"""Retries of a download: exponential backoff and the server's Retry-After, on a fake clock."""

from __future__ import annotations

import email.utils
import hashlib

import pytest

from metactl.data import download
from metactl.data.cards import Source
from metactl.data.download import MAX_RETRY_DELAY, fetch_file
from metactl.errors import DownloadError

BODY = b"the file's bytes\n" * 64
SOURCE = Source(path="file.bin", url="https://example.org/file.bin",
                sha256=hashlib.sha256(BODY).hexdigest())


class FakeClock:
    """Stands in for ``time``: ``sleep`` records the delay and moves the clock on."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Answer:
    """A ``requests`` response: a status, headers, and the body for a 200."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.reason = "OK" if status == 200 else "Service Unavailable"
        body = BODY if status == 200 else b""
        self.headers = {"Content-Length": str(len(body)), **(headers or {})}
        self._body = body

    def iter_content(self, size: int):
        yield self._body

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class ScriptedSession:
    """Answers each GET with the next of ``answers``."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = list(answers)
        self.calls = 0

    def get(self, url, headers=None, stream=False, timeout=None):
        self.calls += 1
        return self.answers.pop(0)


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(download, "time", fake)
    return fake


def fetch(tmp_path, answers: list[Answer], **options):
    session = ScriptedSession(answers)
    result = fetch_file(SOURCE, "example", tmp_path / "file.bin", session=session,
                        timeout=5, **options)
    return result, session


def test_backoff_doubles_between_attempts(tmp_path, clock):
    result, session = fetch(tmp_path, [Answer(503), Answer(503), Answer(500), Answer(200)],
                            retries=5, backoff=0.5)
    assert result.downloaded and (tmp_path / "file.bin").read_bytes() == BODY
    assert clock.sleeps == [0.5, 1.0, 2.0]
    assert session.calls == 4


def test_retry_after_in_seconds_replaces_the_backoff(tmp_path, clock):
    fetch(tmp_path, [Answer(429, {"Retry-After": "7"}), Answer(503), Answer(200)],
          retries=5, backoff=0.5)
    assert clock.sleeps == [7.0, 1.0]


def test_retry_after_as_a_date_waits_until_then(tmp_path, clock):
    later = email.utils.formatdate(clock.now + 42, usegmt=True)
    fetch(tmp_path, [Answer(503, {"Retry-After": later}), Answer(200)], retries=5, backoff=0.5)
    assert clock.sleeps == [pytest.approx(42.0)]


def test_a_long_retry_after_is_capped(tmp_path, clock):
    fetch(tmp_path, [Answer(503, {"Retry-After": "86400"}), Answer(200)], retries=5,
          backoff=0.5)
    assert clock.sleeps == [MAX_RETRY_DELAY]


def test_an_unreadable_retry_after_falls_back_to_the_backoff(tmp_path, clock):
    fetch(tmp_path, [Answer(503, {"Retry-After": "soon"}), Answer(200)], retries=5,
          backoff=0.25)
    assert clock.sleeps == [0.25]


def test_giving_up_after_the_retries_says_how_often_it_tried(tmp_path, clock):
    with pytest.raises(DownloadError, match=r"answered 503 .*\(3 attempts\)"):
        fetch(tmp_path, [Answer(503)] * 3, retries=2, backoff=1.0)
    assert clock.sleeps == [1.0, 2.0]
    assert list(tmp_path.iterdir()) == []
