"""Moved to :mod:`pcamlab.runtime.device`; this module only re-exports it for code written before."""

from pcamlab.runtime.device import autocast, cpu_has_native_bf16, resolve_device, resolve_precision

__all__ = ["resolve_device", "resolve_precision", "autocast", "cpu_has_native_bf16"]
