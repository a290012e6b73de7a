"""Meta-training: the loop every algorithm shares."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from metactl.algorithm import Algorithm
from metactl.engine.checkpoint import load_checkpoint, save_checkpoint
from metactl.engine.device import Placement, placement_for
from metactl.engine.distributed import current, joined
from metactl.engine.graphs import gradient_step
from metactl.engine.run import RunFolder
from metactl.engine.tasks import TaskSource, load_tasks
from metactl.errors import DataError, Interrupted, UsageError
from metactl.fileio import check_output_folder
from metactl.loggers import LoggerSet, check_loggers

Report = Callable[[str], None]


@dataclass
class TrainingState:
    step: int
    best_score: float  # validation accuracy, or minus the validation error for regression
    best_step: int
    seconds: float = 0.0  # wall time of training so far, validation included, over all calls


def default_run_folder(config: dict[str, Any]) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / (f"{config['algorithm']}-{config['dataset']}-{config['way']}way-"
                           f"{config['shot']}shot-{stamp}")


def build_optimizer(model: torch.nn.Module, config: dict[str, Any], fused: bool = False):
    """The outer optimizer and its schedule; ``fused``: one kernel for all parameters (CUDA)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    lr, decay = float(config["lr"]), float(config["weight_decay"])
    kernels = {"fused": True} if fused else {}
    if config["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=lr, momentum=float(config["momentum"]),
                                    weight_decay=decay, **kernels)
    elif config["optimizer"] == "rmsprop":
        # A run saved before rmsprop_alpha existed resumes with its optimizer state's own.
        optimizer = torch.optim.RMSprop(parameters, lr=lr,
                                        alpha=float(config.get("rmsprop_alpha", 0.99)),
                                        momentum=float(config["momentum"]), weight_decay=decay)
    else:
        optimizer = torch.optim.Adam(parameters, lr=lr, weight_decay=decay, **kernels)
    every = int(config["lr_decay_every"])
    gamma = float(config["lr_decay"]) if every > 0 else 1.0
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(every, 1), gamma=gamma)
    return optimizer, schedule


class Trainer:
    """Runs meta-training for one run folder; resumable step by step."""

    def __init__(self, algorithm: Algorithm, config: dict[str, Any], run: RunFolder,
                 report: Report, show_progress: bool = True, mirror: str | None = None,
                 root: str | None = None, deadline: float | None = None) -> None:
        self.cluster = current()
        self.cluster.check_meta_batch(int(config["meta_batch"]))
        self.algorithm, self.config, self.run = algorithm, config, run
        self.deadline = deadline  # a time.monotonic() value; training stops at the next step
        self.report = self.cluster.main_only(report)
        self.show_progress = show_progress and self.cluster.is_main
        self.placement: Placement = placement_for(config, algorithm.device)
        if self.cluster.is_distributed:
            # A captured graph holds its own .grad tensors, which averaging replaces, and would
            # capture batch norm's collectives.
            self.placement = replace(self.placement, cuda_graphs=False)
        config.update(self.placement.settings())  # config.yaml records what "auto" chose
        with self.cluster.leader_first():
            self.tasks: TaskSource = load_tasks(config, self.placement.device, mirror, root,
                                                self.report)
        self.spec = self.tasks.spec
        if self.spec.task not in algorithm.tasks:
            raise UsageError(f"{algorithm.name} does not handle {self.spec.task} tasks "
                             f"({config['dataset']})", "pick an image dataset (metactl data list)")
        self.sampler = self.tasks.sampler
        torch.manual_seed(int(config["seed"]))
        self.model = algorithm.build_model(self.spec).to(self.placement.device)
        self.cluster.prepare_model(self.model, algorithm)
        if self.placement.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.step_model = torch.compile(self.model) if self.placement.compile else self.model
        self.optimizer, self.schedule = build_optimizer(
            self.model, config, fused=self.placement.device.type == "cuda")
        self.meta_gradient = gradient_step(algorithm, self.step_model, self.optimizer,
                                           self.placement)
        self.state = TrainingState(step=0, best_score=-math.inf, best_step=0)
        self._stop_signalled = False  # Ctrl-C reached this process
        self._stop_agreed = False  # under torchrun: it reached some rank by the last step's end
        self._saved_step: int | None = None  # the step last.pt holds, once written or read
        self.loggers = LoggerSet([])  # --set logger=...; opened by train()
        self.console_log: Report | None = None  # console.log; progress lines go there too

    @property
    def stop_requested(self) -> bool:
        """Ctrl-C asked to stop: in this process, or under torchrun in any process by the end
        of the last step (so that every rank stops after the same step)."""
        return self._stop_agreed if self.cluster.is_distributed else self._stop_signalled

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
            "normalisation": getattr(self.tasks, "normalisation", None),
            "step": self.state.step,
            "train_seconds": self.state.seconds,
            "statistics": self.algorithm.statistics,
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

    def describe_placement(self) -> str:
        """The device and settings, and the number of processes under torchrun."""
        processes = self.cluster.world_size
        return self.placement.describe() + (f", {processes} processes" if processes > 1 else "")

    def spec_shape(self) -> tuple[int, int, int]:
        return (self.spec.channels, self.spec.height, self.spec.width)

    def save_last(self) -> None:
        try:
            if self.cluster.is_main:
                save_checkpoint(self.run.last, self._payload())
        except DataError as error:
            raise DataError(f"{error.message}; {self._where_to_continue()}", error.hint) from None
        self._saved_step = self.state.step

    def _where_to_continue(self) -> str:
        """What is on disk after a failure, and how to go on from it."""
        if self._saved_step is not None:
            return (f"the last checkpoint is from step {self._saved_step}; continue with "
                    f"`metactl train --resume {self.run.path}`")
        return "no checkpoint was saved, so the run must start again"

    def resume(self, checkpoint: dict[str, Any]) -> None:
        """Restore everything from a ``last.pt`` (checked by :func:`resume_point`) so the run
        continues as if never stopped."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["schedule"])
        self.sampler.generator.set_state(checkpoint["sampler_rng"])
        torch.set_rng_state(checkpoint["torch_rng"])
        self.state = TrainingState(int(checkpoint["step"]), float(checkpoint["best_score"]),
                                   int(checkpoint["best_step"]),
                                   float(checkpoint.get("train_seconds", 0.0)))
        self._saved_step = self.state.step
        self.algorithm.statistics = dict(checkpoint.get("statistics", {}))
        if self.cluster.is_main:
            self.run.truncate_metrics(self.state.step)

    # --- the loop ----------------------------------------------------------------------------

    def train(self) -> TrainingState:
        self.report(f"training {self.algorithm.name} on {self.config['dataset']} "
                    f"({self.config['train_way']}-way {self.config['train_shot']}-shot, "
                    f"{self.total_steps} steps of {self.config['meta_batch']} tasks) on "
                    f"{self.describe_placement()}; run folder {self.run.path}")
        first_step = self.state.step
        self.model.eval()
        self._refresh_statistics()
        try:
            with self._graceful_interrupt(), self._progress() as advance:
                # At least one step per call, so that a spent deadline still makes progress.
                while (self.state.step < self.total_steps and not self.stop_requested
                       and not (self.state.step > first_step and self.out_of_time())):
                    started = time.perf_counter()
                    record = self._one_step()
                    advance(record)
                    if self._due(int(self.config["val_every"])):
                        self._validate_and_save(time.perf_counter() - started)
                    else:
                        self.state.seconds += time.perf_counter() - started
            if self.state.step < self.total_steps:
                self.save_last()
                reason = "" if self.stop_requested else " (out of time)"
                self.report(f"stopped at step {self.state.step}{reason}; continue with "
                            f"`metactl train --resume {self.run.path}`")
            elif self._saved_step != self.state.step:
                self._validate_and_save()
        except KeyboardInterrupt:  # the second Ctrl-C; checkpoints are never half-written
            raise Interrupted(f"aborted without saving; {self._where_to_continue()}") from None
        return self.state

    def out_of_time(self) -> bool:
        """Whether the deadline has passed; under torchrun, on any rank (every rank must stop
        after the same step)."""
        return self.deadline is not None and self.cluster.any(time.monotonic() >= self.deadline)

    def _due(self, every: int) -> bool:
        return self.state.step % every == 0 or self.state.step == self.total_steps

    def step(self) -> dict[str, Any]:
        """One meta-training step (sample, meta-gradient, optimizer step); its metrics record."""
        return self._one_step()

    def _one_step(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.cluster.seed_step(int(self.config["seed"]), self.state.step)
        batch = self.cluster.sample(self.sampler, int(self.config["meta_batch"]))
        self.model.train()
        self.algorithm.progress = self.state.step / self.total_steps
        result = self.meta_gradient(batch)
        self.cluster.average_gradients(self.model)
        self.cluster.average_batch_norm_statistics(self.model)
        if float(self.config["grad_clip"]) > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.config["grad_clip"]))
        self.optimizer.step()
        self.schedule.step()
        self.state.step += 1
        logged, self._stop_agreed = self.cluster.average(
            {"loss": float(result.loss.detach()),
             "accuracy": None if result.accuracy is None else float(result.accuracy),
             **{name: float(value) for name, value in result.extra.items()}},
            self._stop_signalled)
        loss = logged["loss"]
        if not math.isfinite(loss):
            raise UsageError(f"the training loss became {loss} at step {self.state.step}; "
                             f"{self._where_to_continue()}",
                             "lower the learning rate (--lr) or try --set amp=none")
        record = {"step": self.state.step, "loss": loss, "accuracy": logged["accuracy"],
                  "lr": self.schedule.get_last_lr()[0],
                  "seconds": time.perf_counter() - started,
                  **{name: logged[name] for name in result.extra}}
        if self._due(max(1, int(self.config["val_every"]) // 10)):
            self._log({"kind": "train", **record})
            if self.console_log is not None:
                self.console_log(self.progress_line(record))
        return record

    @property
    def episodes_done(self) -> int:
        return min(self.state.step * int(self.config["meta_batch"]), int(self.config["episodes"]))

    def progress_line(self, record: dict[str, Any]) -> str:
        accuracy = "" if record["accuracy"] is None else f" acc {record['accuracy']:.1%}"
        speed = int(self.config["meta_batch"]) / max(record["seconds"], 1e-9)
        return (f"step {record['step']}/{self.total_steps} (episodes {self.episodes_done}/"
                f"{self.config['episodes']}): loss {record['loss']:.4f}{accuracy} "
                f"lr {record['lr']:.3g} {speed:.0f} tasks/s")

    def _log(self, record: dict[str, Any]) -> None:
        if self.cluster.is_main:
            self.run.append_metrics(record)
            self.loggers.log(record)

    def _refresh_statistics(self) -> None:
        """Let the algorithm compute its statistics of the training data with the current
        model (lazily: algorithms that need none never read the data)."""
        from metactl.engine.statistics import training_batches

        split = getattr(self.tasks, "train", None)  # synthetic task sources have none
        batches = training_batches(split) if split is not None else iter(())
        with torch.no_grad(), self.placement.autocast():
            self.algorithm.statistics = dict(
                self.algorithm.training_statistics(self.model, batches) or {})

    def _validate_and_save(self, seconds_before: float = 0.0) -> None:
        """Validate, then save; ``seconds_before`` is the step's time, counted with the
        validation's in the training time that the checkpoint records."""
        started = time.perf_counter()
        self.model.eval()
        self._refresh_statistics()
        result = self.tasks.validate(self.algorithm, self.model, self.placement)
        if result is not None:
            self._log({"kind": "val", "step": self.state.step, result.metric: result.mean,
                       "ci95": result.ci95, "episodes": result.episodes})
            score = result.mean if self.tasks.higher_is_better else -result.mean
            if score > self.state.best_score:
                self.state.best_score, self.state.best_step = score, self.state.step
                if self.cluster.is_main:
                    save_checkpoint(self.run.best, self._payload(model_only=True))
            self.report(f"step {self.state.step}/{self.total_steps}: validation "
                        f"{result.describe()} (best at step {self.state.best_step})")
        self.state.seconds += seconds_before + time.perf_counter() - started
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
        display = progress_display(console)
        if display != "bar":
            every = max(1, self.total_steps // 20)

            def print_line(record: dict[str, Any]) -> None:
                if display == "lines" and (record["step"] % every == 0
                                           or record["step"] == self.total_steps):
                    console.print(self.progress_line(record), highlight=False)

            yield print_line
            return
        columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("steps, {task.fields[episodes]} episodes; loss "
                              "{task.fields[loss]:.3f} acc {task.fields[accuracy]:.1%} "
                              "{task.fields[speed]:.0f} tasks/s"), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("train", total=self.total_steps,
                                     completed=self.state.step, loss=0.0, accuracy=0.0, speed=0.0,
                                     episodes=self.episodes_done)
            tasks_per_step = int(self.config["meta_batch"])

            def advance(record: dict[str, Any]) -> None:
                progress.update(task, completed=record["step"], loss=record["loss"],
                                accuracy=record["accuracy"] or 0.0, episodes=self.episodes_done,
                                speed=tasks_per_step / max(record["seconds"], 1e-9))

            yield advance


def progress_display(console) -> str | None:
    """How to show progress on a rich ``console``: ``"bar"`` in a terminal, and in Jupyter when
    ipywidgets can draw it; ``"lines"`` (a text line every 5% of the steps) in Jupyter without
    ipywidgets; None elsewhere (a file or a pipe: console.log has the lines)."""
    import importlib.util

    if console.is_jupyter:
        return "bar" if importlib.util.find_spec("ipywidgets") is not None else "lines"
    return "bar" if console.is_terminal else None


def train(algorithm: str | type[Algorithm], config: dict[str, Any], *, out: Path | None = None,
          resume: Path | None = None, mirror: str | None = None, root: str | None = None,
          report: Report = print, show_progress: bool = True, deadline: float | None = None,
          allow_world_size_change: bool = False) -> tuple[RunFolder, TrainingState]:
    """Train ``algorithm`` (a registered name or an :class:`Algorithm` subclass) with a resolved
    ``config``; return the run and its final state. The run folder also gets ``run.json`` (see
    :mod:`metactl.engine.record`), kept up to date as the status changes, and ``console.log``.
    With a ``deadline`` (a ``time.monotonic()`` value), training stops cleanly at the first step
    boundary after it (after one step at least), saving ``last.pt`` so that ``--resume``
    continues.

    Everything that can be checked cheaply is checked before the data is loaded: the settings,
    the run folder (a file, a folder another process writes, a folder that holds a run), and
    the checkpoint a resume starts from.

    Under torchrun, every process calls this; they train data-parallel and rank 0 alone holds
    the run's lock and writes the run folder (:mod:`metactl.engine.distributed`). A resume
    with another number of processes than the run's needs ``allow_world_size_change``.
    """
    algorithm_class = _algorithm_class(algorithm)
    instance = algorithm_class(config)
    check_queries(instance, config)
    check_loggers(config.get("logger"))
    run = RunFolder(Path(resume) if resume else Path(out) if out else default_run_folder(config))
    if not resume:
        check_output_folder(run.path, "--out")
    with joined(str(config["device"])) as cluster, cluster.on_main(run.writing, "metactl train"):
        checkpoint = resume_point(run, config) if resume else None
        if checkpoint is None:
            check_new_run(run)
        else:  # before the data is loaded
            cluster.check_resume(checkpoint, run.path, allow_world_size_change)
        return _train_in(run, instance, config, checkpoint, report=report,
                         show_progress=show_progress, mirror=mirror, root=root,
                         deadline=deadline)


def _algorithm_class(algorithm: str | type[Algorithm]) -> type[Algorithm]:
    """The registered class of a name, or the class itself."""
    from metactl.plugins import get_registry

    return get_registry().get(algorithm) if isinstance(algorithm, str) else algorithm


def save_untrained(algorithm: str | type[Algorithm], config: dict[str, Any], out: Path, *,
                   root: str | None = None) -> RunFolder:
    """A run folder at ``out`` holding the model that ``train(algorithm, config)`` starts from
    (same seed, same initial weights, the training statistics of that model), saved as step 0:
    the untrained baseline that a trained run is compared with on the same evaluation."""
    algorithm_class = _algorithm_class(algorithm)
    run = RunFolder(Path(out))
    with run.writing("save_untrained"):
        trainer = Trainer(algorithm_class(config), config, run, lambda message: None,
                          show_progress=False, root=root)
        run.write_config(config)
        trainer.model.eval()
        trainer._refresh_statistics()
        trainer.save_last()
    return run


def _train_in(run: RunFolder, algorithm: Algorithm, config: dict[str, Any],
              checkpoint: dict[str, Any] | None, *, report: Report, **options: Any
              ) -> tuple[RunFolder, TrainingState]:
    """Train in ``run``, which this process holds: build the trainer, restore ``checkpoint``
    when resuming, and record the run's provenance and how it ended. Under torchrun, the
    other ranks train beside rank 0 and record nothing."""
    from metactl.engine.record import ConsoleLog, RunRecord

    main = current().is_main
    console = ConsoleLog(run.path, report, opened=False)
    trainer = Trainer(algorithm, config, run, console if main else report, **options)
    if checkpoint is not None:
        trainer.resume(checkpoint)
    if not main:
        return run, trainer.train()
    if checkpoint is None:
        run.start_metrics()
    run.write_config(config)
    console.open()
    trainer.console_log = console.write
    record = RunRecord.start(run.path, config, type(algorithm).__module__,
                             trainer.describe_placement(), trainer.total_steps)
    with _recorded(trainer, record, console):
        trainer.loggers = LoggerSet.open(config.get("logger"), run.path, config,
                                         trainer.state.step)
        state = trainer.train()
    return run, state


@contextmanager
def _recorded(trainer: Trainer, record, console):
    """Close the loggers and record how training ended: finished, interrupted or failed."""
    try:
        yield
    except BaseException as error:
        record.progress(trainer.state.step, trainer.episodes_done)
        interrupted = isinstance(error, KeyboardInterrupt)
        text = "interrupted" if interrupted else _one_line(error)
        console.write(f"training stopped: {text}")
        record.finish("interrupted" if interrupted else "failed", None if interrupted else text)
        raise
    finally:
        trainer.loggers.close()
    record.progress(trainer.state.step, trainer.episodes_done)
    record.finish("interrupted" if trainer.stop_requested else "finished")


def _one_line(error: BaseException) -> str:
    describe = getattr(error, "one_line", None)
    if callable(describe):
        return describe()
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}"[:300]


def check_queries(algorithm: Algorithm, config: dict[str, Any]) -> None:
    """Training tasks need queries, except for learners that read labelled sequences or train
    on the support set alone."""
    if int(config["train_query"]) < 1 and not (algorithm.learns_from_sequences
                                               or algorithm.trains_without_queries):
        raise UsageError(f"setting train_query must be positive for {algorithm.name}, got "
                         f"{config['train_query']}", "its loss is computed on the queries; "
                         "pass --set train_query=5, say")


def check_new_run(run: RunFolder) -> None:
    for checkpoint in (run.last, run.best):
        if checkpoint.is_file():
            raise UsageError(f"{run.path} already holds a run",
                             f"resume it with `metactl train --resume {run.path}` "
                             "or pick another --out")


TRAINING_STATE = ("model", "optimizer", "schedule", "sampler_rng", "torch_rng", "step",
                  "best_score", "best_step")


def resume_point(run: RunFolder, config: dict[str, Any]) -> dict[str, Any]:
    """The checked ``last.pt`` of ``run``: a full training state, of the run's algorithm, not
    past the steps ``config`` asks for."""
    if not run.last.is_file():
        raise DataError(f"{run.path} has no checkpoints/last.pt to resume from; "
                        f"{_best_checkpoint_note(run)}",
                        "a save that failed (a full disk?) can lose it: evaluate the run with "
                        f"`metactl evaluate {run.path}`, or train again with another --out")
    checkpoint = load_checkpoint(run.last)
    if checkpoint.get("algorithm") != config["algorithm"]:
        raise UsageError(f"{run.path} was trained with {checkpoint.get('algorithm')!r}",
                         "resume it with the same algorithm")
    missing = [key for key in TRAINING_STATE if key not in checkpoint]
    if missing:
        raise DataError(f"{run.last} holds no training state (no {missing[0]}); it may be a "
                        "copy of best.pt, which keeps only the model",
                        "resume needs the last.pt that training wrote; evaluate the run with "
                        f"`metactl evaluate {run.path}`, or train again with another --out")
    step = int(checkpoint["step"])
    total = math.ceil(int(config["episodes"]) / int(config["meta_batch"]))
    if step > total:
        raise UsageError(f"{run.path} has already trained {step} steps; --episodes "
                         f"{config['episodes']} is {total} steps",
                         f"pass --episodes {step * int(config['meta_batch'])} or more to train "
                         "longer")
    return checkpoint


def _best_checkpoint_note(run: RunFolder) -> str:
    if not run.best.is_file():
        return "it has no best.pt either"
    step = load_checkpoint(run.best).get("step", "?")
    return f"its best.pt is from step {step} but keeps only the model, not the training state"
