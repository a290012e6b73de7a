"""``metactl reproduce`` and ``metactl results``: the papers' tables, trained and compared."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from metactl.cli.common import MirrorOption, RootOption, print_json, say


def reproduce(
    algorithms: Annotated[list[str], typer.Argument(help="Algorithms whose paper to reproduce "
                                                    "(see `metactl plugins list`).")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset of the paper's table.")] =
    "omniglot",
    settings: Annotated[list[str] | None, typer.Option(
        "--setting", help="Only these settings, e.g. 5w1s (repeatable; default: all the paper "
        "reports).", show_default=False)] = None,
    budget: Annotated[str | None, typer.Option(
        "--budget", help="Stop training cleanly after this long (e.g. 45m, 2h); run again to "
        "continue.", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or "
                                        "cuda.")] = "auto",
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder of the reports, <algorithm>.json and .md (default: "
        "reports/<dataset>).", show_default=False)] = None,
    runs: Annotated[Path | None, typer.Option(
        "--runs", help="Folder of the training runs (default: runs/reproduce/<dataset>).",
        show_default=False)] = None,
    evaluate_partial: Annotated[bool, typer.Option(
        "--evaluate-partial", help="Also evaluate protocols that have not finished training "
        "(reported as partial).")] = False,
    assignments: Annotated[list[str] | None, typer.Option(
        "--set", help="A device setting, key=value: amp, channels_last, compile or "
        "deterministic (repeatable).", show_default=False)] = None,
    test_episodes: Annotated[int, typer.Option(
        "--test-episodes", help="Fixed seed-0 test episodes per row (papers use 600 or "
        "more).")] = 1000,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the rows, their commands and a time estimate from a short "
        "timing probe on this machine; train nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    root: RootOption = None,
    mirror: MirrorOption = None,
):
    """Train each protocol of the papers' tables, evaluate it on the fixed test episodes and
    write a report comparing ours with the paper's figures; resumes where it stopped."""
    from metactl.engine.reports import Report
    from metactl.engine.reproduce import (
        Reproduction,
        device_overrides,
        parse_duration,
        plan_reproduction,
    )
    from metactl.errors import UsageError
    from metactl.plugins import get_registry

    deadline = time.monotonic() + parse_duration(budget) if budget else None
    overrides = device_overrides(assignments or [])
    if test_episodes < 1:
        raise UsageError(f"--test-episodes must be at least 1, got {test_episodes}",
                         "pass e.g. --test-episodes 1000")
    out = out or Path("reports") / dataset
    runs = runs or Path("runs") / "reproduce" / dataset
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder", "pick a folder for the reports")
    registry = get_registry()
    plans = [plan_reproduction(registry.get(name), dataset, settings or []) for name in
             dict.fromkeys(algorithms)]
    for plan in plans:  # refuse a foreign report before any training starts
        Report.open(out / f"{plan.algorithm.name}.json", plan.algorithm.name, dataset,
                    plan.algorithm.paper)
    if dry_run:
        _dry_run(plans, device=device, root=root, mirror=mirror, out=out, runs=runs,
                 as_json=as_json, test_episodes=test_episodes, overrides=overrides)
        return
    for plan in plans:
        reproduction = Reproduction(plan, out / f"{plan.algorithm.name}.json", runs,
                                    device=device, root=root, mirror=mirror, deadline=deadline,
                                    evaluate_partial=evaluate_partial,
                                    test_episodes=test_episodes, overrides=overrides, say=say)
        command = _command(plan.algorithm.name, dataset, settings or [], out, runs, device,
                           test_episodes, assignments or [])
        report = reproduction.execute(command)
        _print_report(report, as_json)
    if deadline is not None and time.monotonic() >= deadline:
        say("the budget is spent; run the same command again to continue")


def _command(algorithm: str, dataset: str, settings: list[str], out: Path, runs: Path,
             device: str, test_episodes: int, assignments: list[str]) -> str:
    chosen = "".join(f" --setting {setting}" for setting in settings)
    episodes = "" if test_episodes == 1000 else f" --test-episodes {test_episodes}"
    extra = "".join(f" --set {assignment}" for assignment in assignments)
    return (f"metactl reproduce {algorithm} --dataset {dataset}{chosen}{episodes}{extra} "
            f"--out {out} --runs {runs} --device {device}")


def _print_report(report, as_json: bool) -> None:
    from metactl.engine.reports import TABLE_HEADER, table_lines

    document = report.to_json()
    if as_json:
        print_json(document)
        return
    typer.echo(f"{report.algorithm} on {report.dataset} ({report.path}):")
    typer.echo(TABLE_HEADER)
    for line in table_lines(document):
        typer.echo(line)


def _dry_run(plans, *, device, root, mirror, out: Path, runs: Path, as_json: bool,
             test_episodes: int, overrides: dict) -> None:
    from metactl.engine.reproduce import (
        estimate,
        evaluate_command,
        format_duration,
        train_command,
    )

    documents = []
    for plan in plans:
        estimates = estimate(plan, device=device, root=root, mirror=mirror, say=say,
                             test_episodes=test_episodes, overrides=overrides)
        for protocol, guess in zip(plan.protocols, estimates, strict=True):
            run = runs / f"{plan.algorithm.name}-{protocol.name}"
            documents.append({
                **guess, "algorithm": plan.algorithm.name,
                "rows": [row.setting for row in protocol.rows],
                "train": train_command(plan.algorithm.name, run,
                                       {**protocol.settings, **overrides}, device),
                "evaluate": [evaluate_command(run, row, test_episodes)
                             for row in protocol.rows]})
    if as_json:
        print_json(documents)
        return
    for item in documents:
        typer.echo(f"{item['algorithm']} {item['protocol']} -> {', '.join(item['rows'])} "
                   f"({item['steps']:,} steps at {item['seconds_per_step']:.3f} s on "
                   f"{item['placement']}: training {format_duration(item['training_seconds'])}, "
                   f"validation {format_duration(item['validation_seconds'])}, evaluation "
                   f"{format_duration(item['evaluation_seconds'])})")
        typer.echo(f"  {item['train']}")
        for command in item["evaluate"]:
            typer.echo(f"  {command}")
    total = sum(item["total_seconds"] for item in documents)
    typer.echo(f"estimated total: {format_duration(total)}; reports go to {out}")


def results(
    reports: Annotated[Path, typer.Argument(help="Folder of reproduce reports.")] =
    Path("reports"),
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")] =
    Path("RESULTS.md"),
    check: Annotated[bool, typer.Option(
        "--check", help="Write nothing; fail if the file differs from what the reports "
        "give.")] = False,
):
    """Render RESULTS.md from the reproduce reports, so every figure has a report behind it."""
    from metactl.engine.reports import (
        find_main_jobs,
        find_reports,
        find_short_runs,
        render_results,
    )
    from metactl.engine.run import write_text_atomic
    from metactl.errors import DataError, UsageError

    if not reports.is_dir():
        raise UsageError(f"report folder {reports} does not exist",
                         "pass the folder `metactl reproduce --out` wrote to")
    preamble = reports / "README.md"
    text = render_results(find_reports(reports), output.resolve().parent,
                          preamble.read_text(encoding="utf-8") if preamble.is_file() else "",
                          find_main_jobs(reports), find_short_runs(reports))
    if check:
        current = output.read_text(encoding="utf-8") if output.is_file() else ""
        if current != text:
            raise DataError(f"{output} is not what the reports under {reports} give",
                            f"regenerate it with `metactl results {reports} -o {output}`")
        say(f"{output} matches the reports")
        return
    write_text_atomic(output, text)
    say(f"wrote {output}")
