"""Linear layers on the CPU with their weights packed once for oneDNN.

``F.linear`` in float32 on the CPU calls MKL's sgemm, which re-packs the weight panel at every call.
For the few rows of a decode step that packing costs more than the product: on a 2-core VM
(BENCHMARKS.md, ninth session) SmolLM2-135M's 30 layers of linears took about 34 ms for 1 row and
65 ms for the 3 rows of a K=2 verify, and its 49152 x 576 LM head 10 ms for 1 row and 35 ms for 3.
With the weights reordered once into oneDNN's blocked layout, the same products take about 19 and
17 ms, and 4 and 4 ms: a verify of K + 1 tokens then reads the weights once, as a decode step does.

These are torch's own ops, the ones its inductor freezing pass puts in place of a float32 CPU linear
(``mkldnn._reorder_linear_weight`` once, ``mkldnn._linear_pointwise`` per call). :func:`pack_linears`
turns each eligible ``nn.Linear`` of a model into a :class:`PackedLinear` in place: the parameters stay
what they were (state_dict, tied and shared weights, loaders and tensor-parallel shards see no change);
the packed copy rides beside them. Memory: one more copy of every packed weight (SmolLM2-135M: 0.5 GiB
in float32, the tied LM head counted once more); a model whose copies would take more than a quarter of the
machine's memory is not packed (:func:`memory_budget`).

Only inference uses the packed copy: with autograd recording (training a draft), or after the weight
changed (replaced, or written in place: its version counter moved), a call runs ``F.linear`` or packs
again. The results are not bitwise those of ``F.linear`` (another summation order, as MKL's own
differ between 1 and 3 rows); greedy exactness holds because target-alone and speculative decoding
run the same layers.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# oneDNN picks the weight's blocked layout for this many rows; measured alike for 1, 3 and 48 rows
PACK_BATCH_HINT = 64


def available() -> bool:
    """Whether this torch build has oneDNN and the two ops used here."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` that, in inference on the CPU, multiplies with a oneDNN-packed copy of its weight.
    Made by :func:`pack_linears` (class swap of an existing module), never constructed directly."""

    _packed: torch.Tensor | None
    _packed_of: tuple | None          # (weight object id, data_ptr, version) the packed copy was made from

    def _source(self) -> tuple:
        w = self.weight
        # an inference tensor (made under inference_mode) has no version counter, and cannot be written in place
        return id(w), w.data_ptr(), 0 if w.is_inference() else w._version

    def pack(self) -> None:
        with torch.no_grad():
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), PACK_BATCH_HINT)
        self._packed_of = self._source()

    def forward(self, x: torch.Tensor) -> torch.Tensor:    # x [..., in_features]
        if x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32 or (
                torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            return F.linear(x, self.weight, self.bias)
        if self._packed_of != self._source():
            self.pack()
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")


def memory_budget() -> int:
    """Bytes the packed copies may take: a quarter of this machine's physical memory (the copies double the
    linears' weights; a model too large for that keeps F.linear)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):          # not POSIX: no cap known, no packing
        return 0


def pack_linears(model: nn.Module, budget: int | None = None) -> int:
    """Turn every float32 CPU ``nn.Linear`` of ``model`` into a :class:`PackedLinear` (idempotent: one
    already packed, e.g. a layer a ``self:N`` draft shares with its target, is left alone), unless their
    packed copies would take more than ``budget`` bytes (default :func:`memory_budget`). Returns the number
    of layers packed now; 0 when this torch has no oneDNN or the model is over the budget."""
    if not available():
        return 0
    mods = [m for m in model.modules()
            if type(m) is nn.Linear and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32]
    nbytes = sum(m.weight.numel() * 4 for m in mods)
    budget = memory_budget() if budget is None else budget
    if nbytes > budget:
        log.warning("linear layers not packed for oneDNN: their copies would take %.0f MiB, over the %.0f MiB "
                    "allowed (a quarter of this machine's memory); they run F.linear", nbytes / 2**20, budget / 2**20)
        return 0
    for mod in mods:
        mod.__class__ = PackedLinear
        mod.pack()
    n = len(mods)
    if n:
        log.info("%d linear layers packed for oneDNN on the CPU (%.0f MiB more)", n, nbytes / 2**20)
    return n
