"""Training, evaluation and sampling speed: metactl against plain-PyTorch references of the same
model and task (benchmarks/references.py), in one process, interleaved, as ratios.

    python benchmarks/speed.py [--device cpu|cuda|all] [--only prototypical,maml] [--seconds 6]
                               [--amp auto|bf16|none] [--quick] [--json]

Each figure alternates short rounds of metactl and of the reference, so that a machine shared
with other work slows both alike; the ratio is the median of the rounds' ratios (above 1: metactl
is faster). metactl's step is ``Trainer.step`` (sampling, the plugin's meta-gradient, the outer
optimizer, metrics); the reference's is a hand-written loop. Before timing, both compute the loss
of one batch from the same weights, and the table says whether they agree ("same").

Needs Omniglot: `metactl data fetch omniglot` (the data root is $METACTL_HOME or --root).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import references  # noqa: E402

from metactl.engine.config import resolve_config  # noqa: E402
from metactl.engine.device import cpu_flags, keep_freed_memory  # noqa: E402
from metactl.engine.run import RunFolder  # noqa: E402
from metactl.engine.trainer import Trainer  # noqa: E402
from metactl.errors import MetactlError  # noqa: E402
from metactl.plugins import get_registry  # noqa: E402

TASK = {"way": 5, "shot": 1, "query": 15, "train_way": 5}
# The training task and step of each algorithm, as in its paper's Omniglot setting where that
# differs from 5-way 1-shot with 15 queries and one task per step.
WORKLOADS: dict[str, dict[str, Any]] = {
    "prototypical": {},
    "matching": {},
    "relation": {"train_query": 15},
    "siamese": {"train_query": 15},
    "maml": {"meta_batch": 32},
    "fomaml": {"meta_batch": 32},
    "reptile": {},
    "meta-lstm": {},
    "mann": {},
    "metanet": {},
}
EVALUATED = ("prototypical", "maml", "reptile")
EVALUATION_CHUNK = 16  # episodes per round: the evaluator's batch of tasks


@dataclass
class Comparison:
    """Rates of metactl and the reference over interleaved rounds, in tasks per second."""

    name: str
    unit: str
    ours: float
    reference: float
    ratio: float
    rounds: int
    same: str = "n/a"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def interleaved(ours: Callable[[], int], reference: Callable[[], int], seconds: float,
                rounds: int, synchronize: Callable[[], None]) -> tuple[float, float, float]:
    """Alternate ``rounds`` rounds of each (each at least one call, ``seconds / rounds / 2``
    long); returns the two rates (work per second) and the median of the per-round ratios."""
    totals = {ours: [0, 0.0], reference: [0, 0.0]}
    ratios = []
    for round_number in range(rounds):
        order = (ours, reference) if round_number % 2 == 0 else (reference, ours)
        rates = {}
        for work in order:
            done, started = 0, time.perf_counter()
            while True:
                done += work()
                synchronize()
                elapsed = time.perf_counter() - started
                if elapsed >= seconds / rounds / 2:
                    break
            totals[work][0] += done
            totals[work][1] += elapsed
            rates[work] = done / elapsed
        ratios.append(rates[ours] / rates[reference])
    return (totals[ours][0] / totals[ours][1], totals[reference][0] / totals[reference][1],
            statistics.median(ratios))


def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def build_trainer(name: str, settings: dict[str, Any], folder: Path, root: str | None,
                  ) -> Trainer:
    algorithm_class = get_registry().get(name)
    config = resolve_config(name, algorithm_class.defaults, {}, settings, {})
    return Trainer(algorithm_class(config), config, RunFolder(folder), lambda message: None,
                   show_progress=False, root=root)


def make_reference(name: str, trainer: Trainer) -> references.Reference:
    config, model = trainer.config, trainer.model
    split = trainer.tasks.train
    tasks = references.PlainTasks(split, int(config["train_way"]), int(config["train_shot"]),
                                  int(config["train_query"]))
    if name in ("maml", "fomaml"):
        return references.MAML(tasks, model, int(config["meta_batch"]),
                               int(config["inner_steps"]), int(config["test_inner_steps"]),
                               float(config["inner_lr"]), first_order=name == "fomaml")
    if name == "reptile":
        return references.Reptile(tasks, model, int(config["meta_batch"]),
                                  int(config["inner_steps"]), int(config["inner_batch_size"]),
                                  int(config["test_inner_steps"]),
                                  int(config["test_inner_batch_size"]), float(config["inner_lr"]))
    plain = {"prototypical": references.Prototypical, "matching": references.Matching,
             "relation": references.Relation, "siamese": references.Siamese}
    if name in plain:
        return plain[name](tasks, model)
    return references.EngineFree(tasks, model, trainer.algorithm, int(config["meta_batch"]),
                                 optimizer=str(config["optimizer"]), lr=float(config["lr"]),
                                 grad_clip=float(config["grad_clip"]))


def same_loss(name: str, trainer: Trainer, reference: references.Reference) -> str:
    """Whether the reference's loss on one sampled task equals metactl's, from the same weights
    ("n/a" where the loss draws random pairs, orders or mini-batches)."""
    if isinstance(reference, references.EngineFree) or name in ("siamese", "reptile"):
        return "n/a"
    batch = trainer.sampler.sample(1)
    trainer.model.train()
    reference.network.train()
    theirs = reference.loss(batch.support_images[0], batch.support_labels[0],
                            batch.query_images[0], batch.query_labels[0])
    with trainer.placement.autocast():
        ours = trainer.algorithm.loss(trainer.model, batch).loss.detach()
    theirs = theirs.detach()
    tolerance = 1e-2 if trainer.placement.mixed_precision else 1e-4
    close = abs(float(ours) - float(theirs)) <= tolerance * max(1.0, abs(float(theirs)))
    return "yes" if close else f"NO ({float(ours):.5f} vs {float(theirs):.5f})"


def compare_training(name: str, settings: dict[str, Any], root: str | None, seconds: float,
                     rounds: int) -> Comparison:
    with tempfile.TemporaryDirectory() as folder:
        trainer = build_trainer(name, settings, Path(folder) / "run", root)
        reference = make_reference(name, trainer)
        same = same_loss(name, trainer, reference)
        tasks_per_step = int(trainer.config["meta_batch"])

        def ours() -> int:
            trainer.step()
            return tasks_per_step

        for _ in range(2):  # warm-up: allocator, kernels, caches
            ours()
            reference.step()
        rate, reference_rate, ratio = interleaved(ours, reference.step, seconds, rounds,
                                                  synchronizer(trainer.placement.device))
    unit = "episodes/s" if tasks_per_step == 1 else "meta-it/s"
    scale = 1 if tasks_per_step == 1 else tasks_per_step
    note = "engine overhead only: same network" if isinstance(
        reference, references.EngineFree) else ""
    return Comparison(name, unit, rate / scale, reference_rate / scale, ratio, rounds, same,
                      note, {"placement": trainer.placement.describe(),
                             "tasks_per_step": tasks_per_step})


def compare_evaluation(name: str, settings: dict[str, Any], root: str | None, seconds: float,
                       rounds: int) -> Comparison:
    from metactl.data.episodes import EpisodeSet
    from metactl.data.manage import open_split
    from metactl.engine.evaluator import episode_accuracies

    with tempfile.TemporaryDirectory() as folder:
        trainer = build_trainer(name, settings, Path(folder) / "run", root)
        reference = make_reference(name, trainer)
        config = trainer.config
        device = trainer.placement.device
        split = open_split("omniglot", "test", root=root).to(device)
        episodes = EpisodeSet.draw(split, dataset="omniglot", scheme="vinyals", size=28, way=5,
                                   shot=1, query=15, episodes=EVALUATION_CHUNK * 8, seed=0)
        reference.tasks = references.PlainTasks(split, 5, 1, 15)
        trainer.model.eval()
        position = [0]

        def chunk() -> EpisodeSet:
            start = position[0] % episodes.episodes
            picked = slice(start, start + EVALUATION_CHUNK)
            return EpisodeSet(**{**asdict_shallow(episodes), "classes": episodes.classes[picked],
                                 "images": episodes.images[picked]})

        def ours() -> int:
            episode_accuracies(trainer.algorithm, trainer.model, split, chunk(), trainer.placement)
            return EVALUATION_CHUNK

        def theirs() -> int:
            start = position[0] % episodes.episodes
            reference.evaluate(episodes, range(start, start + EVALUATION_CHUNK))
            position[0] += EVALUATION_CHUNK
            return EVALUATION_CHUNK

        first = range(0, EVALUATION_CHUNK)
        mine = episode_accuracies(trainer.algorithm, trainer.model, split, chunk(),
                                  trainer.placement)
        other = reference.evaluate(episodes, first)
        agree = (mine - other).abs().max().item() <= 1.5 / 75  # one query of 75 may flip
        same = "yes" if agree else f"NO ({mine.mean():.3f} vs {other.mean():.3f})"
        rate, reference_rate, ratio = interleaved(ours, theirs, seconds, rounds,
                                                  synchronizer(device))
    return Comparison(f"evaluate {name}", "episodes/s", rate, reference_rate, ratio, rounds, same,
                      f"test episodes, {config.get('test_inner_steps', 0) or 'no'} inner steps",
                      {"placement": trainer.placement.describe()})


def asdict_shallow(episodes) -> dict[str, Any]:
    return {name: getattr(episodes, name) for name in episodes.__dataclass_fields__}


def compare_sampling(root: str | None, device: torch.device, tasks: int, seconds: float,
                     rounds: int) -> Comparison:
    from metactl.data.episodes import EpisodeSampler
    from metactl.data.manage import open_split

    split = open_split("omniglot", "train", root=root).to(device)
    sampler = EpisodeSampler(split, 5, 1, 15, seed=0)
    plain = references.PlainTasks(split, 5, 1, 15)

    def ours() -> int:
        sampler.sample(tasks)
        return tasks

    def theirs() -> int:
        for _ in range(tasks):
            plain.sample()
        return tasks

    rate, reference_rate, ratio = interleaved(ours, theirs, seconds, rounds,
                                              synchronizer(device))
    return Comparison(f"sample {tasks} task{'s' if tasks > 1 else ''}", "tasks/s", rate,
                      reference_rate, ratio, rounds, "n/a",
                      "5-way 1-shot 15 queries; reference: one class at a time, torch.rot90")


def machine(device: torch.device) -> dict[str, Any]:
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    described = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                 "cpu_flags": flags, "device": str(device)}
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
    return described


def learn2learn_note() -> str:
    try:
        import learn2learn  # noqa: F401
    except ImportError:
        return ("learn2learn is not installed (optional `bench` extra; see docs/performance.md): "
                "its loops were not run")
    return "learn2learn is installed, but this benchmark does not drive its loops yet"


def run(options: argparse.Namespace) -> dict[str, Any]:
    keep_freed_memory()
    if options.threads:
        torch.set_num_threads(options.threads)
    devices = ["cpu", "cuda"] if options.device == "all" else [options.device]
    devices = [name for name in devices if name == "cpu" or torch.cuda.is_available()]
    names = options.only.split(",") if options.only else list(WORKLOADS)
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    seconds, rounds = (0.2, 2) if options.quick else (options.seconds, options.rounds)
    report: dict[str, Any] = {"results": [], "learn2learn": learn2learn_note()}
    for device_name in devices:
        device = torch.device(device_name)
        report.setdefault("machines", []).append(machine(device))
        for name in names:
            settings = {**TASK, **WORKLOADS[name], "device": device_name, "val_episodes": 0,
                        "episodes": 10**9, "amp": options.amp}
            if options.quick:
                settings.update(quick_settings(name))
            results = [compare_training(name, settings, options.root, seconds, rounds)]
            if name in EVALUATED:
                results.append(compare_evaluation(name, settings, options.root, seconds, rounds))
            for result in results:
                result.extra["device"] = device_name
                report["results"].append(result)
                print_row(result, header=len(report["results"]) == 1, json_mode=options.json)
        for tasks in (1, 32):
            result = compare_sampling(options.root, device, tasks, seconds, rounds)
            result.extra["device"] = device_name
            report["results"].append(result)
            print_row(result, header=False, json_mode=options.json)
    return report


def quick_settings(name: str) -> dict[str, Any]:
    """Tiny steps for the CI test: fewer tasks per step, inner steps and pairs."""
    return {"maml": {"meta_batch": 2}, "fomaml": {"meta_batch": 2},
            "reptile": {"meta_batch": 2, "inner_steps": 2, "test_inner_steps": 2},
            "mann": {"meta_batch": 2, "train_shot": 3},
            "meta-lstm": {"inner_epochs": 2}}.get(name, {})


def print_row(result: Comparison, header: bool, json_mode: bool = False) -> None:
    """One table row, on stdout; with ``--json``, on stderr as progress."""
    stream = sys.stderr if json_mode else sys.stdout
    if header:
        print(f"{'workload':<22}{'device':<7}{'metactl':>12}{'reference':>12}{'ratio':>8}  "
              f"{'unit':<11}{'same':<6}note", file=stream)
    print(f"{result.name:<22}{result.extra.get('device', ''):<7}{result.ours:>12.2f}"
          f"{result.reference:>12.2f}{result.ratio:>8.2f}  {result.unit:<11}{result.same:<6}"
          f"{result.note}", file=stream, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "all"))
    parser.add_argument("--only", default="", help="comma-separated workloads (default: all)")
    parser.add_argument("--seconds", type=float, default=6.0, help="time per figure")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds per figure")
    parser.add_argument("--amp", default="auto", help="amp setting of metactl's runs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all)")
    parser.add_argument("--root", default=None, help="data root (default: $METACTL_HOME)")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for tests")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    options = parser.parse_args(argv)
    try:
        report = run(options)
    except MetactlError as error:
        raise SystemExit(f"{error.one_line()} (this benchmark needs `metactl data fetch "
                         "omniglot`)") from None
    if options.json:
        report["results"] = [asdict(result) for result in report["results"]]
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(report["learn2learn"])
        print(f"machine: {json.dumps(report['machines'])}")


if __name__ == "__main__":
    main()
