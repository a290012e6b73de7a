"""``metactl runs``: list, show, compare and plot run folders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from metactl.cli.common import print_json, say

if TYPE_CHECKING:
    from metactl.engine.runs import RunSummary

app = typer.Typer(help="See what runs did: list them, show one, compare several, plot curves.",
                  no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
RunsArgument = Annotated[list[Path], typer.Argument(help="Run folders.", show_default=False)]


def _complete_algorithm(incomplete: str) -> list[str]:
    from metactl.cli.completion import algorithm_names

    return algorithm_names(incomplete)


def _complete_dataset(incomplete: str) -> list[str]:
    from metactl.cli.completion import dataset_names

    return dataset_names(incomplete)


@app.command("list")
def list_command(
    folder: Annotated[Path, typer.Argument(help="A folder of runs (searched 3 levels deep).")
                      ] = Path("runs"),
    algorithm: Annotated[str | None, typer.Option(
        "--algorithm", help="Only runs of this algorithm.", show_default=False,
        autocompletion=_complete_algorithm)] = None,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Only runs on this dataset.", show_default=False,
        autocompletion=_complete_dataset)] = None,
    status: Annotated[str | None, typer.Option(
        "--status", help="Only runs with this status: running, finished, interrupted, failed.",
        show_default=False)] = None,
    as_json: JsonOption = False,
):
    """One line per run: setting, steps, best validation, test accuracy, status."""
    from metactl.engine.runs import list_runs

    summaries = list_runs(folder, algorithm=algorithm, dataset=dataset, status=status)
    if as_json:
        print_json([summary.to_json() for summary in summaries])
        return
    if not summaries:
        say(f"no runs under {folder}" + (" match" if algorithm or dataset or status else ""))
        return
    _print_table([_row(summary) for summary in summaries])


def _row(summary: RunSummary) -> dict[str, str]:
    from metactl.engine.runs import describe_score

    return {"run": str(summary.path), "algorithm": summary.algorithm,
            "dataset": summary.dataset, "setting": summary.setting,
            "steps": f"{summary.steps_done}/{summary.steps_total}",
            "episodes": f"{summary.episodes_done}/{summary.episodes_total}",
            "best val": describe_score(summary.best_validation),
            "test ± 95% CI": describe_score(summary.test), "status": summary.status}


def _print_table(rows: list[dict[str, str]]) -> None:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(row[c]) for row in rows)) for c in columns}
    typer.echo("  ".join(f"{c:<{widths[c]}}" for c in columns).rstrip())
    for row in rows:
        typer.echo("  ".join(f"{row[c]:<{widths[c]}}" for c in columns).rstrip())


@app.command()
def show(run: Annotated[Path, typer.Argument(help="Run folder.")], as_json: JsonOption = False):
    """The run's config, provenance (run.json) and evaluations."""
    from metactl.engine.runs import show_run

    details = show_run(run)
    if as_json:
        print_json(details)
        return
    _print_details(details)


def _print_details(details: dict[str, Any]) -> None:
    from metactl.engine.runs import describe_score

    record = details["record"]
    typer.echo(f"run:        {details['path']}")
    typer.echo(f"algorithm:  {details['algorithm']} on {details['dataset']}, "
               f"{details['way']}-way {details['shot']}-shot")
    typer.echo(f"status:     {details['status']} (steps {details['steps']['done']}/"
               f"{details['steps']['total']}, episodes {details['episodes']['done']}/"
               f"{details['episodes']['total']})")
    if record.get("error"):
        typer.echo(f"error:      {record['error']}")
    typer.echo(f"best val:   {describe_score(details['best_validation'])}"
               + (f" at step {details['best_validation']['step']}"
                  if details["best_validation"] else ""))
    typer.echo("\nProvenance:")
    for key in ("started", "ended", "host", "device", "command", "versions", "git", "plugin"):
        if key in record:
            typer.echo(f"  {key + ':':<10} {_flat(record[key])}")
    if not record:
        typer.echo("  (no run.json: the run predates run records)")
    typer.echo("\nConfig:")
    for key, value in sorted(details["config"].items()):
        typer.echo(f"  {key}: {value}")
    typer.echo("\nEvaluations:")
    for name, result in details["evaluations"].items():
        typer.echo(f"  {name.removeprefix('evaluation-')}: {describe_score(result)} "
                   f"({result.get('episodes', '?')} episodes)")
    if not details["evaluations"]:
        typer.echo("  (none yet: metactl evaluate RUN)")


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_flat(v)}" for k, v in value.items())
    if isinstance(value, list):
        return " ".join(str(part) for part in value)
    return "-" if value is None else str(value)


@app.command()
def compare(runs: RunsArgument, as_json: JsonOption = False):
    """Settings that differ and results, side by side, with the paper's figure."""
    from metactl.engine.runs import compare_runs

    comparison = compare_runs(runs)
    if as_json:
        print_json(comparison.to_json())
        return
    header = {"": ""} | {f"run {i + 1}": Path(name).name
                         for i, name in enumerate(comparison.runs)}
    rows = [header]
    for key, values in comparison.settings.items():
        rows.append({"": key} | {f"run {i + 1}": "-" if v is None else str(v)
                                 for i, v in enumerate(values)})
    rows.append({"": "--"} | {f"run {i + 1}": "" for i in range(len(comparison.runs))})
    for label, cells in comparison.results.items():
        rows.append({"": label} | {f"run {i + 1}": cell for i, cell in enumerate(cells)})
    _print_table(rows)


@app.command()
def plot(runs: RunsArgument,
         output: Annotated[Path, typer.Option("-o", "--output", help="PNG to write.")] = Path(
             "curves.png")):
    """Learning curves (loss, accuracy with its CI band, learning rate) of runs, on shared axes."""
    from metactl.engine.curves import plot_curves

    for run in runs:
        from metactl.engine.run import open_run

        open_run(run)
    plot_curves(runs, output)
    say(f"wrote {output}")
