"""Writing files so that a failure never leaves a half-written file under the real name."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from metactl.errors import DataError


@contextmanager
def atomic_write(path: str | Path, hint: str = "choose a writable output path",
                 what: str = "") -> Iterator[Path]:
    """Yield a temporary name beside ``path``; rename it to ``path`` when the block succeeds,
    delete it when it fails. An ``OSError`` becomes a one-line :class:`DataError` that calls
    the file ``what`` (e.g. "the store") when given."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        name = f"{what} {path}" if what else str(path)
        raise DataError(f"cannot write {name}: {error.strerror or error}", hint) from None
    finally:
        with suppress(OSError):
            temporary.unlink(missing_ok=True)
