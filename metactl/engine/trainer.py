"""Meta-training: the loop every algorithm shares."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from metactl.algorithm import Algorithm
from metactl.engine.checkpoint import load_checkpoint, save_checkpoint
from metactl.engine.device import Placement, placement_for
from metactl.engine.distributed import current, joined
from metactl.engine.run import RunFolder
from metactl.engine.tasks import TaskSource, load_tasks
from metactl.errors import UsageError

Report = Callable[[str], None]


@dataclass
class TrainingState:
    step: int
    best_score: float  # validation accuracy, or minus the validation error for regression
    best_step: int


def default_run_folder(config: dict[str, Any]) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / (f"{config['algorithm']}-{config['dataset']}-{config['way']}way-"
                           f"{config['shot']}shot-{stamp}")


def build_optimizer(model: torch.nn.Module, config: dict[str, Any]):
    parameters = [p for p in model.parameters() if p.requires_grad]
    lr, decay = float(config["lr"]), float(config["weight_decay"])
    if config["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=lr, momentum=float(config["momentum"]),
                                    weight_decay=decay)
    elif config["optimizer"] == "rmsprop":
        optimizer = torch.optim.RMSprop(parameters, lr=lr, weight_decay=decay)
    else:
        optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=decay)
    every = int(config["lr_decay_every"])
    gamma = float(config["lr_decay"]) if every > 0 else 1.0
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(every, 1), gamma=gamma)
    return optimizer, schedule


class Trainer:
    """Runs meta-training for one run folder; resumable step by step."""

    def __init__(self, algorithm: Algorithm, config: dict[str, Any], run: RunFolder,
                 report: Report, show_progress: bool = True, mirror: str | None = None,
                 root: str | None = None) -> None:
        self.cluster = current()
        self.cluster.check_meta_batch(int(config["meta_batch"]))
        self.algorithm, self.config, self.run = algorithm, config, run
        self.report = self.cluster.main_only(report)
        self.show_progress = show_progress and self.cluster.is_main
        self.placement: Placement = placement_for(config, algorithm.device)
        with self.cluster.leader_first():
            self.tasks: TaskSource = load_tasks(config, self.placement.device, mirror, root,
                                                self.report)
        self.spec = self.tasks.spec
        if self.spec.task not in algorithm.tasks:
            raise UsageError(f"{algorithm.name} does not handle {self.spec.task} tasks "
                             f"({config['dataset']})", "pick an image dataset such as omniglot")
        self.sampler = self.tasks.sampler
        torch.manual_seed(int(config["seed"]))
        self.model = algorithm.build_model(self.spec).to(self.placement.device)
        self.cluster.prepare_model(self.model, algorithm)
        if self.placement.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.step_model = torch.compile(self.model) if self.placement.compile else self.model
        self.optimizer, self.schedule = build_optimizer(self.model, config)
        self.state = TrainingState(step=0, best_score=-math.inf, best_step=0)
        self._stop_requested = False  # agreed by every rank after each step
        self._stop_signalled = False  # Ctrl-C reached this process
        self._saved_step: int | None = None  # the step last.pt holds, once written or read

    @property
    def total_steps(self) -> int:
        return math.ceil(int(self.config["episodes"]) / int(self.config["meta_batch"]))

    # --- checkpoints -------------------------------------------------------------------------

    def _payload(self, model_only: bool = False) -> dict[str, Any]:
        payload = {
            "algorithm": self.algorithm.name,
            "dataset": self.config["dataset"],
            "model": self.model.state_dict(),
            "image_shape": list(self.spec_shape()),
            "num_train_classes": self.spec.num_train_classes,
            "task": self.spec.task,
            "invert": self.tasks.invert,
            "step": self.state.step,
            "world_size": self.cluster.world_size,
        }
        if model_only:
            return payload
        return {**payload,
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "sampler_rng": self.sampler.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "best_score": self.state.best_score,
                "best_step": self.state.best_step}

    def spec_shape(self) -> tuple[int, int, int]:
        return (self.spec.channels, self.spec.height, self.spec.width)

    def save_last(self) -> None:
        if self.cluster.is_main:
            save_checkpoint(self.run.last, self._payload())
        self._saved_step = self.state.step

    def resume(self) -> None:
        """Restore everything from ``last.pt`` so the run continues as if never stopped."""
        checkpoint = load_checkpoint(self.run.last)
        if checkpoint.get("algorithm") != self.algorithm.name:
            raise UsageError(f"{self.run.path} was trained with {checkpoint.get('algorithm')!r}",
                             "resume it with the same algorithm")
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["schedule"])
        self.sampler.generator.set_state(checkpoint["sampler_rng"])
        torch.set_rng_state(checkpoint["torch_rng"])
        self.state = TrainingState(int(checkpoint["step"]), float(checkpoint["best_score"]),
                                   int(checkpoint["best_step"]))
        self._saved_step = self.state.step
        if self.cluster.is_main:
            self.run.truncate_metrics(self.state.step)

    # --- the loop ----------------------------------------------------------------------------

    def train(self) -> TrainingState:
        self.report(f"training {self.algorithm.name} on {self.config['dataset']} "
                    f"({self.config['train_way']}-way {self.config['train_shot']}-shot, "
                    f"{self.total_steps} steps of {self.config['meta_batch']} tasks) on "
                    f"{self.placement.describe()}; run folder {self.run.path}")
        with self._graceful_interrupt(), self._progress() as advance:
            while self.state.step < self.total_steps and not self._stop_requested:
                record = self._one_step()
                advance(record)
                if self._due(int(self.config["val_every"])):
                    self._validate_and_save()
        if self._stop_requested:
            self.save_last()
            self.report(f"stopped at step {self.state.step}; continue with "
                        f"`metactl train --resume {self.run.path}`")
        elif self._saved_step != self.state.step:
            self._validate_and_save()
        return self.state

    def _due(self, every: int) -> bool:
        return self.state.step % every == 0 or self.state.step == self.total_steps

    def _one_step(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.cluster.seed_step(int(self.config["seed"]), self.state.step)
        batch = self.cluster.sample(self.sampler, int(self.config["meta_batch"]))
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.algorithm.progress = self.state.step / self.total_steps
        with self.placement.autocast():
            result = self.algorithm.meta_gradient(self.step_model, batch)
        self.cluster.average_gradients(self.model)
        if float(self.config["grad_clip"]) > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.config["grad_clip"]))
        self.optimizer.step()
        self.schedule.step()
        self.state.step += 1
        logged, self._stop_requested = self.cluster.average(
            {"loss": float(result.loss.detach()), "accuracy": result.accuracy, **result.extra},
            self._stop_signalled)
        loss = logged["loss"]
        if not math.isfinite(loss):
            raise UsageError(f"the training loss became {loss} at step {self.state.step}",
                             "lower the learning rate (--lr) or try --set amp=none")
        record = {"step": self.state.step, **logged, "lr": self.schedule.get_last_lr()[0],
                  "seconds": time.perf_counter() - started}
        if self._due(max(1, int(self.config["val_every"]) // 10)) and self.cluster.is_main:
            self.run.append_metrics({"kind": "train", **record})
        return record

    def _validate_and_save(self) -> None:
        self.model.eval()
        result = self.tasks.validate(self.algorithm, self.model, self.placement)
        if result is not None and self.cluster.is_main:
            self.run.append_metrics({"kind": "val", "step": self.state.step,
                                     result.metric: result.mean, "ci95": result.ci95,
                                     "episodes": result.episodes})
            score = result.mean if self.tasks.higher_is_better else -result.mean
        if result is not None:
            score = result.mean if self.tasks.higher_is_better else -result.mean
            if score > self.state.best_score:
                self.state.best_score, self.state.best_step = score, self.state.step
                if self.cluster.is_main:
                    save_checkpoint(self.run.best, self._payload(model_only=True))
            self.report(f"step {self.state.step}/{self.total_steps}: validation "
                        f"{result.describe()} (best at step {self.state.best_step})")
        self.save_last()

    @contextmanager
    def _graceful_interrupt(self):
        """The first Ctrl-C finishes the current step, saves and stops; a second one aborts."""

        def request_stop(signum, frame):
            if self._stop_signalled:
                raise KeyboardInterrupt
            self._stop_signalled = True
            self.report("stopping after this step (Ctrl-C again to abort without saving)")

        try:
            previous = signal.signal(signal.SIGINT, request_stop)
        except ValueError:  # not the main thread: no signal handling
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @contextmanager
    def _progress(self):
        if not self.show_progress:
            yield lambda record: None
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        if not console.is_terminal:
            yield lambda record: None
            return
        columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[accuracy]:.1%} "
                              "{task.fields[speed]:.0f} tasks/s"), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("train", total=self.total_steps,
                                     completed=self.state.step, loss=0.0, accuracy=0.0, speed=0.0)
            tasks_per_step = int(self.config["meta_batch"])

            def advance(record: dict[str, Any]) -> None:
                progress.update(task, completed=record["step"], loss=record["loss"],
                                accuracy=record["accuracy"] or 0.0,
                                speed=tasks_per_step / max(record["seconds"], 1e-9))

            yield advance


def train(algorithm_name: str, config: dict[str, Any], *, out: Path | None = None,
          resume: Path | None = None, mirror: str | None = None, root: str | None = None,
          report: Report = print, show_progress: bool = True,
          allow_world_size_change: bool = False) -> tuple[RunFolder, TrainingState]:
    """Train ``algorithm_name`` with a resolved ``config``; return the run and its final state.

    Under torchrun, every process calls this; they train data-parallel and rank 0 alone writes
    the run folder (:mod:`metactl.engine.distributed`).
    """
    from metactl.plugins import get_registry

    algorithm = get_registry().get(algorithm_name)(config)
    with joined(str(config["device"])) as cluster:
        run = RunFolder(Path(resume) if resume else Path(out) if out
                        else default_run_folder(config))
        if not resume and run.last.is_file():
            raise UsageError(f"{run.path} already holds a run",
                             f"resume it with `metactl train --resume {run.path}` "
                             "or pick another --out")
        if resume:  # before the data is loaded
            cluster.check_resume(load_checkpoint(run.last), run.path, allow_world_size_change)
        trainer = Trainer(algorithm, config, run, report, show_progress, mirror=mirror,
                          root=root)
        if resume:
            trainer.resume()
        if cluster.is_main:
            run.write_config(config)
        return run, trainer.train()
