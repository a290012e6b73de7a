"""Checkpoints: tensors and plain data only, written atomically, loaded with weights_only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from metactl.errors import DataError

FORMAT = "metactl-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


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
