"""Training-step rates of metactl's fast paths on one GPU: plain eager steps against the step
replayed from a CUDA graph, one task and 32 tasks per step, float32 and bf16.

    python benchmarks/gpu_speed.py --out fast-paths.json [--device cuda] [--seconds 4] [--tiny]

Each figure is ``Trainer.step`` (sampling on the device from the uint8 store, the meta-gradient,
the fused optimizer) over ``--seconds``, after warm-up; settings differ only in ``cuda_graphs``,
``amp`` and ``meta_batch``. ``--tiny`` runs two small workloads briefly, on the CPU when there
is no GPU (where ``cuda_graphs`` runs the CPU twin), so that a test can exercise the script.
Needs Omniglot (`metactl data fetch omniglot`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import TASK, build_trainer, machine  # noqa: E402

from metactl.engine.device import keep_freed_memory  # noqa: E402
from metactl.fileio import atomic_write  # noqa: E402

# (label, algorithm, settings); targets on one H100/H200 from issue 15 where there is one.
WORKLOADS: list[tuple[str, str, dict[str, Any], float | None]] = [
    ("ProtoNet 1 task/step fp32", "prototypical", {"cuda_graphs": False, "amp": "none"}, None),
    ("ProtoNet 1 task/step fp32 graph", "prototypical", {"cuda_graphs": True, "amp": "none"},
     1000.0),
    ("ProtoNet 1 task/step bf16 graph", "prototypical", {"cuda_graphs": True, "amp": "bf16"},
     1000.0),
    ("ProtoNet 32 tasks/step fp32", "prototypical",
     {"meta_batch": 32, "cuda_graphs": False, "amp": "none"}, None),
    ("ProtoNet 32 tasks/step bf16 graph", "prototypical",
     {"meta_batch": 32, "cuda_graphs": True, "amp": "bf16"}, 4000.0),
    ("Matching 1 task/step graph", "matching", {"cuda_graphs": True}, None),
    ("Relation 1 task/step graph", "relation", {"cuda_graphs": True}, None),
    ("MAML 2nd order mb32 eager", "maml", {"meta_batch": 32, "cuda_graphs": False}, None),
    ("MAML 2nd order mb32 graph", "maml", {"meta_batch": 32, "cuda_graphs": True}, 50.0 * 32),
    ("FOMAML mb32 eager", "fomaml", {"meta_batch": 32, "cuda_graphs": False}, None),
    ("FOMAML mb32 graph", "fomaml", {"meta_batch": 32, "cuda_graphs": True}, 200.0 * 32),
    ("MANN mb16 eager", "mann", {}, None),
    ("MetaNet 1 task/step eager", "metanet", {}, None),
]
TINY = [("ProtoNet 1 task/step", "prototypical", {"cuda_graphs": True}, None),
        ("FOMAML mb2", "fomaml", {"meta_batch": 2, "cuda_graphs": True}, None)]


def measure(name: str, settings: dict[str, Any], device: str, seconds: float,
            root: str | None) -> dict[str, Any]:
    """Tasks per second of ``Trainer.step`` with these settings."""
    with tempfile.TemporaryDirectory() as folder:
        trainer = build_trainer(name, {**TASK, **settings, "device": device, "val_episodes": 0,
                                       "episodes": 10**9}, Path(folder) / "run", root)
        tasks = int(trainer.config["meta_batch"])
        for _ in range(5):
            trainer.step()
        steps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            trainer.step()
            steps += 1
        if trainer.placement.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        peak = (torch.cuda.max_memory_allocated() / 2**20
                if trainer.placement.device.type == "cuda" else None)
        return {"tasks_per_second": steps * tasks / elapsed, "steps_per_second": steps / elapsed,
                "tasks_per_step": tasks, "placement": trainer.placement.describe(),
                "peak_mib": peak}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=4.0, help="time per figure")
    parser.add_argument("--root", default=None, help="data root (default: $METACTL_HOME)")
    parser.add_argument("--tiny", action="store_true", help="two small workloads, briefly")
    options = parser.parse_args(argv)
    keep_freed_memory()
    workloads, seconds = (TINY, 0.3) if options.tiny else (WORKLOADS, options.seconds)
    results = []
    for label, name, settings, target in workloads:
        try:
            figure = measure(name, settings, options.device, seconds, options.root)
        except Exception as error:  # one failing path must not hide the others' figures
            figure = {"error": f"{type(error).__name__}: {error}",
                      "traceback": traceback.format_exc(limit=4)}
        figure.update({"workload": label, "algorithm": name, "settings": settings,
                       "target_tasks_per_second": target})
        results.append(figure)
        rate = figure.get("tasks_per_second")
        print(f"{label:<36}" + (f"{rate:>10.1f} tasks/s  {figure['placement']}" if rate
                                 else f"  failed: {figure['error']}"), flush=True)
    report = {"machine": machine(torch.device(options.device)), "results": results}
    with atomic_write(options.out, "choose a writable --out") as temporary:
        temporary.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
