"""The ``metactl`` entry point."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

try:  # recent typer bundles click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import ClickException, NoArgsIsHelpError

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
    """Run the CLI. A :class:`MetactlError`, or a command line that does not parse, becomes one
    line on stderr and a non-zero exit; anything else is a bug and keeps its traceback."""
    from metactl.errors import MetactlError

    try:
        code = app(standalone_mode=False)
    except MetactlError as error:
        typer.echo(f"Error: {error.one_line()}", err=True)
        sys.exit(error.exit_code)
    except ClickException as error:
        sys.exit(_show_command_line_error(error))
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        sys.exit(1)
    if code == 130:  # Ctrl-C, which typer turns into an exit status
        typer.echo("Interrupted.", err=True)
    if isinstance(code, int) and code:
        sys.exit(code)


def _show_command_line_error(error: ClickException) -> int:
    """One line for a bad command line (typer draws a box of several); the help screen when a
    group is called without a command."""
    if isinstance(error, NoArgsIsHelpError):
        from typer import rich_utils

        rich_utils.rich_format_error(error)
        return error.exit_code
    from metactl.errors import UsageError

    context = getattr(error, "ctx", None)
    hint = f"see `{context.command_path} --help`" if context is not None else ""
    typer.echo(f"Error: {UsageError(error.format_message(), hint).one_line()}", err=True)
    return error.exit_code
