"""``metactl reproduce``: train the papers' protocols, evaluate them and compare with the papers.

An algorithm declares its paper's table as data (:attr:`Algorithm.paper_protocols` and
:attr:`Algorithm.paper_results`). A reproduction trains each protocol once, in a run folder of
its own (``<runs>/<algorithm>-<protocol>``), evaluates every row that protocol's model answers on
the fixed seed-0 test episodes, and writes a report (:mod:`metactl.engine.reports`). Everything
resumes: a finished protocol is kept, an interrupted one continues from its ``last.pt``, and a
time budget stops training cleanly at a step boundary.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metactl.algorithm import Algorithm, PaperResult
from metactl.engine.reports import ProtocolRecord, Report, RowRecord, describe_machine
from metactl.errors import UsageError

Say = Callable[[str], None]
EVALUATION_EPISODES = 1000
# What `reproduce --set` may change: how a protocol runs, never what it trains.
DEVICE_SETTINGS = ("amp", "channels_last", "compile", "deterministic")
DURATION_PATTERN = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``"2h"``, ``"90m"``, ``"1h30m"``, ``"45s"``, ``"1.5h"`` -> seconds."""
    compact = text.strip().lower().replace(" ", "")
    parts = DURATION_PATTERN.findall(compact)
    if not compact or "".join(number + unit for number, unit in parts) != compact:
        raise UsageError(f"--budget {text!r} is not a duration",
                         "write it like 45m, 2h or 1h30m")
    seconds = sum(float(number) * UNIT_SECONDS[unit] for number, unit in parts)
    if seconds <= 0:
        raise UsageError(f"--budget {text!r} is not a positive duration", "write e.g. --budget 2h")
    return seconds


def parse_setting(text: str) -> tuple[int, int]:
    """``"5w1s"`` -> (5, 1)."""
    match = re.fullmatch(r"(\d+)w(\d+)s", text.strip().lower())
    if not match:
        raise UsageError(f"--setting {text!r} is not a setting",
                         "write it as <way>w<shot>s, e.g. 5w1s or 20w5s")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class Protocol:
    """One training run of a reproduction and the rows its model answers."""

    name: str
    settings: dict[str, Any]
    rows: tuple[PaperResult, ...]


@dataclass(frozen=True)
class Plan:
    algorithm: type[Algorithm]
    dataset: str
    protocols: tuple[Protocol, ...]


def plan_reproduction(algorithm: type[Algorithm], dataset: str,
                      settings: Sequence[str] = ()) -> Plan:
    """The protocols to train for ``algorithm`` on ``dataset``, limited to ``settings``
    (``"5w1s"``...) when given; a setting the paper does not report is an error."""
    rows = [row for row in algorithm.paper_results if row.dataset == dataset]
    if not rows:
        datasets = sorted({row.dataset for row in algorithm.paper_results})
        hint = (f"its paper reports {', '.join(datasets)}" if datasets else
                "it declares no paper_results; see docs/plugins.md")
        raise UsageError(f"{algorithm.name} has no paper results on {dataset}", hint)
    if settings:
        wanted = {parse_setting(text) for text in settings}
        known = {(row.way, row.shot) for row in rows}
        missing = sorted(wanted - known)
        if missing:
            way, shot = missing[0]
            raise UsageError(f"the {algorithm.name} paper reports no {way}-way {shot}-shot result "
                             f"on {dataset}",
                             f"pick from {', '.join(row.setting for row in rows)}")
        rows = [row for row in rows if (row.way, row.shot) in wanted]
    names = list(dict.fromkeys(row.protocol for row in rows))
    protocols = tuple(
        Protocol(name, dict(algorithm.paper_protocols[name]),
                 tuple(row for row in rows if row.protocol == name)) for name in names)
    return Plan(algorithm, dataset, protocols)


def device_overrides(assignments: Sequence[str]) -> dict[str, Any]:
    """``["channels_last=true"]`` -> ``{"channels_last": True}``; only device settings."""
    from metactl.engine.config import parse_assignments

    overrides = parse_assignments(list(assignments))
    other = sorted(set(overrides) - set(DEVICE_SETTINGS))
    if other:
        raise UsageError(f"reproduce --set takes device settings only, not {', '.join(other)}",
                         f"use one of {', '.join(DEVICE_SETTINGS)}; the paper's protocol fixes "
                         "the rest")
    return overrides


def train_command(algorithm: str, run: Path, settings: dict[str, Any], device: str) -> str:
    options = " ".join(f"--set {key}={value}" for key, value in sorted(settings.items()))
    return f"metactl train {algorithm} --out {run} {options} --device {device}"


def evaluate_command(run: Path, row: PaperResult, episodes: int = EVALUATION_EPISODES) -> str:
    return f"metactl evaluate {run} --way {row.way} --shot {row.shot} --episodes {episodes}"


@dataclass
class Reproduction:
    """Runs a plan: trains what is unfinished, evaluates what is trained, writes the report."""

    plan: Plan
    report_path: Path
    runs: Path
    device: str = "auto"
    root: str | None = None
    mirror: str | None = None
    deadline: float | None = None
    evaluate_partial: bool = False
    test_episodes: int = EVALUATION_EPISODES
    overrides: dict[str, Any] = field(default_factory=dict)
    say: Say = print
    _trained: bool = False  # whether this call trained a protocol (each call trains one step)

    @property
    def name(self) -> str:
        return self.plan.algorithm.name

    def run_folder(self, protocol: Protocol) -> Path:
        return self.runs / f"{self.name}-{protocol.name}"

    def execute(self, command: str) -> Report:
        report = Report.open(self.report_path, self.name, self.plan.dataset,
                             self.plan.algorithm.paper)
        report.command = command
        report.machine = describe_machine(self.device)
        for protocol in self.plan.protocols:
            record = self._train(report, protocol)
            report.protocols[protocol.name] = record
            report.save()
            for row in protocol.rows:
                known = report.rows.get(row.setting)
                if known is not None and known.ours is not None and (
                        known.at_step == record.steps_done
                        and known.episodes == self.test_episodes):
                    continue  # already evaluated on this very checkpoint
                if self._should_evaluate(record):
                    report.rows[row.setting] = self._evaluate(record, row)
                    report.save()
                elif known is None:
                    report.rows[row.setting] = RowRecord.pending(row, record)
        report.save()
        return report

    def _out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _should_evaluate(self, record: ProtocolRecord) -> bool:
        """The budget limits training only: what was trained is then evaluated."""
        return (record.finished or self.evaluate_partial) and record.steps_done > 0

    def _train(self, report: Report, protocol: Protocol) -> ProtocolRecord:
        from metactl.engine.run import RunFolder
        from metactl.engine.session import start_training

        run = RunFolder(self.run_folder(protocol))
        previous = report.protocols.get(protocol.name)
        record = previous or ProtocolRecord(protocol.name, str(run.path), protocol.settings)
        settings = {**protocol.settings, **self.overrides}
        record.command = train_command(self.name, run.path, settings, self.device)
        record.read_progress(run)
        if record.finished or (self._out_of_time() and self._trained):
            return record
        self._trained = True
        self.say(f"{self.name} {protocol.name}: training ({record.describe_progress()})")
        values = {**settings, "device": self.device}
        try:
            if run.last.is_file():
                start_training(None, values, None, [], out=None, resume=run.path, root=self.root,
                               mirror=self.mirror, report=self.say, deadline=self.deadline)
            else:
                start_training(self.name, values, None, [], out=run.path, resume=None,
                               root=self.root, mirror=self.mirror, report=self.say,
                               deadline=self.deadline)
        finally:
            record.read_progress(run)
        return record

    def _evaluate(self, record: ProtocolRecord, row: PaperResult) -> RowRecord:
        from metactl.engine.session import evaluate_and_record

        self.say(f"{self.name} {row.setting}: evaluating on {self.test_episodes} test episodes")
        started = time.monotonic()
        result = evaluate_and_record(Path(record.run), episodes=self.test_episodes, way=row.way,
                                     shot=row.shot, split="test", device=self.device,
                                     root=self.root)[0]
        return RowRecord.measured(row, record, result, time.monotonic() - started,
                                  evaluate_command(Path(record.run), row, self.test_episodes))


def estimate(plan: Plan, *, device: str, root: str | None, mirror: str | None, say: Say,
             test_episodes: int = EVALUATION_EPISODES,
             overrides: dict[str, Any] | None = None, probe_steps: int = 3,
             probe_episodes: int = 16) -> list[dict[str, Any]]:
    """Time a few training steps and evaluation episodes of each protocol on this machine and
    extrapolate to the whole protocol; nothing is written outside a temporary folder."""
    estimates = []
    for protocol in plan.protocols:
        say(f"probing {plan.algorithm.name} {protocol.name} ...")
        estimates.append(_probe(plan, protocol, device=device, root=root, mirror=mirror,
                                steps=probe_steps, episodes=probe_episodes,
                                test_episodes=test_episodes, overrides=overrides or {}))
    return estimates


def _probe(plan: Plan, protocol: Protocol, *, device: str, root: str | None,
           mirror: str | None, steps: int, episodes: int, test_episodes: int,
           overrides: dict[str, Any]) -> dict[str, Any]:
    import tempfile

    from metactl.engine.config import resolve_config
    from metactl.engine.run import RunFolder
    from metactl.engine.trainer import Trainer

    algorithm_class = plan.algorithm
    config = resolve_config(algorithm_class.name, algorithm_class.defaults, {},
                            {**protocol.settings, **overrides, "device": device}, {})
    with tempfile.TemporaryDirectory(prefix="metactl-probe-") as folder:
        trainer = Trainer(algorithm_class(config), config, RunFolder(Path(folder)),
                          report=lambda message: None, show_progress=False, mirror=mirror,
                          root=root)
        step_seconds = _time_steps(trainer, steps)
        validations = trainer.total_steps // int(config["val_every"]) + 1
        validation_seconds = 0.0
        if getattr(trainer.tasks, "validation", None) is not None:
            validation_seconds = validations * int(config["val_episodes"]) * _episode_seconds(
                trainer, trainer.tasks.val, int(config["way"]), int(config["shot"]),
                int(config["query"]), episodes)
        evaluation_seconds = sum(
            test_episodes * _test_episode_seconds(trainer, config, row, root, episodes)
            for row in protocol.rows)
    training_seconds = step_seconds * trainer.total_steps
    return {"protocol": protocol.name, "steps": trainer.total_steps,
            "seconds_per_step": step_seconds, "training_seconds": training_seconds,
            "validation_seconds": validation_seconds, "evaluation_seconds": evaluation_seconds,
            "total_seconds": training_seconds + validation_seconds + evaluation_seconds,
            "placement": trainer.placement.describe()}


def _time_steps(trainer, steps: int) -> float:
    trainer._one_step()  # warm-up: first-call allocations and lazy initialisation
    started = time.perf_counter()
    for _ in range(max(1, steps)):
        trainer._one_step()
    return (time.perf_counter() - started) / max(1, steps)


def _episode_seconds(trainer, split, way: int, shot: int, query: int, episodes: int) -> float:
    from metactl.data.episodes import EpisodeSet
    from metactl.engine.evaluator import episode_accuracies

    drawn = EpisodeSet.draw(split, dataset="probe", scheme="", size=0, way=way, shot=shot,
                            query=query, episodes=episodes, seed=0)
    trainer.model.eval()
    started = time.perf_counter()
    episode_accuracies(trainer.algorithm, trainer.model, split, drawn, trainer.placement)
    return (time.perf_counter() - started) / episodes


def _test_episode_seconds(trainer, config: dict[str, Any], row: PaperResult, root: str | None,
                          episodes: int) -> float:
    from metactl.data.manage import open_split

    test = open_split(config["dataset"], "test", root=root, scheme=config["scheme"],
                      size=config["size"]).to(trainer.placement.device)
    return _episode_seconds(trainer, test, row.way, row.shot, int(config["query"]), episodes)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{seconds:.0f}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"
