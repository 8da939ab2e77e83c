"""Device choice, kept in one place so no kernel branches on it."""

from __future__ import annotations

import os
import re
import warnings

from .errors import InputError

# Set in the environment of an embedded cluster's workers (``distributed.ClusterPlan``): the
# device the worker owns. A GPU worker computes on its own GPU as cuda:0 (its first visible
# one), whatever ``cuda:N`` the run names; a CPU worker runs a run's 'auto' or 'cuda' on the
# CPU, silently (the coordinator chose CPU workers and said why).
WORKER_DEVICE = "FLASHSCENIC_WORKER_DEVICE"

_warned_no_cuda = False


def parse_device(device) -> tuple[str, int | None]:
    """``('auto' | 'cpu' | 'cuda', N or None)`` of a device name or ``torch.device``, without
    touching CUDA; ``InputError`` for anything else."""
    if type(device).__name__ == "device" and hasattr(device, "type"):  # a torch.device
        kind, index = device.type, device.index
    elif isinstance(device, str):
        match = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", device.strip())
        if match is None or match[1] != "cuda" and match[2] is not None:
            raise InputError(f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        kind, index = match[1], None if match[2] is None else int(match[2])
    else:
        raise InputError(f"device must be a string or torch.device, got {type(device).__name__}")
    if kind not in ("cpu", "cuda", "auto"):
        raise InputError(f"device={device!r} is not supported; use 'cpu' or 'cuda'")
    return kind, index


def resolve_device(device):
    """Turn ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or a ``torch.device`` into a usable device.

    ``'cuda'`` on a machine without CUDA warns once per process and returns the CPU, so a
    script written for a GPU still runs on a laptop; ``'cuda:N'`` beyond the GPUs there is
    an error. In a worker of an embedded cluster, the worker's own device (``WORKER_DEVICE``)
    stands for any ``'auto'``/``'cuda'``/``'cuda:N'``.
    """
    import torch

    global _warned_no_cuda
    kind, index = parse_device(device)
    own = os.environ.get(WORKER_DEVICE)
    if own and kind != "cpu":
        kind, index = parse_device(own)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        if not _warned_no_cuda:
            warnings.warn("CUDA is not available; running on the CPU instead", stacklevel=3)
            _warned_no_cuda = True
        return torch.device("cpu")
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise InputError(f"device='cuda:{index}' but {torch.cuda.device_count()} GPU(s) are visible here "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return torch.device(kind, index)
