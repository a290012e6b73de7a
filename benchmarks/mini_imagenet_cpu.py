"""Every built-in algorithm on mini-ImageNet in a short CPU run, against its untrained model.

For each algorithm: the model as initialised (seed 0, saved before any step) and the model after
a short training run are evaluated on the same fixed 5-way 1-shot test episodes (15 queries per
class, seed 0, 95% CI). Times are CPU seconds of this process (and wall seconds), so that a
machine shared with other work still gives comparable figures. The runs are scaled down to
minutes on one CPU thread (fewer filters, small training episodes, few steps); the settings
are recorded with the results. The store must exist: `metactl data fetch mini-imagenet
--mirror DIR`.

Each algorithm's row is merged into the report (default reports/mini-imagenet/short-cpu.json)
as soon as it is measured, so some algorithms can be rerun alone; `metactl results reports -o
RESULTS.md` then renders the rows into RESULTS.md.

    python benchmarks/mini_imagenet_cpu.py [--algorithms prototypical,maml] [--episodes 150]
        [--report reports/mini-imagenet/short-cpu.json] [--out runs/mini-imagenet-cpu]
        [--root DIR] [--threads 1] [--set KEY=VALUE ...]

``--set`` changes a setting of every named algorithm's short run (recorded with its row), to try
another setting without editing ``SHORT_RUNS``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from metactl.engine.config import parse_assignments, resolve_config
from metactl.engine.evaluator import evaluate_run
from metactl.engine.reports import SHORT_RUNS_FORMAT, describe_machine
from metactl.engine.run import write_text_atomic
from metactl.engine.trainer import save_untrained, train
from metactl.plugins import get_registry

DATASET = "mini-imagenet"
QUIET = {"device": "cpu", "val_episodes": 0, "val_every": 100_000, "seed": 0,
         "dataset": DATASET, "way": 5, "shot": 1, "query": 15}
REPORT = Path("reports/mini-imagenet/short-cpu.json")
TITLE = "mini-ImageNet: short CPU runs, not the paper protocols"
# A short CPU run per algorithm: small training episodes, 16 filters, few steps.
SHORT_RUNS: dict[str, dict[str, Any]] = {
    # The unscaled squared distances start the query loss at about 50, and Adam first shrinks
    # the embedding: 5e-3 gets through that in about 100 steps, and many cheap 5-way steps
    # then learn more than few large ones (docs/datasets.md).
    "prototypical": {"hidden": 16, "train_way": 5, "train_query": 5, "lr": 5e-3,
                     "lr_decay_every": 2000, "episodes": 5000},
    "matching": {"hidden": 16, "fce": False, "train_way": 5, "train_query": 5,
                 "episodes": 1000},
    "relation": {"hidden": 16, "train_query": 5, "episodes": 1000, "lr_decay_every": 0},
    "siamese": {"hidden": 16, "train_way": 10, "train_query": 3, "pairs": 64, "episodes": 500},
    "nearest-neighbor": {"hidden": 16, "train_way": 16, "train_shot": 2, "train_query": 0,
                         "augment": False, "episodes": 1500},
    "finetune": {"hidden": 16, "train_way": 16, "train_shot": 2, "train_query": 0,
                 "augment": False, "finetune_steps": 50, "episodes": 1500},
    # One inner step of 0.1 (the paper: five of 0.01): a step of 0.01 barely moves the
    # untrained network, so a short run has almost no adaptation to learn from.
    "maml": {"hidden": 16, "train_query": 5, "inner_steps": 1, "inner_lr": 0.1,
             "test_inner_steps": 3, "meta_batch": 4, "lr": 3e-3, "episodes": 1600},
    "fomaml": {"hidden": 16, "train_query": 5, "inner_steps": 1, "inner_lr": 0.1,
               "test_inner_steps": 3, "meta_batch": 4, "lr": 3e-3, "episodes": 2400},
    "reptile": {"hidden": 16, "train_shot": 5, "inner_steps": 4, "test_inner_steps": 20,
                "meta_batch": 5, "episodes": 2500},
    # The authors' running averages, collected before each update, go stale as the learned
    # updates grow: the query pass normalises with the query batch instead (docs/algorithms).
    "meta-lstm": {"hidden": 16, "train_query": 5, "inner_epochs": 5, "eval_batch_norm": "batch",
                  "episodes": 1500},
    "mann": {"controller_size": 100, "memory_slots": 64, "train_shot": 5, "meta_batch": 8,
             "optimizer": "adam", "lr": 1e-3, "episodes": 960},
    # The paper's 32 filters. MetaNet stays near chance for hundreds of steps, until its fast
    # weights start to depend on the support set (docs/datasets.md).
    "metanet": {"hidden": 32, "train_query": 5, "episodes": 400},
}


def fresh_folder(folder: Path) -> Path:
    """``folder`` emptied of an earlier run of this benchmark (a folder with config.yaml)."""
    if (folder / "config.yaml").is_file():
        shutil.rmtree(folder)
    return folder


def measure(name: str, settings: dict[str, Any], out: Path, episodes: int,
            root: str | None) -> dict[str, Any]:
    """Train ``name`` with its short-run ``settings``; its untrained and trained test scores."""
    config = resolve_config(name, get_registry().get(name).defaults, {},
                            {**QUIET, **settings}, {})
    untrained = fresh_folder(out / f"{name}-untrained")
    save_untrained(name, config, untrained, root=root)
    before = evaluate_run(untrained, episodes=episodes, root=root)
    started, cpu = time.perf_counter(), time.process_time()
    run, state = train(name, config, out=fresh_folder(out / name), root=root,
                       report=lambda message: None, show_progress=False)
    trained = {"train_seconds": round(time.perf_counter() - started, 1),
               "train_cpu_seconds": round(time.process_time() - cpu, 1)}
    started, cpu = time.perf_counter(), time.process_time()
    after = evaluate_run(run.path, episodes=episodes, root=root)
    return {"settings": settings, "steps": state.step, **trained,
            "eval_seconds": round(time.perf_counter() - started, 1),
            "eval_cpu_seconds": round(time.process_time() - cpu, 1),
            "untrained": before.to_json(), "trained": after.to_json()}


def paper_rows(name: str) -> list[dict[str, Any]]:
    """The paper's mini-ImageNet figures that the algorithm declares (``paper_results``)."""
    return [{"way": row.way, "shot": row.shot, "accuracy": row.accuracy, "ci95": row.ci95,
             "source": row.source}
            for row in get_registry().get(name).paper_results if row.dataset == DATASET]


def read_report(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"format": SHORT_RUNS_FORMAT, "version": 1, "dataset": DATASET, "title": TITLE,
                "algorithms": {}}
    report = json.loads(path.read_text(encoding="utf-8"))
    if report.get("format") != SHORT_RUNS_FORMAT or report.get("dataset") != DATASET:
        raise SystemExit(f"{path} is not a {DATASET} short-runs report; pick another --report")
    return report


def record(path: Path, name: str, result: dict[str, Any], command: str) -> None:
    """Merge one algorithm's result into the report at ``path``, keeping the others' rows."""
    report = read_report(path)
    report["algorithms"][name] = {
        **result, "paper": paper_rows(name), "command": command,
        "machine": describe_machine("cpu"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    report["algorithms"] = {key: report["algorithms"][key]
                            for key in sorted(report["algorithms"], key=_order)}
    write_text_atomic(path, json.dumps(report, indent=2) + "\n")


def _order(name: str) -> tuple[int, str]:
    names = list(SHORT_RUNS)
    return (names.index(name), name) if name in names else (len(names), name)


def row(name: str, result: dict[str, Any]) -> str:
    def accuracy(key: str) -> str:
        return f"{100 * result[key]['mean']:.2f} ± {100 * result[key]['ci95']:.2f}"

    settings = ", ".join(f"{k}={v}" for k, v in result["settings"].items())
    return (f"| {name} | {settings} | {result['steps']} | "
            f"{result['train_cpu_seconds']:.0f} s ({result['train_seconds']:.0f} s) | "
            f"{accuracy('untrained')} | {accuracy('trained')} | "
            f"{result['eval_cpu_seconds']:.0f} s ({result['eval_seconds']:.0f} s) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", default=",".join(SHORT_RUNS))
    parser.add_argument("--episodes", type=int, default=150, help="test episodes")
    parser.add_argument("--report", type=Path, default=REPORT,
                        help="JSON report to merge the rows into")
    parser.add_argument("--out", type=Path, default=Path("runs/mini-imagenet-cpu"))
    parser.add_argument("--root", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the short runs (repeatable)")
    options = parser.parse_args()
    names = options.algorithms.split(",")
    unknown = [name for name in names if name not in SHORT_RUNS]
    if unknown:
        parser.error(f"no short run for {', '.join(unknown)}; pick from {', '.join(SHORT_RUNS)}")
    torch.set_num_threads(options.threads)
    print("| algorithm | short-run settings | steps | training, CPU (wall) | untrained (95% CI) "
          "| trained (95% CI) | evaluation, CPU (wall) |\n|---|---|---|---|---|---|---|",
          flush=True)
    overrides = parse_assignments(options.set)
    for name in names:
        result = measure(name, {**SHORT_RUNS[name], **overrides}, options.out, options.episodes,
                         options.root)
        print(row(name, result), flush=True)
        command = (f"python benchmarks/mini_imagenet_cpu.py --algorithms {name} "
                   f"--episodes {options.episodes} --threads {options.threads}"
                   + "".join(f" --set {assignment}" for assignment in options.set))
        record(options.report, name, result, command)


if __name__ == "__main__":
    main()
