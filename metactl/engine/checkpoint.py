"""Checkpoints: tensors and plain data only, written atomically, loaded with weights_only."""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from metactl.errors import DataError
from metactl.fileio import atomic_write

FORMAT = "metactl-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    with atomic_write(path, "check the run folder's permissions and free space") as temporary:
        # Serialised in memory, then written in one go: a failed write is then an OSError
        # naming its cause (a full disk), where torch's own writer raises an unexplained
        # RuntimeError ("unexpected pos").
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "version": VERSION, **payload}, buffer)
        with open(temporary, "wb") as stream:
            stream.write(buffer.getbuffer())
    return Path(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist", "train a run first")
    try:
        with warnings.catch_warnings():  # torch's warnings would print before the one line
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a bad file
        reason = (_reason(error) if zipfile.is_zipfile(path)
                  else "the file is truncated, or not a torch checkpoint")
        raise DataError(f"checkpoint {path} is corrupt or not a metactl checkpoint ({reason})",
                        "delete it, or resume from another checkpoint") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(f"{path} is not a metactl checkpoint", "point at a run folder")
    return payload


def _reason(error: Exception) -> str:
    """Why torch could not load a file, in a few words and never cut mid-word."""
    if isinstance(error, pickle.UnpicklingError):
        return "it holds Python objects, which metactl never unpickles"
    lines = str(error).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else ""
    if len(text) > 120:
        text = text[:120].rsplit(" ", 1)[0] + " ..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
