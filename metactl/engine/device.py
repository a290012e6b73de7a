"""Choosing the device and the fastest correct settings for it.

Mixed precision, channels-last and the outer optimizer's fused kernels are picked per device
at run time: bf16 autocast only where the hardware computes bfloat16 (a CPU with AVX-512 BF16
or AMX, a CUDA GPU of compute capability 8.0 or later), full float32 elsewhere (on an AVX2
CPU, bf16 autocast runs about ten times slower than float32); channels-last on the CPU, and on
CUDA with reduced precision. An algorithm can pin any setting
in its :class:`~metactl.algorithm.DeviceSettings`, the user can override it with ``--set``,
and the run's ``config.yaml`` records what was used.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metactl.algorithm import DeviceSettings
from metactl.errors import UsageError

AUTO = "auto"


@dataclass(frozen=True)
class Placement:
    """The device and settings a run actually uses."""

    device: torch.device
    mixed_precision: str | None
    channels_last: bool
    compile: bool
    deterministic: bool
    cuda_graphs: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the run's reduced precision, on CUDA or the CPU; nothing in float32."""
        if self.mixed_precision is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mixed_precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def settings(self) -> dict[str, Any]:
        """The choices as config values, for the run's ``config.yaml``."""
        return {"amp": self.mixed_precision or "none", "channels_last": self.channels_last,
                "compile": self.compile, "deterministic": self.deterministic,
                "cuda_graphs": self.cuda_graphs}

    def describe(self) -> str:
        extras = [name for name, on in (("channels-last", self.channels_last),
                                        ("compile", self.compile),
                                        ("CUDA graphs", self.cuda_graphs),
                                        ("deterministic", self.deterministic)) if on]
        precision = self.mixed_precision or "fp32"
        return ", ".join([str(self.device), precision, *extras])


def choose_device(requested: str, settings: DeviceSettings) -> torch.device:
    if requested == "auto":
        for name in settings.preferred:
            if name == "cuda" and torch.cuda.is_available():
                return torch.device("cuda")
            if name == "cpu":
                return torch.device("cpu")
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available",
                         "use --device cpu or auto")
    return torch.device(requested)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively: AVX-512 BF16 or AMX tiles."""
    probes = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(probe is not None for probe in probes):
        return any(probe() for probe in probes)
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def fast_precision(device: torch.device) -> str | None:
    """``"bf16"`` where ``device`` computes bfloat16 natively, else ``None`` (float32)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else None
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, bounded by a cgroup CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


@functools.cache
def keep_freed_memory() -> bool:
    """Tune the process for episodic training: glibc keeps freed memory, and torch uses one
    thread per usable CPU (:func:`usable_cpus`). Called once by the CLI (or by a program that
    asks for it), never at import; returns whether the allocator settings were applied.

    Episodic steps allocate and free the same large blocks over and over; by default glibc
    serves them with mmap and gives them back each time, and the page faults that follow cost
    more than the arithmetic (a 20-way evaluation on 2 cores spent 84% of its time in the
    kernel; with these settings it took 50-53 s instead of 77 s).

    Threads: torch starts one per CPU it sees, which in a container limited by a CPU quota or
    an affinity mask is more than it can use. The count does not follow the machine's load:
    the thread count changes the order of floating-point sums, and a run must compute the same
    whatever else runs beside it, and resume bit-exactly. On a machine shared with other work,
    set ``OMP_NUM_THREADS`` (left alone here): with more threads than free CPUs, OpenMP's waits
    made ProtoNet steps 8x slower (0.9 episodes/s with 2 threads on 2 busy cores, 7.5 with 1).
    """
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(usable_cpus())
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, say)
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def placement_for(config: dict[str, Any], settings: DeviceSettings) -> Placement:
    """Merge the algorithm's settings with the user's overrides in ``config``; ``auto`` (or no
    value) picks per device."""
    device = choose_device(str(config["device"]), settings)

    def pick(key: str, default: Any) -> Any:
        return default if config.get(key) in (None, AUTO) else config[key]

    amp = pick("amp", settings.mixed_precision)
    precision = fast_precision(device) if amp == AUTO else None if amp == "none" else amp
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("amp=fp16 is for CUDA devices", "use --set amp=bf16 or amp=none")
    channels_last = pick("channels_last", settings.channels_last)
    placement = Placement(
        device=device,
        mixed_precision=precision,
        channels_last=(_channels_last_pays(device, precision) if channels_last == AUTO
                       else bool(channels_last)),
        compile=bool(pick("compile", settings.compile)),
        deterministic=bool(pick("deterministic", settings.deterministic)),
        cuda_graphs=device.type == "cuda" and bool(pick("cuda_graphs", settings.cuda_graphs)),
    )
    _apply_backend_flags(placement)
    return placement


def _channels_last_pays(device: torch.device, precision: str | None) -> bool:
    """On the CPU always: oneDNN's convolutions and pooling work in that layout (Conv-4 steps
    1.25-1.4x faster in float32 on AVX2); on CUDA with reduced precision (tensor cores)."""
    return device.type == "cpu" or precision is not None


def _apply_backend_flags(placement: Placement) -> None:
    if placement.device.type == "cuda":
        # Episodic training has fixed shapes, which is what cuDNN's autotuner needs.
        torch.backends.cudnn.benchmark = not placement.deterministic
    if placement.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
