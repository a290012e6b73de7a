"""The library calls behind ``metactl train`` and ``metactl evaluate``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metactl.engine.config import (
    check_settings,
    load_config_file,
    parse_assignments,
    resolve_config,
)
from metactl.engine.launch import process_place
from metactl.engine.run import RunFolder, open_run, write_text_atomic
from metactl.errors import UsageError

if TYPE_CHECKING:
    from metactl.algorithm import Algorithm

RESUMABLE_CHANGES = ("episodes", "logger")


def training_config(algorithm_name: str | None, cli_values: dict[str, Any],
                    config_file: Path | None, assignments: list[str], *,
                    resume: Path | None = None, steps: int | None = None,
                    algorithm_class: type[Algorithm] | None = None
                    ) -> tuple[str, dict[str, Any]]:
    """The algorithm name and resolved config of a new or resumed run; ``steps`` (meta-steps)
    sets ``episodes`` to ``steps * meta_batch``; ``algorithm_class`` replaces the registry's
    (for an unregistered class)."""
    from metactl.plugins import get_registry

    overrides = {**(load_config_file(config_file) if config_file else {}),
                 **{k: v for k, v in cli_values.items() if v is not None},
                 **parse_assignments(assignments)}
    if steps is not None and "episodes" in overrides:
        raise UsageError("--steps and --episodes both set the length of training",
                         "give one of them (episodes = steps x meta_batch)")
    if resume is not None:
        run = open_run(resume)
        saved = run.read_config()
        if algorithm_name and algorithm_name != saved["algorithm"]:
            raise UsageError(f"{run.path} is a {saved['algorithm']} run, not {algorithm_name}",
                             f"resume it with `metactl train --resume {run.path}`")
        changed = sorted(k for k in overrides
                         if k not in RESUMABLE_CHANGES and overrides[k] != saved.get(k))
        if changed:
            raise UsageError(f"a resumed run keeps its settings; {', '.join(changed)} differ",
                             "only --episodes or --steps (to train longer) and the logger "
                             "may change")
        check_settings(overrides)
        return saved["algorithm"], with_meta_steps({**saved, **overrides}, steps)
    if not algorithm_name:
        raise UsageError("no algorithm given", "run `metactl train ALGORITHM` "
                         "(see `metactl plugins list`) or `metactl train --resume RUN`")
    algorithm = algorithm_class or get_registry().get(algorithm_name)
    config = resolve_config(algorithm_name, algorithm.defaults, {}, overrides, {})
    return algorithm_name, with_meta_steps(config, steps)


def with_meta_steps(config: dict[str, Any], steps: int | None) -> dict[str, Any]:
    """``config`` with ``episodes = steps * meta_batch`` when ``steps`` is given."""
    if steps is None:
        return config
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UsageError(f"--steps must be a positive whole number, got {steps!r}",
                         "pass e.g. --steps 1000")
    return {**config, "episodes": steps * int(config["meta_batch"])}


def start_training(algorithm_name: str | None, cli_values: dict[str, Any],
                   config_file: Path | None, assignments: list[str], *, out: Path | None,
                   resume: Path | None, root: str | None, mirror: str | None, report,
                   steps: int | None = None, deadline: float | None = None,
                   allow_world_size_change: bool = False):
    """Resolve the config of a new or resumed run and train it (until ``deadline``, a
    ``time.monotonic()`` value, when given); under torchrun, ``allow_world_size_change`` lets
    a run resume with another number of processes."""
    name, config = training_config(algorithm_name, cli_values, config_file, assignments,
                                   resume=resume, steps=steps)
    process_place().check_meta_batch(int(config["meta_batch"]))  # before torch is imported
    from metactl.engine.trainer import train

    return train(name, config, out=None if resume else out, resume=resume, root=root,
                 mirror=mirror, report=report, deadline=deadline,
                 allow_world_size_change=allow_world_size_change)


def evaluate_and_record(run_path: Path, steps: Sequence[int | None] = (None,),
                        show: Callable | None = None, **options: Any) -> list:
    """Evaluate a run once per inner-step count (None: the algorithm's own), hand the results
    to ``show`` so they are seen even if saving them fails, then save each as
    ``evaluation-<split>-<way>way-<shot>shot[-<steps>steps][-<key>=<value>...].json`` in the run
    folder, which no other process writes meanwhile (see :func:`evaluation_document`); the lines
    are added to the run's console.log. Under torchrun every process calls this and shares the
    episodes; rank 0 alone shows and saves."""
    from metactl.engine.evaluator import evaluate_run
    from metactl.engine.record import ConsoleLog

    settings = options.get("settings") or {}
    run = open_run(run_path)
    with _written_by_main(run, options.get("device")) as main:
        results = [evaluate_run(run.path, inner_steps=count, **options) for count in steps]
        if not main:
            return results
        if show is not None:
            show(results)
        for count, result in zip(steps, results, strict=True):
            suffix = "" if count is None else f"-{count}steps"
            suffix += "".join(f"-{key}={_file_safe(value)}"
                              for key, value in sorted(settings.items()))
            name = f"evaluation-{result.split}-{result.way}way-{result.shot}shot{suffix}.json"
            document = evaluation_document(result, count, settings)
            write_text_atomic(run.path / name, json.dumps(document, indent=2) + "\n")
            ConsoleLog(run.path).write(f"evaluate: {describe_evaluation(result, count)}")
    return results


def evaluation_document(result, inner_steps: int | None = None,
                        settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """An evaluation as JSON: the result, plus ``inner_steps`` and ``settings`` when given."""
    document = result.to_json()
    if inner_steps is not None:
        document["inner_steps"] = inner_steps
    if settings:
        document["settings"] = dict(settings)
    return document


def describe_evaluation(result, inner_steps: int | None = None) -> str:
    """One line: task, split, metric with its CI, episodes and queries."""
    setting = "" if inner_steps is None else f" after {inner_steps} inner steps"
    task = (f"{result.way}-way {result.shot}-shot" if result.metric == "accuracy"
            else f"{result.shot}-shot regression")
    return (f"{task} {result.split}{setting}: {result.describe()} (95% CI, {result.episodes} "
            f"episodes, {result.query} queries per "
            f"{'class' if result.metric == 'accuracy' else 'task'})")


def _file_safe(value: Any) -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in str(value))[:40]


def evaluate_positions_and_record(run_path: Path, positions: tuple[int, ...], show: Callable,
                                  **options: Any):
    """Accuracy by instance position, shown, then saved as
    ``evaluation-<split>-<way>way-positions.json``."""
    from metactl.engine.sequences import evaluate_positions

    run = open_run(run_path)
    with _written_by_main(run, options.get("device")) as main:
        result = evaluate_positions(run.path, positions, **options)
        if not main:
            return result
        show(result)
        name = f"evaluation-{result.split}-{result.way}way-positions.json"
        write_text_atomic(run.path / name, json.dumps(result.to_json(), indent=2) + "\n")
    return result


@contextmanager
def _written_by_main(run: RunFolder, device: str | None) -> Iterator[bool]:
    """Hold ``run``'s lock for an evaluation; under torchrun, join the other processes and
    hold it on rank 0 alone. Yields whether this process shows and saves the results."""
    if not process_place().is_distributed:
        with run.writing("metactl evaluate"):
            yield True
        return
    from metactl.engine.distributed import joined, requested_device

    with (joined(requested_device(run.path, device)) as cluster,
          cluster.on_main(run.writing, "metactl evaluate")):
        yield cluster.is_main


def parse_steps(text: str | None) -> list[int | None]:
    """``"0,1,10"`` -> ``[0, 1, 10]``; no text -> ``[None]`` (the algorithm's own setting)."""
    if not text:
        return [None]
    try:
        steps = [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--inner-steps {text!r} is not a comma-separated list of whole "
                         "numbers", "write e.g. --inner-steps 0,1,10") from None
    if any(count < 0 for count in steps):
        raise UsageError("--inner-steps must not be negative", "write e.g. --inner-steps 0,1,10")
    return steps


def check_plottable(run_path: Path, root: str | None = None) -> None:
    """Refuse ``--plot`` before any work unless the run's dataset generates its tasks."""
    from metactl.data.manage import find_dataset

    name = open_run(run_path).read_config().get("dataset")
    if not find_dataset(name, root).generates_tasks:
        raise UsageError(f"--plot draws generated tasks, and this run is on {name} images",
                         "drop --plot, or evaluate a run trained on a task family such as "
                         "--dataset sinusoid")


def plot_generated_tasks(run_path: Path, steps: list[int | None], output: Path, *,
                         shot: int | None, seed: int | None, device: str | None,
                         root: str | None = None) -> Path:
    """The run's task family draws one test task and the predictions after each number of
    inner steps (``metactl evaluate --plot``)."""
    from metactl.data.manage import find_dataset
    from metactl.engine.run import load_trained

    trained = load_trained(run_path, device)
    dataset = find_dataset(trained.config["dataset"], root)
    if not dataset.generates_tasks:
        raise UsageError(f"--plot draws generated tasks, and this run is on {dataset.name} "
                         "images", "drop --plot, or evaluate a run trained on a task family "
                         "such as --dataset sinusoid")
    counts = [0, *sorted({count for count in steps if count})] if steps != [None] else [0, 1]
    placement = trained.placement(device)
    return dataset.plot(trained, counts, output, shot=shot, seed=seed, device=placement.device)
