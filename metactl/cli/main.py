"""The ``metactl`` entry point."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from metactl import __version__
from metactl.cli import data, plugins, run

app = typer.Typer(
    name="metactl",
    help="Few-shot meta-learning from the command line: datasets, algorithms as plugins, "
    "training, evaluation and prediction.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data.app, name="data")
app.add_typer(plugins.app, name="plugins")
app.command()(run.train)
app.command()(run.evaluate)
app.command()(run.predict)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"metactl {__version__}")
        raise typer.Exit()


@app.callback()
def root_callback(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Few-shot meta-learning from the command line."""


def main() -> None:
    """Run the CLI; a :class:`MetactlError` becomes one line on stderr and a non-zero exit."""
    from metactl.engine.launch import error_label
    from metactl.errors import MetactlError

    try:
        app(standalone_mode=True)
    except MetactlError as error:
        typer.echo(f"{error_label()}: {error.one_line()}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        sys.exit(130)
