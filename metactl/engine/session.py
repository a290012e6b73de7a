"""The library calls behind ``metactl train`` and ``metactl evaluate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metactl.engine.config import load_config_file, parse_assignments, resolve_config
from metactl.engine.launch import is_main_process, process_place
from metactl.engine.run import RunFolder, open_run, write_text_atomic
from metactl.errors import UsageError


def start_training(algorithm_name: str | None, cli_values: dict[str, Any],
                   config_file: Path | None, assignments: list[str], *, out: Path | None,
                   resume: Path | None, root: str | None, mirror: str | None, report,
                   allow_world_size_change: bool = False):
    """Resolve the config of a new or resumed run and train it."""
    from metactl.engine.trainer import train
    from metactl.plugins import get_registry

    overrides = {**(load_config_file(config_file) if config_file else {}),
                 **{k: v for k, v in cli_values.items() if v is not None},
                 **parse_assignments(assignments)}
    if resume is not None:
        run = open_run(resume)
        saved = run.read_config()
        if algorithm_name and algorithm_name != saved["algorithm"]:
            raise UsageError(f"{run.path} is a {saved['algorithm']} run, not {algorithm_name}",
                             f"resume it with `metactl train --resume {run.path}`")
        changed = sorted(k for k in overrides if k != "episodes" and overrides[k] != saved.get(k))
        if changed:
            raise UsageError(f"a resumed run keeps its settings; {', '.join(changed)} differ",
                             "only --episodes may change (to train longer)")
        config = {**saved, **overrides}
        return train(saved["algorithm"], config, resume=run.path, root=root, mirror=mirror,
                     report=report, allow_world_size_change=allow_world_size_change)
    if not algorithm_name:
        raise UsageError("no algorithm given", "run `metactl train ALGORITHM` "
                         "(see `metactl plugins list`) or `metactl train --resume RUN`")
    algorithm = get_registry().get(algorithm_name)
    config = resolve_config(algorithm_name, algorithm.defaults, {}, overrides, {})
    process_place().check_meta_batch(int(config["meta_batch"]))  # before torch is imported
    return train(algorithm_name, config, out=out, root=root, mirror=mirror, report=report)


def evaluate_and_record(run_path: Path, **options: Any):
    """Evaluate a run and save the result as
    ``evaluation-<split>-<way>way-<shot>shot[-<steps>steps].json`` in the run folder."""
    from metactl.engine.evaluator import evaluate_run

    result = evaluate_run(run_path, **options)
    run = RunFolder(Path(run_path))
    steps = options.get("inner_steps")
    suffix = "" if steps is None else f"-{steps}steps"
    name = f"evaluation-{result.split}-{result.way}way-{result.shot}shot{suffix}.json"
    if is_main_process():
        write_text_atomic(run.path / name, json.dumps(result.to_json(), indent=2) + "\n")
    return result


def evaluate_positions_and_record(run_path: Path, positions: tuple[int, ...], **options: Any):
    """Accuracy by instance position, saved as ``evaluation-<split>-<way>way-positions.json``."""
    from metactl.engine.sequences import evaluate_positions

    result = evaluate_positions(run_path, positions, **options)
    name = f"evaluation-{result.split}-{result.way}way-positions.json"
    if is_main_process():
        write_text_atomic(RunFolder(Path(run_path)).path / name,
                          json.dumps(result.to_json(), indent=2) + "\n")
    return result


def parse_steps(text: str | None) -> list[int | None]:
    """``"0,1,10"`` -> ``[0, 1, 10]``; no text -> ``[None]`` (the algorithm's own setting)."""
    if not text:
        return [None]
    try:
        steps = [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--steps {text!r} is not a comma-separated list of whole numbers",
                         "write e.g. --steps 0,1,10") from None
    if any(count < 0 for count in steps):
        raise UsageError("--steps must not be negative", "write e.g. --steps 0,1,10")
    return steps


def plot_sinusoid(run_path: Path, steps: list[int | None], output: Path, *, shot: int | None,
                  seed: int | None, device: str | None) -> Path:
    from metactl.engine.run import load_trained
    from metactl.engine.sinusoid_report import plot_one_task

    trained = load_trained(run_path, device)
    if trained.config["dataset"] != "sinusoid":
        raise UsageError("--plot draws sinusoid tasks, and this run is not on sinusoid",
                         "drop --plot, or evaluate a run trained with --dataset sinusoid")
    counts = [0, *sorted({count for count in steps if count})] if steps != [None] else [0, 1]
    placement = trained.placement(device)
    return plot_one_task(trained, counts, output, shot=shot, seed=seed, device=placement.device)
