"""Host-to-device uploads that do not make the host wait for the GPU.

A copy from pageable host memory (``torch.tensor(values).to("cuda", non_blocking=True)``,
``torch.tensor(values, device="cuda")``) blocks the host until every kernel already queued on the
current stream has finished (CUDA stages pageable memory through pinned memory and synchronizes
with the stream first). In a decode round that is a hidden host sync: the host stops preparing the
next launch while the GPU runs. :func:`upload` stages the values in pinned memory and copies with
``non_blocking``; PyTorch's caching host allocator keeps the pinned block alive until the copy's
stream has consumed it. On CPU (and MPS) it is a plain tensor build.
"""
from __future__ import annotations

import torch


def upload(values, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``values`` (a list, a numpy array or a CPU tensor) as a tensor on ``device``, without a host sync."""
    t = values if isinstance(values, torch.Tensor) else torch.as_tensor(values, dtype=dtype)
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    device = torch.device(device)
    if device.type != "cuda" or t.numel() == 0:        # an empty copy moves nothing and waits for nothing
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def download(t: torch.Tensor) -> tuple[torch.Tensor, "torch.cuda.Event | None"]:
    """A host copy of ``t``, started now without waiting: read it after ``event.synchronize()`` (the event
    marks the copy's end on the current stream). The host buffer is pinned (PyTorch's caching host
    allocator, so no allocation per call once warm). Off CUDA: a copy of ``t`` (it may be a buffer that the
    next step rewrites, as a replayed graph's output is) and no event."""
    if t.device.type != "cuda":
        return t.to("cpu", copy=True), None
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event
