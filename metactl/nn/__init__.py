"""Shared network parts: backbones and helpers for inner loops."""

BUILT_IN_BACKBONES = ("conv4", "resnet12")
"""The backbones of :mod:`metactl.nn.backbones`; plugins may not register these names."""
