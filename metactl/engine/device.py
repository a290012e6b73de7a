"""Choosing the device and applying an algorithm's device settings."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from dataclasses import dataclass
from typing import Any

import torch

from metactl.algorithm import DeviceSettings
from metactl.errors import UsageError


@dataclass(frozen=True)
class Placement:
    """The device and settings a run actually uses."""

    device: torch.device
    mixed_precision: str | None
    channels_last: bool
    compile: bool
    deterministic: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type != "cuda" or self.mixed_precision is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mixed_precision == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def describe(self) -> str:
        extras = [name for name, on in (("channels-last", self.channels_last),
                                        ("compile", self.compile),
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
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory instead of returning it to the system after every step.

    Episodic steps allocate and free the same large blocks over and over; by default glibc
    serves them with mmap and gives them back each time, and the page faults that follow cost
    more than the arithmetic (a 20-way evaluation on 2 cores spent 84% of its time in the
    kernel; with these settings it took 50-53 s instead of 77 s). Returns whether the settings
    were applied.
    """
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, say)
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def placement_for(config: dict[str, Any], settings: DeviceSettings) -> Placement:
    """Merge the algorithm's settings with the user's overrides in ``config``."""
    device = choose_device(str(config["device"]), settings)

    def pick(key: str, default: Any) -> Any:
        return default if config.get(key) is None else config[key]

    amp = pick("amp", settings.mixed_precision)
    placement = Placement(
        device=device,
        mixed_precision=None if amp in (None, "none") else amp,
        channels_last=bool(pick("channels_last", settings.channels_last)),
        compile=bool(pick("compile", settings.compile)),
        deterministic=bool(pick("deterministic", settings.deterministic)),
    )
    _apply_backend_flags(placement)
    return placement


def _apply_backend_flags(placement: Placement) -> None:
    if placement.device.type == "cuda":
        # Episodic training has fixed shapes, which is what cuDNN's autotuner needs.
        torch.backends.cudnn.benchmark = not placement.deterministic
    if placement.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
