"""The digest of an extraction's content: an archive a mirror rebuilt passes only with the
official files. Real Omniglot drawings from the mirror's genuine small archive."""

from __future__ import annotations

import shutil
import subprocess
import zipfile

import pytest
from omniglot_fixtures import MIRROR, require_mirror

from metactl.data.archive import safe_extract
from metactl.data.cards import get_card
from metactl.errors import DataError

SMALL = "images_background_small1.zip"


@pytest.fixture
def drawings_zip(tmp_path):
    """A zip of the first 30 drawings of the genuine small archive, under its top folder."""
    require_mirror(SMALL)
    archive = tmp_path / "drawings.zip"
    with zipfile.ZipFile(MIRROR / SMALL) as source, zipfile.ZipFile(archive, "w") as target:
        for name in [n for n in source.namelist() if n.endswith(".png")][:30]:
            target.writestr(name, source.read(name))
    return archive


def shell_digest(folder, top: str) -> str:
    """The digest as the card documents it: sha256sum of the sorted file listing."""
    if shutil.which("sha256sum") is None:
        pytest.skip("sha256sum is not installed")
    listing = subprocess.run(f"find {top} -type f | LC_ALL=C sort | xargs sha256sum | sha256sum",
                             shell=True, cwd=folder, capture_output=True, text=True, check=True)
    return listing.stdout.split()[0]


def test_the_official_content_passes_and_an_altered_file_does_not(drawings_zip, tmp_path):
    plain = tmp_path / "plain"
    with zipfile.ZipFile(drawings_zip) as archive:
        archive.extractall(plain)
        names = [n for n in archive.namelist() if n.endswith(".png")]
    official = shell_digest(plain, "images_background_small1")
    assert safe_extract(drawings_zip, tmp_path / "good", content_sha256=official) == [
        "images_background_small1"]
    altered = tmp_path / "altered.zip"
    with zipfile.ZipFile(drawings_zip) as source, zipfile.ZipFile(altered, "w") as target:
        for name in names:
            data = source.read(name)
            target.writestr(name, data[:-1] + bytes([data[-1] ^ 1]) if name == names[7] else data)
    with pytest.raises(DataError, match="not the official ones") as caught:
        safe_extract(altered, tmp_path / "bad", content_sha256=official)
    assert "--force" in caught.value.hint
    assert list((tmp_path / "bad").iterdir()) == []


def test_the_omniglot_card_vouches_for_both_archives():
    card = get_card("omniglot")
    digests = {source.path: source.content_sha256 for source in card.sources if source.extract}
    assert set(digests) == {"images_background.zip", "images_evaluation.zip"}
    assert all(digest and len(digest) == 64 for digest in digests.values())
