"""Device choice, kept in one place so no kernel branches on it."""

from __future__ import annotations

import warnings

import torch

from .errors import InputError

_warned_no_cuda = False


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or a ``torch.device`` into a usable device.

    ``'cuda'`` on a machine without CUDA warns once per process and returns the CPU, so a
    script written for a GPU still runs on a laptop.
    """
    global _warned_no_cuda
    if isinstance(device, torch.device):
        requested = device
    elif isinstance(device, str):
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            requested = torch.device(device)
        except RuntimeError:
            raise InputError(
                f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
            ) from None
    else:
        raise InputError(f"device must be a string or torch.device, got {type(device).__name__}")
    if requested.type == "cuda" and not torch.cuda.is_available():
        if not _warned_no_cuda:
            warnings.warn("CUDA is not available; running on the CPU instead", stacklevel=3)
            _warned_no_cuda = True
        return torch.device("cpu")
    if requested.type not in ("cpu", "cuda"):
        raise InputError(f"device={device!r} is not supported; use 'cpu' or 'cuda'")
    return requested
