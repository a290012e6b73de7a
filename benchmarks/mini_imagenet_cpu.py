"""Every built-in algorithm on mini-ImageNet in a short CPU run, against its untrained model.

For each algorithm: the model as initialised (seed 0, saved before any step) and the model after
a short training run are evaluated on the same fixed 5-way 1-shot test episodes (15 queries per
class, seed 0, 95% CI). Times are CPU seconds of this process (and wall seconds), so that a
machine shared with other work still gives comparable figures. The runs are scaled down to
minutes on one CPU thread (fewer filters, 5-way training episodes, few steps); the settings
are printed with the results. The store must
exist: `metactl data fetch mini-imagenet --mirror DIR`.

    python benchmarks/mini_imagenet_cpu.py [--algorithms prototypical,maml] [--episodes 150]
        [--out runs/mini-imagenet-cpu] [--root DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from metactl.engine.config import resolve_config
from metactl.engine.evaluator import evaluate_run
from metactl.engine.run import RunFolder
from metactl.engine.trainer import Trainer, train
from metactl.plugins import get_registry

QUIET = {"device": "cpu", "val_episodes": 0, "val_every": 100_000, "seed": 0,
         "dataset": "mini-imagenet", "way": 5, "shot": 1, "query": 15}
# A short CPU run per algorithm: 5-way training episodes with few queries and filters.
SHORT_RUNS: dict[str, dict[str, Any]] = {
    "prototypical": {"hidden": 16, "train_way": 5, "train_query": 5, "episodes": 1000},
    "matching": {"hidden": 16, "fce": False, "train_way": 5, "train_query": 5,
                 "episodes": 1000},
    "relation": {"hidden": 16, "train_query": 5, "episodes": 1000, "lr_decay_every": 0},
    "siamese": {"hidden": 16, "train_way": 10, "train_query": 3, "pairs": 64, "episodes": 500},
    "nearest-neighbor": {"hidden": 16, "train_way": 16, "train_shot": 2, "train_query": 0,
                         "augment": False, "episodes": 1500},
    "finetune": {"hidden": 16, "train_way": 16, "train_shot": 2, "train_query": 0,
                 "augment": False, "finetune_steps": 50, "episodes": 1500},
    "maml": {"hidden": 16, "train_query": 5, "inner_steps": 1, "test_inner_steps": 5,
             "meta_batch": 4, "episodes": 600},
    "fomaml": {"hidden": 16, "train_query": 5, "inner_steps": 1, "test_inner_steps": 5,
               "meta_batch": 4, "episodes": 1200},
    "reptile": {"hidden": 16, "train_shot": 5, "inner_steps": 4, "test_inner_steps": 20,
                "meta_batch": 5, "episodes": 500},
    "meta-lstm": {"hidden": 16, "train_query": 5, "inner_epochs": 3, "episodes": 300},
    "mann": {"controller_size": 100, "memory_slots": 64, "train_shot": 5, "meta_batch": 8,
             "optimizer": "adam", "lr": 1e-3, "episodes": 1600},
    "metanet": {"hidden": 16, "train_query": 5, "episodes": 300},
}


def untrained_run(name: str, config: dict[str, Any], folder: Path, root: str | None) -> None:
    """Save the model as initialised, the way a finished run is saved, without any step."""
    algorithm = get_registry().get(name)(config)
    run = RunFolder(folder)
    trainer = Trainer(algorithm, config, run, report=lambda message: None, show_progress=False,
                      root=root)
    run.write_config(config)
    trainer.save_last()


def measure(name: str, settings: dict[str, Any], out: Path, episodes: int,
            root: str | None) -> dict[str, Any]:
    config = resolve_config(name, get_registry().get(name).defaults, {},
                            {**QUIET, **settings}, {})
    untrained_run(name, config, out / f"{name}-untrained", root)
    before = evaluate_run(out / f"{name}-untrained", episodes=episodes, root=root)
    started, cpu = time.perf_counter(), time.process_time()
    run, state = train(name, config, out=out / name, root=root, report=lambda message: None,
                       show_progress=False)
    trained = {"train_seconds": round(time.perf_counter() - started, 1),
               "train_cpu_seconds": round(time.process_time() - cpu, 1)}
    started, cpu = time.perf_counter(), time.process_time()
    after = evaluate_run(run.path, episodes=episodes, root=root)
    return {"algorithm": name, "settings": settings, "steps": state.step, **trained,
            "eval_seconds": round(time.perf_counter() - started, 1),
            "eval_cpu_seconds": round(time.process_time() - cpu, 1),
            "untrained": before.to_json(), "trained": after.to_json()}


def row(result: dict[str, Any]) -> str:
    def accuracy(key: str) -> str:
        return f"{100 * result[key]['mean']:.2f} ± {100 * result[key]['ci95']:.2f}"

    settings = ", ".join(f"{k}={v}" for k, v in result["settings"].items())
    return (f"| {result['algorithm']} | {settings} | {result['steps']} | "
            f"{result['train_cpu_seconds']:.0f} s ({result['train_seconds']:.0f} s) | "
            f"{accuracy('untrained')} | {accuracy('trained')} | "
            f"{result['eval_cpu_seconds']:.0f} s ({result['eval_seconds']:.0f} s) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", default=",".join(SHORT_RUNS))
    parser.add_argument("--episodes", type=int, default=150, help="test episodes")
    parser.add_argument("--out", type=Path, default=Path("runs/mini-imagenet-cpu"))
    parser.add_argument("--root", default=None)
    parser.add_argument("--threads", type=int, default=1)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    print("| algorithm | short-run settings | steps | training, CPU (wall) | untrained (95% CI) "
          "| trained (95% CI) | evaluation, CPU (wall) |\n|---|---|---|---|---|---|---|",
          flush=True)
    results = []
    for name in options.algorithms.split(","):
        result = measure(name, SHORT_RUNS[name], options.out, options.episodes, options.root)
        results.append(result)
        print(row(result), flush=True)
        options.out.mkdir(parents=True, exist_ok=True)
        (options.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
