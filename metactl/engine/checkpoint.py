"""Checkpoints: tensors and plain data only, written atomically, loaded with weights_only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from metactl.errors import DataError
from metactl.fileio import atomic_write

FORMAT = "metactl-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    with atomic_write(path, "check the run folder's permissions and free space") as temporary:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, temporary)
    return Path(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist", "train a run first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise DataError(f"checkpoint {path} is corrupt or not a metactl checkpoint "
                        f"({type(error).__name__}: {first_line[:120]})",
                        "delete it, or resume from another checkpoint") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(f"{path} is not a metactl checkpoint", "point at a run folder")
    return payload
