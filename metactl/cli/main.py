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
from metactl.cli import data, plugins, reproduce, run, runs

app = typer.Typer(
    name="metactl",
    help="Few-shot meta-learning from the command line: datasets, algorithms as plugins, "
    "training, evaluation and prediction.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data.app, name="data")
app.add_typer(plugins.app, name="plugins")
app.add_typer(runs.app, name="runs")
app.command()(run.train)
app.command()(run.evaluate)
app.command()(run.predict)
app.command()(reproduce.reproduce)
app.command()(reproduce.results)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"metactl {__version__}")
        raise typer.Exit()


@app.callback()
def root_callback(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error "
                                        "raised inside a plugin.")] = False,
) -> None:
    """Few-shot meta-learning from the command line."""
    _state["debug"] = debug


_state = {"debug": False}


def main() -> None:
    """Run the CLI. A :class:`MetactlError`, a command line that does not parse, or an error
    raised inside a plugin (unless ``--debug``) becomes one line on stderr and a non-zero exit;
    anything else is a bug in metactl and keeps its traceback."""
    from metactl.engine.launch import error_label
    from metactl.errors import MetactlError

    try:
        code = app(standalone_mode=False)
    except MetactlError as error:
        typer.echo(f"{error_label()}: {error.one_line()}", err=True)
        sys.exit(error.exit_code)
    except ClickException as error:
        sys.exit(_show_command_line_error(error))
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        sys.exit(1)
    except Exception as error:
        line = None if _state["debug"] else plugin_error_line(error)
        if line is None:
            raise
        typer.echo(line, err=True)
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
    from metactl.engine.launch import error_label
    from metactl.errors import UsageError

    context = getattr(error, "ctx", None)
    hint = f"see `{context.command_path} --help`" if context is not None else ""
    typer.echo(f"{error_label()}: {UsageError(error.format_message(), hint).one_line()}",
               err=True)
    return error.exit_code


def plugin_error_line(error: BaseException) -> str | None:
    """``Error: plugin P (algorithm A, package D) failed: Type: message ...`` when the deepest
    plugin frame of the traceback belongs to a registered plugin; None for metactl's own bugs."""
    from metactl.engine.launch import error_label
    from metactl.plugins import plugin_of

    culprit = None
    traceback = error.__traceback__
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        culprit = plugin_of(module) or culprit
        traceback = traceback.tb_next
    if culprit is None:
        return None
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
    first += "" if first.endswith((".", "!", "?")) else "."
    return (f"{error_label()}: plugin {culprit.plugin} (algorithm {culprit.algorithm.name}, "
            f"{culprit.distribution}) failed: {type(error).__name__}: {first} "
            f"Rerun with `metactl --debug ...` for the traceback.")
