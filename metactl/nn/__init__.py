"""Shared network parts: backbones and helpers for inner loops."""
