"""Data-parallel meta-training and evaluation across the processes that torchrun starts.

The meta-batch is the global one. Every rank draws the indices of the whole batch from the
same seeded sampler, so the stream of tasks is the one a single process sees, and gathers the
images of its own consecutive share of ``meta_batch / world_size`` tasks. After the
algorithm's :meth:`~metactl.algorithm.Algorithm.meta_gradient`, the parameters' ``.grad`` is
averaged over the ranks in one all-reduce: with equal shares, the mean of the shares'
mean-over-tasks gradients is the mean over the whole batch. The same holds for updates that are
not the gradient of a loss but are linear in the tasks' contributions, such as batched
Reptile's ``theta - mean_i phi_i``. Task state (adapted weights, an LSTM's cell state, a
memory) never leaves its rank.

Batch norm whose batch mixes the tasks of a meta-batch (the pre-training baselines classify
every task's images together; ``Algorithm.batch_norm_spans_tasks``) normalises training
batches with statistics over every rank's share, so such a run equals the single-process one
up to float rounding. Batch norm computed per task (the metric methods through
:func:`metactl.nn.functional.forward_per_task`) normalises each task alone; its running
statistics, a mean over the tasks, are averaged over the ranks after each step.

Randomness an algorithm draws itself from torch's global generator (MANN's presentation
orders, Reptile's inner mini-batches) comes, with several processes, from a seed made of the
run's seed, the step and the rank: reproducible for a given seed, world size and meta-batch,
and resumable with no saved generator state.

Evaluation splits fixed episodes across ranks in whole batches and gathers the per-episode
results in file order, so the mean and its interval are the single-process ones exactly.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from metactl.engine.launch import ProcessPlace, check_gpus, process_place
from metactl.errors import MetactlError, UsageError

if TYPE_CHECKING:
    from metactl.algorithm import Algorithm
    from metactl.data.episodes import TaskBatch

TIMEOUT_VARIABLE = "METACTL_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 600.0


class MainRankStopped(MetactlError):
    """Rank 0 failed to start (it reports why); the other ranks stop with it."""


class LostContact(MetactlError):
    """A collective operation failed: another rank died, or stopped answering for longer than
    the collective timeout."""


def _collective(operation: Callable[..., Any], *arguments: Any, **options: Any) -> Any:
    """Run one torch.distributed operation; its failure becomes a one-line error."""
    try:
        return operation(*arguments, **options)
    except RuntimeError as error:
        text = " ".join(re.sub(r"\[[^\]]*:\d+\]", " ", str(error)).split())
        raise LostContact(f"lost contact with the other processes ({text[:160]})",
                          "another rank failed or stopped; its own output says why (a rank "
                          f"that hangs is given up on after {TIMEOUT_VARIABLE} seconds, "
                          f"default {DEFAULT_TIMEOUT_SECONDS:.0f})") from None


@dataclass(frozen=True)
class Cluster:
    """The processes of one job as this one sees them; a single process is a cluster of one,
    for which every method does the single-process thing and no communication."""

    place: ProcessPlace = field(default_factory=ProcessPlace)

    @property
    def rank(self) -> int:
        return self.place.rank

    @property
    def world_size(self) -> int:
        return self.place.world_size

    @property
    def is_distributed(self) -> bool:
        return self.place.is_distributed

    @property
    def is_main(self) -> bool:
        return self.place.is_main

    # --- training ----------------------------------------------------------------------------

    def check_meta_batch(self, tasks: int) -> None:
        """Refuse a meta-batch that does not split evenly across the ranks."""
        self.place.check_meta_batch(tasks)

    def share(self, tasks: int) -> slice:
        """This rank's consecutive share of a batch of ``tasks`` tasks."""
        self.check_meta_batch(tasks)
        size = tasks // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)

    def sample(self, sampler: Any, tasks: int) -> TaskBatch:
        """This rank's share of the next batch of ``tasks`` tasks from ``sampler``, which every
        rank advances by the whole batch."""
        if not self.is_distributed:
            return sampler.sample(tasks)
        share = self.share(tasks)
        if hasattr(sampler, "draw_indices") and hasattr(sampler, "gather"):
            classes, images = sampler.draw_indices(tasks)  # indices only: cheap to draw all
            return sampler.gather(classes[share], images[share])
        return tasks_of(sampler.sample(tasks), share)

    def prepare_model(self, model: nn.Module, algorithm: Algorithm) -> None:
        """Give every rank rank 0's weights, and batch norm across ranks where the algorithm's
        batch norm mixes tasks."""
        if not self.is_distributed:
            return
        for tensor in model.state_dict().values():
            _collective(dist.broadcast, tensor, src=0)
        if algorithm.batch_norm_spans_tasks:
            batch_norm_across_ranks(model)

    def average_batch_norm_statistics(self, model: nn.Module) -> None:
        """Average the running statistics of batch norm computed per task (each rank's are a
        mean over its own tasks, so their mean is the whole meta-batch's, as in one process)."""
        if not self.is_distributed:
            return
        groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for module in model.modules():
            if (isinstance(module, nn.modules.batchnorm._BatchNorm)
                    and not isinstance(module, BatchNormAcrossRanks)
                    and module.running_mean is not None):
                for buffer in (module.running_mean, module.running_var):
                    groups.setdefault((buffer.device, buffer.dtype), []).append(buffer)
        for buffers in groups.values():
            flat = torch.cat([buffer.reshape(-1) for buffer in buffers])
            _collective(dist.all_reduce, flat)
            flat /= self.world_size
            start = 0
            for buffer in buffers:
                buffer.copy_(flat[start:start + buffer.numel()].view_as(buffer))
                start += buffer.numel()

    def seed_step(self, seed: int, step: int) -> None:
        """Seed torch's global generator for ``step`` from (seed, step, rank); nothing for a
        single process, whose generator state is saved in its checkpoints instead."""
        if self.is_distributed:
            digest = hashlib.blake2b(f"{seed}/{step}/{self.rank}".encode(), digest_size=8)
            torch.manual_seed(int.from_bytes(digest.digest(), "little") >> 1)

    def average_gradients(self, model: nn.Module) -> None:
        """Average ``.grad`` of ``model``'s trainable parameters over the ranks (one all-reduce
        per dtype). A parameter no rank gave a gradient keeps ``None``, as in one process."""
        if not self.is_distributed:
            return
        groups: dict[tuple[torch.device, torch.dtype], list[nn.Parameter]] = {}
        for parameter in model.parameters():
            if parameter.requires_grad:
                groups.setdefault((parameter.device, parameter.dtype), []).append(parameter)
        for parameters in groups.values():
            _average_group(parameters, self.world_size)

    def average(self, values: dict[str, float | None], stop: bool = False
                ) -> tuple[dict[str, float | None], bool]:
        """The mean over ranks of each logged number (``None`` stays ``None``), and whether any
        rank was asked to stop (Ctrl-C reaches the ranks at different moments; they must
        stop after the same step)."""
        if not self.is_distributed:
            return values, stop
        names = sorted(name for name, value in values.items() if value is not None)
        totals = torch.tensor([float(values[name]) for name in names] + [float(stop)],
                              dtype=torch.float64)
        _collective(dist.all_reduce, totals)
        averaged = {name: float(totals[index]) / self.world_size
                    for index, name in enumerate(names)}
        return {**values, **averaged}, bool(totals[-1] > 0)

    # --- evaluation and coordination ----------------------------------------------------------

    def in_order(self, count: int, compute: Callable[[int], Any]) -> list[Any]:
        """``[compute(0), ..., compute(count - 1)]`` on every rank, each rank computing the
        indices ``rank, rank + world_size, ...``."""
        mine = [compute(index) for index in range(self.rank, count, self.world_size)]
        if not self.is_distributed:
            return mine
        gathered: list[Any] = [None] * self.world_size
        _collective(dist.all_gather_object, gathered, mine)
        return [gathered[index % self.world_size][index // self.world_size]
                for index in range(count)]

    def barrier(self) -> None:
        if self.is_distributed:
            # A CPU all-reduce goes through gloo on every backend, and honours the timeout.
            _collective(dist.all_reduce, torch.zeros(1))

    def sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over the ranks (no gradient); ``tensor`` itself for one process."""
        if not self.is_distributed:
            return tensor
        total = tensor.clone()
        _collective(dist.all_reduce, total)
        return total

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (every rank must call this)."""
        if not self.is_distributed:
            return flag
        total = torch.tensor([float(flag)], dtype=torch.float64)
        _collective(dist.all_reduce, total)
        return bool(total[0] > 0)

    @contextmanager
    def on_main(self, enter: Callable[..., AbstractContextManager], *arguments: Any
                ) -> Iterator[None]:
        """Run the block inside ``enter(*arguments)`` (a run folder's lock, say) entered on
        rank 0 alone; the other ranks run it bare. If rank 0 cannot enter, it raises its own
        error and the others stop with :class:`MainRankStopped` instead of waiting for it in a
        later collective until the timeout."""
        if not self.is_distributed:
            with enter(*arguments):
                yield
            return
        with ExitStack() as stack:
            if self.is_main:
                try:
                    stack.enter_context(enter(*arguments))
                except BaseException:
                    with suppress(MetactlError):  # its own error is the one to show
                        self.any(True)
                    raise
            if self.any(False):
                raise MainRankStopped("rank 0 stopped before the work began",
                                      "its own error says why")
            yield

    @contextmanager
    def leader_first(self) -> Iterator[None]:
        """Local rank 0 of each machine runs the block first (it may download data); the other
        ranks run it after it has finished."""
        leader = self.place.local_rank == 0
        if not leader:
            self.barrier()
        yield
        if leader:
            self.barrier()

    def main_only(self, report: Callable[[str], None]) -> Callable[[str], None]:
        """``report`` on rank 0; a function that says nothing on the other ranks."""
        return report if self.is_main else _silent

    # --- resuming ----------------------------------------------------------------------------

    def check_resume(self, checkpoint: dict[str, Any], run: Path, allow_change: bool) -> None:
        """Refuse to resume with another number of processes unless allowed: the tasks stay
        the same, but the ranks' random seeds and the float rounding of the averages change."""
        saved = int(checkpoint.get("world_size", 1))
        if saved != self.world_size and not allow_change:
            raise UsageError(f"{run} was trained by {saved} process{'es' if saved > 1 else ''} "
                             f"and this resume has {self.world_size}",
                             f"resume it with {saved} (torchrun --nproc-per-node {saved}, or "
                             "--nproc), or pass --allow-world-size-change to continue anyway")


SINGLE = Cluster()
_active: Cluster = SINGLE


def current() -> Cluster:
    """The cluster this process has joined (:func:`joined`), else a cluster of one."""
    return _active


@contextmanager
def joined(requested_device: str = "auto") -> Iterator[Cluster]:
    """Join the process group of a torchrun job for the block, and leave it after; a cluster
    of one when not under torchrun (or with one process). Re-entrant. The backend is gloo
    for CPU runs, NCCL for CUDA tensors (with gloo beside it for CPU ones)."""
    global _active
    place = process_place()
    if _active.is_distributed or not place.is_distributed:
        yield _active
        return
    owned = not dist.is_initialized()
    if owned:
        backend = _backend(requested_device, place)
        _die_with_launcher()
        dist.init_process_group(backend, timeout=collective_timeout())
    _active = Cluster(place)
    try:
        yield _active
    finally:
        _active = SINGLE
        if owned:
            dist.destroy_process_group()


def requested_device(run_path: Path, device: str | None) -> str:
    """The device a command on a trained run asks for, which picks the backend the processes
    join with: ``device`` when given, else the run's (read only under torchrun)."""
    if device is not None or not process_place().is_distributed:
        return device or "auto"
    from metactl.engine.run import open_run

    return str(open_run(run_path).read_config().get("device", "auto"))


def collective_timeout() -> timedelta:
    """How long a collective waits for the other ranks before failing: a rank that died or
    hangs stops the others within this time (``METACTL_COLLECTIVE_TIMEOUT`` seconds)."""
    text = os.environ.get(TIMEOUT_VARIABLE, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_SECONDS
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UsageError(f"{TIMEOUT_VARIABLE}={text!r} is not a positive number of seconds",
                         f"set e.g. {TIMEOUT_VARIABLE}=600")
    return timedelta(seconds=seconds)


def _backend(requested_device: str, place: ProcessPlace) -> str:
    wants_cuda = requested_device.startswith("cuda") or (
        requested_device == "auto" and torch.cuda.is_available())
    if not wants_cuda:
        return "gloo"
    check_gpus(place.local_world_size)
    torch.cuda.set_device(place.local_rank)
    return "cpu:gloo,cuda:nccl"


def _die_with_launcher() -> None:
    """torchrun starts each worker in a session of its own, so a launcher killed outright
    (kill -9, a lost node) would leave its workers training on, orphaned and writing: ask
    Linux to kill this worker when its parent dies."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    set_parent_death_signal = 1  # PR_SET_PDEATHSIG
    try:
        ctypes.CDLL(None).prctl(set_parent_death_signal, int(signal.SIGKILL))
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before the request
        os._exit(1)


def _silent(message: str) -> None:
    return None


def _average_group(parameters: list[nn.Parameter], world_size: int) -> None:
    present = torch.tensor([parameter.grad is not None for parameter in parameters],
                           dtype=parameters[0].dtype, device=parameters[0].device)
    pieces = [(parameter.grad if parameter.grad is not None else torch.zeros_like(parameter))
              .reshape(-1) for parameter in parameters]
    flat = torch.cat([*pieces, present])
    _collective(dist.all_reduce, flat)
    flat /= world_size
    given = (flat[-len(parameters):] > 0).tolist()  # one device-to-host copy
    start = 0
    for parameter, has_gradient in zip(parameters, given, strict=True):
        size = parameter.numel()
        if has_gradient:
            parameter.grad = flat[start:start + size].view_as(parameter).clone()
        start += size


def tasks_of(batch: TaskBatch, share: slice) -> TaskBatch:
    """The tasks ``share`` of a batch."""
    from metactl.data.episodes import TaskBatch

    return TaskBatch(batch.support_images[share], batch.support_labels[share],
                     batch.query_images[share], batch.query_labels[share], batch.classes[share],
                     batch.way, batch.shot, batch.query)


# --- batch norm over every rank's share --------------------------------------------------------


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over the ranks; its gradient is the sum of the ranks' gradients,
    since every rank's loss depends on every rank's input through the sum."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        _collective(dist.all_reduce, total)
        return total

    @staticmethod
    def backward(ctx, gradient: Tensor) -> Tensor:
        total = gradient.clone()
        _collective(dist.all_reduce, total)
        return total


def sum_over_ranks(tensor: Tensor) -> Tensor:
    return _SumOverRanks.apply(tensor)


class BatchNormAcrossRanks:
    """Mixed into a batch-norm class: in training mode, normalise with the mean and variance of
    the whole global batch (every rank's share), and update the running statistics with them,
    as one process holding the whole batch would. Evaluation mode is unchanged."""

    def forward(self, input: Tensor) -> Tensor:
        if not self.training:
            return super().forward(input)
        return normalize_across_ranks(self, input)


def normalize_across_ranks(module: nn.modules.batchnorm._BatchNorm, input: Tensor) -> Tensor:
    """Batch norm of ``input`` (N, C, ...) with statistics over all ranks' inputs."""
    values = input.to(torch.promote_types(input.dtype, torch.float32))  # fp16/bf16 sums
    dims = [0, *range(2, values.dim())]
    shape = [1, -1] + [1] * (values.dim() - 2)
    local_count = values.new_tensor([values.numel() // values.shape[1]])
    sums = sum_over_ranks(torch.cat([values.sum(dims), local_count]))
    count = sums[-1]
    mean = sums[:-1] / count
    centered = values - mean.view(shape)
    variance = sum_over_ranks(centered.pow(2).sum(dims)) / count
    output = centered * torch.rsqrt(variance + module.eps).view(shape)
    if module.affine:
        output = output * module.weight.view(shape) + module.bias.view(shape)
    if module.track_running_stats and module.running_mean is not None:
        _update_running_statistics(module, mean.detach(), variance.detach(),
                                    float(count.detach()))
    return output.to(input.dtype)


def _update_running_statistics(module, mean: Tensor, variance: Tensor, count: float) -> None:
    with torch.no_grad():
        factor = module.momentum
        if module.num_batches_tracked is not None:
            module.num_batches_tracked.add_(1)
            if factor is None:
                factor = 1.0 / float(module.num_batches_tracked)
        factor = 0.0 if factor is None else factor
        unbiased = variance * (count / max(count - 1.0, 1.0))
        module.running_mean.lerp_(mean.to(module.running_mean.dtype), factor)
        module.running_var.lerp_(unbiased.to(module.running_var.dtype), factor)


def batch_norm_across_ranks(model: nn.Module) -> None:
    """Switch every batch-norm layer of ``model`` to :class:`BatchNormAcrossRanks`, in place:
    same parameters, buffers and checkpoint keys."""
    for module in model.modules():
        if (isinstance(module, nn.modules.batchnorm._BatchNorm)
                and not isinstance(module, (BatchNormAcrossRanks, nn.SyncBatchNorm))):
            module.__class__ = _across_ranks_class(type(module))


@cache
def _across_ranks_class(base: type) -> type:
    return type(f"{base.__name__}AcrossRanks", (BatchNormAcrossRanks, base), {})
