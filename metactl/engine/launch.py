"""Which process this is under torchrun, and ``--nproc``: torchrun's own launcher, called here.

Nothing here imports torch at module level: the CLI reads the rank before deciding whether to
print, and formats errors with it, without paying for torch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from metactl.errors import MetactlError, UsageError

# Exit codes of metactl's own errors: a process that ends with one has already said why.
REPORTED_EXIT_CODES = (1, 2)


@dataclass(frozen=True)
class ProcessPlace:
    """Where this process sits among the ones torchrun started (one of one without torchrun).

    Attributes:
        rank: 0 .. world_size - 1 over every machine; rank 0 writes the run folder.
        world_size: processes in the job.
        local_rank: 0 .. local_world_size - 1 on this machine; it picks the GPU.
        local_world_size: processes on this machine.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_meta_batch(self, tasks: int) -> None:
        """Refuse a meta-batch that does not split evenly across the processes."""
        if tasks % self.world_size:
            larger = -(-tasks // self.world_size) * self.world_size
            raise UsageError(f"a meta-batch of {tasks} tasks does not divide among "
                             f"{self.world_size} processes",
                             f"use --meta-batch {larger} (a multiple of {self.world_size}), or "
                             "a number of processes that divides the meta-batch")


def process_place() -> ProcessPlace:
    """This process's place, from the variables torchrun sets (RANK, WORLD_SIZE, ...)."""

    def number(name: str, default: int) -> int:
        text = os.environ.get(name, "")
        try:
            return int(text) if text else default
        except ValueError:
            raise UsageError(f"the environment variable {name}={text!r} is not a whole number",
                             "launch with torchrun, or unset it") from None

    world_size = number("WORLD_SIZE", 1)
    return ProcessPlace(number("RANK", 0), world_size, number("LOCAL_RANK", 0),
                        number("LOCAL_WORLD_SIZE", world_size))


def is_main_process() -> bool:
    """Whether this process writes files and prints results (rank 0, or not under torchrun)."""
    return process_place().is_main


def error_label() -> str:
    """``Error`` on rank 0, ``Error (rank N)`` on the others, so a user can tell them apart."""
    try:
        place = process_place()
    except UsageError:
        return "Error"
    return "Error" if place.is_main else f"Error (rank {place.rank})"


class WorkerFailed(MetactlError):
    """A process started by ``--nproc`` failed without a message of its own (a crash or a
    signal); the exit code is the worker's."""

    def __init__(self, message: str, hint: str, exit_code: int) -> None:
        super().__init__(message, hint)
        self.exit_code = exit_code


def launch_here(nproc: int, device: str | None, arguments: list[str]) -> int:
    """Run ``python -m metactl ARGUMENTS`` (less ``--nproc``) in ``nproc`` processes on this
    machine with torchrun's launcher (``torch.distributed.run``, standalone rendezvous on a
    free port) and wait.

    Returns 0 when every process succeeded, else the exit code of the first that failed when
    it printed its own error; raises :class:`WorkerFailed` when it died without one.
    """
    check_launch(nproc, device)
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # The agent logs every worker's exit at length; the workers' own one-line errors say more.
    # Its loggers each carry a level of their own, so each is quietened.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    options = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", "metactl",
         *arguments_without_nproc(arguments)])
    try:
        run(options)
    except SignalException:  # Ctrl-C: the workers got it too, saved and stopped
        return 130
    except ChildFailedError as failure:
        rank, first = failure.get_first_failure()
        if first.exitcode in REPORTED_EXIT_CODES:
            return first.exitcode
        how = (f"was killed by signal {-first.exitcode}" if first.exitcode < 0
               else f"exited with code {first.exitcode}")
        raise WorkerFailed(f"the process of rank {rank} {how}",
                           "its output above says why (out of memory is a common cause)",
                           exit_code=first.exitcode if first.exitcode > 0 else 1) from None
    return 0


def check_launch(nproc: int, device: str | None) -> None:
    """Refuse ``--nproc`` values that cannot work, before starting any process."""
    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}", "pass e.g. --nproc 2")
    if "TORCHELASTIC_RUN_ID" in os.environ or process_place().is_distributed:
        raise UsageError("--nproc was given to a process that torchrun already started",
                         "drop --nproc, or drop torchrun")
    if device is not None and device.startswith("cuda"):
        check_gpus(nproc)


def check_gpus(processes: int) -> None:
    """One GPU per process on this machine, or a one-line error."""
    import torch

    count = torch.cuda.device_count()
    if count < processes:
        raise UsageError(f"{processes} processes on this machine need one GPU each, and it "
                         f"has {count}",
                         f"use --nproc {count} or fewer, or --device cpu" if count
                         else "use --device cpu")


def arguments_without_nproc(arguments: list[str]) -> list[str]:
    """The command line minus ``--nproc N`` (or ``--nproc=N``): what each process runs."""
    kept, skip = [], False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == "--nproc":
            skip = True
        elif not argument.startswith("--nproc="):
            kept.append(argument)
    return kept

