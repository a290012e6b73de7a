"""Meta-iterations per second of MAML (meta-batch 32) in 1, 2, ... processes under torchrun.

Each configuration runs in its own job started with torchrun's launcher: the same global
meta-batch of 32 Omniglot 5-way 1-shot tasks (second-order MAML, the paper's strided Conv-4,
one inner step), split across the processes, gradients averaged. The first steps warm up; the
next ones are timed between barriers. The speed-up is against one process in the same run, and
the efficiency is the speed-up over the ideal one: the number of processes when each brings a
GPU of its own, 1 on a CPU, where one process already has all the cores (as threads) and two
processes have one core each.

    python benchmarks/distributed.py [--processes 1,2] [--device cpu] [--steps 20]
    python benchmarks/distributed.py --device cuda          # 1, 2, ... up to every GPU

On a CPU the point is correctness, not speed: expect a speed-up of about 1.0 (the same cores do
the same arithmetic, plus one all-reduce per step). Needs the Omniglot store:
`metactl data fetch omniglot`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

WARMUP = 3


def parse_arguments(arguments: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", help="comma-separated process counts (default: 1,2 on "
                        "the CPU, 1 .. the number of GPUs with --device cuda)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--root", help="data root (default: $METACTL_HOME)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # result file of one job
    return parser.parse_args(arguments)


def process_counts(options: argparse.Namespace) -> list[int]:
    if options.processes:
        return [int(count) for count in options.processes.split(",")]
    if options.device == "cuda":
        import torch

        return list(range(1, torch.cuda.device_count() + 1))
    return [1, 2]


def worker(options: argparse.Namespace) -> None:
    """One process of a job: train MAML for WARMUP + steps steps, rank 0 saves the rate."""
    import torch

    from metactl.engine.config import resolve_config
    from metactl.engine.distributed import joined
    from metactl.engine.run import RunFolder
    from metactl.engine.trainer import Trainer
    from metactl.plugins import get_registry

    maml = get_registry().get("maml")
    settings = {"meta_batch": options.meta_batch, "device": options.device,
                "episodes": 10**9, "val_every": 10**9, "val_episodes": 0}
    config = resolve_config("maml", maml.defaults, {}, settings, {})
    with joined(options.device) as cluster, tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(maml(config), config, RunFolder(Path(folder)),
                          report=lambda message: None, show_progress=False, root=options.root)
        for _ in range(WARMUP):
            trainer._one_step()
        cluster.barrier()
        started = time.perf_counter()
        for _ in range(options.steps):
            trainer._one_step()
        if options.device == "cuda":
            torch.cuda.synchronize()
        cluster.barrier()
        elapsed = time.perf_counter() - started
    if cluster.is_main:
        Path(options.worker).write_text(json.dumps({
            "processes": cluster.world_size, "threads": torch.get_num_threads(),
            "rate": options.steps / elapsed}))


def run_job(processes: int, options: argparse.Namespace, threads: int) -> dict:
    """Start ``processes`` workers with torchrun's launcher and return rank 0's result."""
    from torch.distributed.run import get_args_parser, run

    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        os.environ["OMP_NUM_THREADS"] = str(threads)
        arguments = [__file__, "--worker", str(result), "--device", options.device,
                     "--steps", str(options.steps), "--meta-batch", str(options.meta_batch)]
        if options.root:
            arguments += ["--root", options.root]
        run(get_args_parser().parse_args(["--standalone", f"--nproc-per-node={processes}",
                                          *arguments]))
        return json.loads(result.read_text())


def main() -> int:
    options = parse_arguments()
    if options.worker:
        worker(options)
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    counts = process_counts(options)
    print(f"MAML (2nd order, strided Conv-4, 1 inner step), Omniglot 5-way 1-shot, global "
          f"meta-batch {options.meta_batch}, {options.device}; {options.steps} timed steps "
          f"after {WARMUP} warm-up steps; {cores} cores")
    print(f"{'processes':>9} {'threads':>7} {'meta-it/s':>9} {'speed-up':>8} {'efficiency':>10}")
    baseline = None
    for processes in counts:
        threads = max(1, cores // processes) if options.device == "cpu" else 1
        result = run_job(processes, options, threads)
        baseline = baseline or result["rate"]  # the first row, one process by default
        speedup = result["rate"] / baseline
        ideal = processes if options.device == "cuda" else 1
        print(f"{processes:>9} {result['threads']:>7} {result['rate']:>9.2f} {speedup:>8.2f} "
              f"{speedup / ideal:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
