"""``metactl train | evaluate | predict``: dispatch to the algorithm plugins."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from metactl.cli.common import MirrorOption, RootOption, print_json, say

DeviceOption = Annotated[
    str | None,
    typer.Option("--device", help="auto (CUDA when present), cpu or cuda.", show_default=False),
]
NprocOption = Annotated[
    int | None,
    typer.Option("--nproc", help="Run in this many processes on this machine (torchrun's "
                 "launcher; one GPU each with --device cuda). See docs/distributed.md.",
                 show_default=False),
]


def _launch(nproc: int, device: str | None) -> None:
    """Start ``nproc`` copies of this command under torchrun's launcher, then exit with theirs."""
    from metactl.engine.launch import launch_here

    raise typer.Exit(launch_here(nproc, device, sys.argv[1:]))


def _is_main_process() -> bool:
    from metactl.engine.launch import is_main_process

    return is_main_process()


def _option(help_text: str, *names: str, **extra):
    return typer.Option(*names, help=help_text, show_default=False, **extra)


def _complete_algorithm(incomplete: str) -> list[str]:
    from metactl.cli.completion import algorithm_names

    return algorithm_names(incomplete)


def _complete_dataset(incomplete: str) -> list[str]:
    from metactl.cli.completion import dataset_names

    return dataset_names(incomplete)


def tune_process() -> None:
    """Process-wide tuning that only the command line applies (never the library): glibc
    keeps freed memory between steps."""
    from metactl.engine.device import keep_freed_memory

    keep_freed_memory()


def train(
    algorithm: Annotated[str, typer.Argument(help="Algorithm name (see `metactl plugins "
                                             "list`).", autocompletion=_complete_algorithm)] = "",
    dataset: Annotated[str | None, _option("Dataset (default omniglot).", "--dataset",
                                           autocompletion=_complete_dataset)] = None,
    way: Annotated[int | None, _option("Classes per test/validation task.", "--way")] = None,
    shot: Annotated[int | None, _option("Support images per class.", "--shot")] = None,
    query: Annotated[int | None, _option("Query images per class.", "--query")] = None,
    train_way: Annotated[int | None, _option("Classes per training task.", "--train-way")] = None,
    episodes: Annotated[int | None, _option("Training tasks in all (steps x meta-batch).",
                                            "--episodes")] = None,
    steps: Annotated[int | None, _option("Meta-training steps, instead of --episodes "
                                         "(episodes = steps x meta-batch).", "--steps")] = None,
    meta_batch: Annotated[int | None, _option("Tasks per meta-step.", "--meta-batch")] = None,
    lr: Annotated[float | None, _option("Outer learning rate.", "--lr")] = None,
    seed: Annotated[int | None, _option("Random seed.", "--seed")] = None,
    device: DeviceOption = None,
    config: Annotated[Path | None, _option("YAML file of settings.", "--config")] = None,
    assignments: Annotated[list[str] | None, _option("Any setting, as key=value "
                                                     "(repeatable).", "--set")] = None,
    out: Annotated[Path | None, _option("Run folder (default runs/<algorithm>-...).",
                                        "--out")] = None,
    resume: Annotated[Path | None, _option("Continue the run in this folder.", "--resume")] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved "
                                               "settings as YAML and exit.")] = False,
    allow_world_size_change: Annotated[bool, typer.Option(
        "--allow-world-size-change", help="Resume with another number of processes than the "
        "run was trained with.")] = False,
    nproc: NprocOption = None,
    root: RootOption = None,
    mirror: MirrorOption = None,
):
    """Meta-train an algorithm; writes a run folder (config, checkpoints, metrics, run.json)."""
    from metactl.engine.session import start_training, training_config

    cli_values = {"dataset": dataset, "way": way, "shot": shot, "query": query,
                  "train_way": train_way, "episodes": episodes, "meta_batch": meta_batch,
                  "lr": lr, "seed": seed, "device": device}
    if print_config:
        import yaml

        _, resolved = training_config(algorithm or None, cli_values, config, assignments or [],
                                      resume=resume, steps=steps)
        typer.echo(yaml.safe_dump(resolved, sort_keys=True).rstrip())
        return
    if nproc is not None:
        _launch(nproc, device)
    tune_process()
    run, state = start_training(algorithm or None, cli_values, config, assignments or [],
                                out=out, resume=resume, root=root, mirror=mirror, report=say,
                                steps=steps, allow_world_size_change=allow_world_size_change)
    if _is_main_process():
        typer.echo(str(run.path))


def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder written by `metactl train`.")],
    episodes: Annotated[int | None, _option("Test episodes (default 1000).", "--episodes")] = None,
    way: Annotated[int | None, _option("Classes per task (default: the run's).", "--way")] = None,
    shot: Annotated[int | None, _option("Support images per class.", "--shot")] = None,
    query: Annotated[int | None, _option("Query images per class.", "--query")] = None,
    split: Annotated[str, typer.Option("--split", help="Split to evaluate on: train, val or "
                                       "test.")] = "test",
    episode_file: Annotated[Path | None, _option("Fixed episodes from `metactl data split`.",
                                                 "--episode-file")] = None,
    seed: Annotated[int | None, _option("Seed of the drawn episodes (default: the run's "
                                        "eval_seed, 0).", "--seed")] = None,
    inner_steps: Annotated[str | None, _option("Inner gradient steps at test time, e.g. 0,1,10 "
                                               "(one evaluation each).", "--inner-steps")] = None,
    old_steps: Annotated[str | None, _option("Deprecated spelling of --inner-steps.", "--steps",
                                             hidden=True)] = None,
    assignments: Annotated[list[str] | None, _option("An evaluation-time setting, as key=value "
                                                     "(repeatable), e.g. distance=cosine.",
                                                     "--set")] = None,
    plot: Annotated[Path | None, _option("Sinusoid runs: plot one test task's curve and the "
                                         "predictions after each number of inner steps.",
                                         "--plot")] = None,
    positions: Annotated[str | None, _option("Online learners (mann): accuracy by instance "
                                             "position on fixed labelled sequences, e.g. "
                                             "1,2,3,4,5,10 or paper.", "--positions")] = None,
    device: DeviceOption = None,
    nproc: NprocOption = None,
    root: RootOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Mean test accuracy (or regression error) with its 95% CI over fixed episodes."""
    if nproc is not None:
        _launch(nproc, device)
    from metactl.engine.config import parse_assignments
    from metactl.engine.session import (
        check_plottable,
        evaluate_and_record,
        parse_steps,
        plot_generated_tasks,
    )
    from metactl.fileio import check_output_file

    tune_process()
    if old_steps is not None:
        say("note: `evaluate --steps` is now `--inner-steps` (`train --steps` counts "
            "meta-training steps); the old spelling will be removed")
        inner_steps = inner_steps or old_steps
    settings = parse_assignments(assignments or [])
    if positions is not None:
        _refuse_with_positions(shot=shot, query=query, episode_file=episode_file,
                               inner_steps=inner_steps, plot=plot, set=assignments)
        _evaluate_positions(run, positions, episodes=episodes, way=way, split=split, seed=seed,
                            device=device, root=root, as_json=as_json)
        return
    step_counts = parse_steps(inner_steps)
    if plot is not None:
        check_plottable(run, root)
        check_output_file(plot, "--plot")
    evaluate_and_record(run, step_counts,
                        lambda results: _show(results, step_counts, settings, as_json),
                        episodes=episodes, way=way, shot=shot, query=query, split=split,
                        episode_file=episode_file, seed=seed, device=device, root=root,
                        settings=settings)
    if not _is_main_process():
        return
    if plot is not None:
        plot_generated_tasks(run, step_counts, plot, shot=shot, seed=seed, device=device,
                             root=root)
        say(f"wrote {plot}")


def _show(results: list, step_counts: list[int | None], settings: dict, as_json: bool) -> None:
    from metactl.engine.session import describe_evaluation, evaluation_document

    if as_json:
        documents = [evaluation_document(result, count, settings)
                     for count, result in zip(step_counts, results, strict=True)]
        print_json(documents[0] if step_counts == [None] else documents)
        return
    for count, result in zip(step_counts, results, strict=True):
        typer.echo(describe_evaluation(result, count))


def _refuse_with_positions(**options) -> None:
    from metactl.errors import UsageError

    given = [f"--{name.replace('_', '-')}" for name, value in options.items() if value is not None]
    if given:
        raise UsageError(f"--positions does not combine with {', '.join(given)}",
                         "sequences have max(positions) images per class and no queries; drop "
                         "those options")


def _evaluate_positions(run: Path, text: str, *, as_json: bool, **options) -> None:
    from metactl.engine.sequences import parse_positions
    from metactl.engine.session import evaluate_positions_and_record

    def show(result) -> None:
        if as_json:
            print_json(result.to_json())
            return
        typer.echo(f"{result.way}-way sequences of {result.instances} images per class, "
                   f"{result.split} (95% CI, {result.episodes} episodes):")
        for line in result.lines():
            typer.echo(f"  {line}")

    evaluate_positions_and_record(run, parse_positions(text), show, **options)


def predict(
    run: Annotated[Path, typer.Argument(help="Run folder written by `metactl train`.")],
    support: Annotated[Path, typer.Option("--support", help="Folder with one subfolder of "
                                          "images per class.")],
    queries: Annotated[list[Path], typer.Option("--query", help="Query image or folder "
                                                "(repeatable).")],
    output: Annotated[Path | None, _option("Write predictions to a .csv or .json file.",
                                           "--output", "-o")] = None,
    device: DeviceOption = None,
):
    """Adapt to a support set and classify query images."""
    from metactl.engine.predictor import check_output_path, write_predictions
    from metactl.engine.predictor import predict as run_prediction

    tune_process()
    if output is not None:
        check_output_path(output)
    predictions = run_prediction(run, support, queries, device=device)
    if not _is_main_process():  # under torchrun every process predicts the same
        return
    for prediction in predictions:
        typer.echo(f"{prediction.path}\t{prediction.predicted_class}\t"
                   f"{prediction.probability:.3f}")
    if output is not None:
        write_predictions(predictions, output)
        say(f"wrote {len(predictions)} predictions to {output}")
