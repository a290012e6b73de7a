"""Options and output helpers shared by the CLI apps."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

RootOption = Annotated[
    str | None,
    typer.Option("--root", help="Data root (default: $METACTL_HOME, else the user cache dir).",
                 show_default=False),
]
MirrorOption = Annotated[
    str | None,
    typer.Option("--mirror", help="Base URL or local folder replacing the official hosts "
                 "(default: $METACTL_MIRROR). Files are read as <mirror>/<dataset>/<path>.",
                 show_default=False),
]


def say(message: str) -> None:
    """Progress notes go to stderr so that stdout stays parseable."""
    typer.echo(message, err=True)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"
