"""Where metactl keeps its data, and where it downloads from."""

from __future__ import annotations

import os
from pathlib import Path

from metactl.errors import DataError

HOME_VARIABLE = "METACTL_HOME"
MIRROR_VARIABLE = "METACTL_MIRROR"


def data_root(root: str | Path | None = None) -> Path:
    """The data root: ``root`` if given, else ``$METACTL_HOME``, else the user cache dir."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    from_env = os.environ.get(HOME_VARIABLE)
    if from_env:
        return Path(from_env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("metactl"))


def mirror_setting(mirror: str | None = None) -> str | None:
    """The mirror (a base URL or a local folder): ``mirror`` if given, else ``$METACTL_MIRROR``."""
    if mirror:
        return mirror
    return os.environ.get(MIRROR_VARIABLE) or None


def ensure_writable(folder: Path) -> Path:
    """Create ``folder`` if needed and check that files can be written there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".metactl-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise DataError(
            f"cannot write to the data root {folder} ({error.strerror or error})",
            f"choose a writable folder with --root or ${HOME_VARIABLE}",
        ) from None
    return folder
