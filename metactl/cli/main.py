"""The ``metactl`` entry point."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

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
    """Run the CLI; a :class:`MetactlError` becomes one line on stderr and a non-zero exit, and
    so does an error raised inside a plugin (unless ``--debug``)."""
    from metactl.errors import MetactlError

    try:
        app(standalone_mode=True)
    except MetactlError as error:
        typer.echo(f"Error: {error.one_line()}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as error:
        line = None if _state["debug"] else plugin_error_line(error)
        if line is None:
            raise
        typer.echo(line, err=True)
        sys.exit(1)


def plugin_error_line(error: BaseException) -> str | None:
    """``Error: plugin P (algorithm A, package D) failed: Type: message ...`` when the deepest
    plugin frame of the traceback belongs to a registered plugin; None for metactl's own bugs."""
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
    return (f"Error: plugin {culprit.plugin} (algorithm {culprit.algorithm.name}, "
            f"{culprit.distribution}) failed: {type(error).__name__}: {first} "
            f"Rerun with `metactl --debug ...` for the traceback.")
