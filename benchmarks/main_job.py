"""The README's main job, end to end and timed: fetch Omniglot, train Prototypical Networks
(5-way 1-shot), evaluate on the fixed test episodes; writes a JSON report.

    python benchmarks/main_job.py --out reports/main-job.json [--home DIR] [--episodes 1000]

Runs the real ``metactl`` commands of the README in a fresh data root (``--home``, default a
temporary folder) with the offline mirror ($METACTL_MIRROR) when set, and records the time of
each command, the test accuracy with its 95% CI and episode count, the training settings, the
CPU's flags, the torch version and the machine's load when it started.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from metactl.engine.device import cpu_flags, usable_cpus
from metactl.fileio import atomic_write


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run a command; its wall time in seconds and its stdout. Exits on failure."""
    started = time.perf_counter()
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if finished.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{finished.stderr}")
    return elapsed, finished.stdout


def main_job(home: Path, run: Path, episodes: int, quick: bool = False) -> dict[str, Any]:
    metactl = str(Path(sys.executable).with_name("metactl"))
    env = {**os.environ, "METACTL_HOME": str(home)}
    smaller = ["--set", "val_episodes=10", "--train-way", "5"] if quick else []
    commands = {
        "fetch": [metactl, "data", "fetch", "omniglot"],
        "train": [metactl, "train", "prototypical", "--way", "5", "--shot", "1", "--episodes",
                  str(episodes), *smaller, "--out", str(run)],
        "evaluate": [metactl, "evaluate", str(run), "--json",
                     *(["--episodes", "20"] if quick else [])],
    }
    load = os.getloadavg()
    seconds, output = {}, ""
    for stage, command in commands.items():
        seconds[stage], output = timed(command, env)
    result = json.loads(output)
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    return {
        "format": "metactl-main-job",
        # The run folder is temporary: the command names it RUN.
        "command": " && ".join(" ".join(["metactl", *c[1:]]) for c in commands.values())
        .replace(str(run), "RUN"),
        "seconds": {**{k: round(v, 1) for k, v in seconds.items()},
                    "total": round(sum(seconds.values()), 1)},
        "accuracy": result["mean"], "ci95": result["ci95"], "test_episodes": result["episodes"],
        "way": result["way"], "shot": result["shot"], "query": result["query"],
        "training": {key: config[key] for key in ("episodes", "train_way", "train_query", "lr",
                                                  "amp", "channels_last", "val_every",
                                                  "val_episodes")},
        "paper": 0.988,
        "machine": {"cpu_flags": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16",
                                                       "amx_bf16"}),
                    "usable_cpus": usable_cpus(),
                    "load_average_at_start": [round(value, 2) for value in load],
                    "torch": torch.__version__, "python": sys.version.split()[0]},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/main-job.json"))
    parser.add_argument("--home", type=Path, default=None,
                        help="data root to fetch into (default: a fresh temporary folder)")
    parser.add_argument("--episodes", type=int, default=1000, help="training episodes")
    parser.add_argument("--quick", action="store_true",
                        help="a rehearsal for tests: 5-way training, 20 test episodes")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        home = options.home or Path(scratch) / "home"
        report = main_job(home, Path(scratch) / "run", options.episodes, options.quick)
    with atomic_write(options.out, "choose a writable --out") as temporary:
        temporary.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{100 * report['accuracy']:.2f}% ± {100 * report['ci95']:.2f} "
          f"({report['test_episodes']} episodes) in {report['seconds']['total']:.0f} s; "
          f"wrote {options.out}")


if __name__ == "__main__":
    main()
