"""fetch_file against a loopback HTTP server and local mirrors, with genuine Omniglot files."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from rich.console import Console

from metactl.data.cards import Source, load_card
from metactl.data.download import (
    download_progress,
    fetch_file,
    file_checksums,
    mirror_manifest,
    resolve,
)
from metactl.errors import DownloadError, UsageError

CARD_FILE = Path(__file__).parents[2] / "datasets" / "omniglot.yaml"
VAL = Source(
    path="splits/vinyals/val.txt",
    url="https://example.invalid/splits/vinyals/val.txt",
    md5="78c535fa427b12b6596908376a0b3f34",
    sha256="11f99e54faee3e26f53d3231c1cceac5bf7b8730e9be31cb6dab256551dc0c1a",
    size=21312,
)
SMALL = Source(
    path="images_background_small1.zip",
    url="https://example.invalid/images_background_small1.zip",
    md5="e704a628b5459e08445c13499850abc4",
    sha256="f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
)
WRONG_MD5 = "0" * 32
FAST = {"backoff": 0, "timeout": 5}


def served(server, source: Source, **changes) -> Source:
    """``source`` with its official URL pointing at the loopback server's mirror layout."""
    fields = {**source.__dict__, "url": server.url_for(f"omniglot/{source.path}"), **changes}
    return Source(**fields)


def genuine(folder: Path, source: Source) -> bytes:
    return (folder / source.path).read_bytes()


def leftovers(destination: Path) -> list[Path]:
    return [path for path in (destination, destination.with_name(destination.name + ".part"))
            if path.exists()]


def test_resolve_official_url_without_mirror():
    assert resolve(VAL, "omniglot", None) == VAL.url


@pytest.mark.parametrize(
    ("mirror", "expected"),
    [
        ("http://mirror.test/data/", "http://mirror.test/data/omniglot/splits/vinyals/val.txt"),
        ("https://mirror.test", "https://mirror.test/omniglot/splits/vinyals/val.txt"),
        ("file:///srv/data", "file:///srv/data/omniglot/splits/vinyals/val.txt"),
        ("/srv/data", "/srv/data/omniglot/splits/vinyals/val.txt"),
    ],
)
def test_resolve_mirror(mirror, expected):
    assert resolve(VAL, "omniglot", mirror) == expected


def test_resolve_refuses_unsupported_scheme():
    with pytest.raises(UsageError, match="unsupported scheme"):
        resolve(VAL, "omniglot", "ftp://mirror.test")


def test_mirror_manifest_reads_local_manifests(omniglot_mirror_folder):
    manifest = mirror_manifest("omniglot", str(omniglot_mirror_folder.parent))
    assert manifest[VAL.path] == {"md5": VAL.md5, "sha256": VAL.sha256}
    assert manifest[SMALL.path] == {"md5": SMALL.md5, "sha256": SMALL.sha256}


def test_mirror_manifest_missing_is_empty(tmp_path):
    assert mirror_manifest("omniglot", str(tmp_path)) == {}


def test_mirror_manifest_normalises_paths(tmp_path):
    folder = tmp_path / "omniglot"
    folder.mkdir()
    (folder / "MD5SUMS").write_text(f"{'A' * 32} *./splits/x.txt\n# comment\nnot a line\n")
    assert mirror_manifest("omniglot", str(tmp_path)) == {"splits/x.txt": {"md5": "a" * 32}}


@pytest.mark.network
def test_mirror_manifest_over_http(omniglot_server):
    manifest = mirror_manifest("omniglot", omniglot_server.url)
    assert manifest[VAL.path]["sha256"] == VAL.sha256


@pytest.mark.network
def test_mirror_manifest_missing_over_http(file_server):
    assert mirror_manifest("omniglot", file_server.url) == {}


@pytest.mark.network
def test_fetch_verifies_official_checksum(omniglot_server, omniglot_mirror_folder, tmp_path):
    destination = tmp_path / "downloads" / VAL.path
    result = fetch_file(served(omniglot_server, VAL), "omniglot", destination, **FAST)
    assert (result.verified_against, result.downloaded) == ("official", True)
    assert destination.read_bytes() == genuine(omniglot_mirror_folder, VAL)
    assert leftovers(destination) == [destination]
    assert omniglot_server.requests[0].headers["Accept-Encoding"] == "identity"


@pytest.mark.network
def test_fetch_accepts_mirror_manifest_and_says_so(omniglot_server, tmp_path):
    source = Source(path=SMALL.path, url=SMALL.url, md5=WRONG_MD5)
    destination = tmp_path / SMALL.path
    result = fetch_file(source, "omniglot", destination, mirror=omniglot_server.url, **FAST)
    assert (result.verified_against, result.downloaded) == ("mirror", True)
    assert "differs from the official" in result.message
    assert "mirror's checksum manifest" in result.message
    assert file_checksums(destination)["md5"] == SMALL.md5


@pytest.mark.network
@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_fetch_rejects_file_matching_neither(omniglot_server, omniglot_mirror_folder, tmp_path,
                                             damage):
    data = bytearray(genuine(omniglot_mirror_folder, VAL))
    if damage == "flipped":
        data[100] ^= 0xFF
    else:
        del data[len(data) // 2:]
    omniglot_server.add(f"omniglot/{VAL.path}", bytes(data))
    destination = tmp_path / VAL.path
    with pytest.raises(DownloadError) as caught:
        fetch_file(VAL, "omniglot", destination, mirror=omniglot_server.url, **FAST)
    message = caught.value.message
    assert VAL.path in message and VAL.sha256 in message
    assert hashlib.sha256(data).hexdigest() in message
    assert "the mirror's manifest lists" in message
    assert "again" in caught.value.hint
    assert leftovers(destination) == []


@pytest.mark.network
def test_fetch_retries_after_server_errors(omniglot_server, tmp_path):
    omniglot_server.fail_first = 2
    destination = tmp_path / VAL.path
    result = fetch_file(served(omniglot_server, VAL), "omniglot", destination, **FAST)
    assert result.verified_against == "official"
    assert len(omniglot_server.requests) == 3


@pytest.mark.network
@pytest.mark.parametrize("status", [503, 429])
def test_fetch_gives_up_after_retries(omniglot_server, tmp_path, status):
    omniglot_server.fail_first = 100
    omniglot_server.fail_status = status
    destination = tmp_path / VAL.path
    with pytest.raises(DownloadError, match=f"answered {status}.*3 attempts"):
        fetch_file(served(omniglot_server, VAL), "omniglot", destination, retries=2, **FAST)
    assert len(omniglot_server.requests) == 3
    assert leftovers(destination) == []


@pytest.mark.network
def test_fetch_resumes_partial_download(omniglot_server, omniglot_mirror_folder, tmp_path):
    data = genuine(omniglot_mirror_folder, SMALL)
    destination = tmp_path / SMALL.path
    destination.with_name(destination.name + ".part").write_bytes(data[:500_000])
    result = fetch_file(served(omniglot_server, SMALL), "omniglot", destination, **FAST)
    assert result.downloaded and destination.read_bytes() == data
    assert [request.range for request in omniglot_server.requests] == ["bytes=500000-"]


@pytest.mark.network
@pytest.mark.parametrize("knob", ["ignore_range", "wrong_range"])
def test_fetch_restarts_when_server_does_not_resume(omniglot_server, omniglot_mirror_folder,
                                                    tmp_path, knob):
    setattr(omniglot_server, knob, True)
    data = genuine(omniglot_mirror_folder, SMALL)
    destination = tmp_path / SMALL.path
    destination.with_name(destination.name + ".part").write_bytes(data[:500_000])
    fetch_file(served(omniglot_server, SMALL), "omniglot", destination, **FAST)
    assert destination.read_bytes() == data
    assert omniglot_server.requests[0].range == "bytes=500000-"


@pytest.mark.network
def test_fetch_discards_corrupt_partial(omniglot_server, omniglot_mirror_folder, tmp_path):
    data = genuine(omniglot_mirror_folder, SMALL)
    destination = tmp_path / SMALL.path
    destination.with_name(destination.name + ".part").write_bytes(b"\0" * 500_000)
    result = fetch_file(served(omniglot_server, SMALL), "omniglot", destination, **FAST)
    assert result.verified_against == "official" and destination.read_bytes() == data
    assert [request.range for request in omniglot_server.requests] == ["bytes=500000-", None]


@pytest.mark.network
def test_fetch_completes_partial_that_is_already_whole(omniglot_server, omniglot_mirror_folder,
                                                       tmp_path):
    data = genuine(omniglot_mirror_folder, VAL)
    destination = tmp_path / VAL.path
    destination.parent.mkdir(parents=True)
    destination.with_name(destination.name + ".part").write_bytes(data)
    fetch_file(served(omniglot_server, VAL), "omniglot", destination, **FAST)
    assert destination.read_bytes() == data
    assert len(omniglot_server.requests) == 1


@pytest.mark.network
def test_fetch_survives_dropped_connection(omniglot_server, omniglot_mirror_folder, tmp_path):
    omniglot_server.drops = 2
    omniglot_server.drop_after = 400_000
    destination = tmp_path / SMALL.path
    fetch_file(served(omniglot_server, SMALL), "omniglot", destination, **FAST)
    assert destination.read_bytes() == genuine(omniglot_mirror_folder, SMALL)
    assert len(omniglot_server.requests) == 3
    assert omniglot_server.requests[-1].range is not None


@pytest.mark.network
@pytest.mark.parametrize("status", [404, 403])
def test_fetch_fails_fast_on_client_errors(omniglot_server, tmp_path, status):
    source = served(omniglot_server, VAL)
    omniglot_server.statuses[f"/omniglot/{VAL.path}"] = status
    destination = tmp_path / VAL.path
    with pytest.raises(DownloadError, match=f"answered {status}") as caught:
        fetch_file(source, "omniglot", destination, retries=5, backoff=30)
    assert caught.value.hint
    assert len(omniglot_server.requests) == 1
    assert leftovers(destination) == []


@pytest.mark.network
def test_fetch_reports_refused_connection_in_one_line(refused_url, tmp_path):
    source = Source(path=SMALL.path, url=refused_url, md5=SMALL.md5)
    with pytest.raises(DownloadError) as caught:
        fetch_file(source, "omniglot", tmp_path / SMALL.path, retries=1, **FAST)
    error = caught.value
    assert error.message.startswith(f"cannot reach {refused_url}: connection refused")
    assert "--mirror / METACTL_MIRROR" in error.hint
    assert "\n" not in error.one_line()
    assert error.__cause__ is None and error.__suppress_context__


@pytest.mark.network
def test_fetch_reports_timeout(omniglot_server, tmp_path):
    omniglot_server.delay = 1.0
    source = served(omniglot_server, VAL)
    with pytest.raises(DownloadError, match="cannot reach .*: timed out"):
        fetch_file(source, "omniglot", tmp_path / VAL.path, retries=0, timeout=0.2)


@pytest.mark.network
def test_fetch_skips_verified_file(omniglot_server, omniglot_mirror_folder, tmp_path):
    destination = tmp_path / VAL.path
    destination.parent.mkdir(parents=True)
    destination.write_bytes(genuine(omniglot_mirror_folder, VAL))
    result = fetch_file(served(omniglot_server, VAL), "omniglot", destination, **FAST)
    assert (result.verified_against, result.downloaded) == ("official", False)
    assert "already present" in result.message
    assert omniglot_server.requests == []


@pytest.mark.network
def test_fetch_skips_file_verified_by_mirror_manifest(omniglot_server, omniglot_mirror_folder,
                                                      tmp_path):
    source = Source(path=VAL.path, url=VAL.url, md5=WRONG_MD5)
    destination = tmp_path / VAL.path
    destination.parent.mkdir(parents=True)
    destination.write_bytes(genuine(omniglot_mirror_folder, VAL))
    result = fetch_file(source, "omniglot", destination, mirror=omniglot_server.url, **FAST)
    assert (result.verified_against, result.downloaded) == ("mirror", False)
    assert {request.path for request in omniglot_server.requests} == {
        "/omniglot/MD5SUMS", "/omniglot/SHA256SUMS"}


@pytest.mark.network
def test_fetch_force_downloads_again(omniglot_server, omniglot_mirror_folder, tmp_path):
    destination = tmp_path / VAL.path
    destination.parent.mkdir(parents=True)
    destination.write_bytes(genuine(omniglot_mirror_folder, VAL))
    result = fetch_file(served(omniglot_server, VAL), "omniglot", destination, force=True, **FAST)
    assert result.downloaded
    assert len(omniglot_server.requests) == 1


@pytest.mark.network
def test_fetch_replaces_file_that_does_not_verify(omniglot_server, omniglot_mirror_folder,
                                                  tmp_path):
    destination = tmp_path / VAL.path
    destination.parent.mkdir(parents=True)
    destination.write_bytes(b"stale")
    result = fetch_file(served(omniglot_server, VAL), "omniglot", destination, **FAST)
    assert result.downloaded and destination.read_bytes() == genuine(omniglot_mirror_folder, VAL)


@pytest.mark.network
def test_fetch_with_shared_progress_on_terminal(omniglot_server, tmp_path):
    output = io.StringIO()
    progress = download_progress(Console(file=output, force_terminal=True, width=100))
    with progress:
        fetch_file(served(omniglot_server, SMALL), "omniglot", tmp_path / SMALL.path,
                   progress=progress, **FAST)
    assert SMALL.path in output.getvalue()
    assert "MB" in output.getvalue()


@pytest.mark.parametrize("as_uri", [False, True], ids=["folder", "file-url"])
def test_fetch_from_local_mirror(omniglot_mirror_folder, tmp_path, as_uri, capsys):
    mirror = omniglot_mirror_folder.parent
    location = mirror.as_uri() if as_uri else str(mirror)
    destination = tmp_path / VAL.path
    result = fetch_file(VAL, "omniglot", destination, mirror=location)
    assert (result.verified_against, result.downloaded) == ("official", True)
    assert destination.read_bytes() == genuine(omniglot_mirror_folder, VAL)
    assert capsys.readouterr() == ("", ""), "no progress output when stderr is not a terminal"


def test_fetch_rebuilt_archive_from_local_mirror(omniglot_mirror_folder, tmp_path):
    # The mirror's images_background.zip was rebuilt, so only its manifest vouches for it.
    source = next(item for item in load_card(CARD_FILE).sources
                  if item.path == "images_background.zip")
    destination = tmp_path / source.path
    result = fetch_file(source, "omniglot", destination, mirror=str(omniglot_mirror_folder.parent))
    assert result.verified_against == "mirror"
    assert "differs from the official" in result.message
    assert source.md5 in result.message


def test_fetch_from_local_mirror_missing_file(tmp_path):
    (tmp_path / "mirror" / "omniglot").mkdir(parents=True)
    destination = tmp_path / VAL.path
    with pytest.raises(DownloadError, match="does not exist") as caught:
        fetch_file(VAL, "omniglot", destination, mirror=str(tmp_path / "mirror"))
    assert "--mirror" in caught.value.hint
    assert leftovers(destination) == []
