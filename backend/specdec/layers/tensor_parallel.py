"""Megatron-style tensor parallelism: the collectives the model calls and the vocab-parallel embedding.

Rank r of a group of tp ranks holds (the loader reads only these slices, models/loader.py):

* attention: query heads [r * H/tp, (r+1) * H/tp) and the KV heads they read, i.e. KVH/tp heads
  (or, when tp > KVH, the one KV head its query heads share: replicated on tp/KVH ranks) — the
  fused ``qkv`` is column-parallel; ``o_proj`` is row-parallel (its input columns), then all-reduce;
* MLP: ``gate_up`` rows of the intermediate slice [r * I/tp, (r+1) * I/tp) (column-parallel),
  ``down`` the same columns (row-parallel), then all-reduce;
* embedding and LM head: vocabulary rows [r * Vs, (r+1) * Vs) with Vs = ceil(V / tp) (the last
  shard zero-padded). The embedding looks up the ids it owns, zeros the others and all-reduces;
  the LM head's partial logits [N, Vs] are gathered to rank 0 only (the only rank that samples).

The group is not torch.distributed's default group: in SSD the default group of rank 0 is its
channel to the draft worker (spec/transport.py). It is a standalone Gloo/NCCL backend object built
on the TP rendezvous store, driven through its own collective methods (which CUDA graphs capture).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass(slots=True)
class TPGroup:
    """One rank's handle on the tensor-parallel group (rank 0 samples; the others only compute)."""

    rank: int
    size: int
    backend: object = None            # dist.ProcessGroupGloo / ProcessGroupNCCL once connected

    def connect(self, store, device: torch.device, timeout_s: float) -> None:
        """Join the group (blocks until every rank has joined): NCCL between CUDA devices (one GPU per
        rank, made this thread's current device), Gloo on CPU. Before this the group only gives shapes
        (a model can be built and loaded while the other ranks start)."""
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.PrefixStore("tp/pg/", store)
        if device.type == "cuda":
            torch.cuda.set_device(device)                  # NCCL's current device: this rank's GPU
            opts = dist.ProcessGroupNCCL.Options()
            opts.is_high_priority_stream = False
            opts._timeout = timeout
            self.backend = dist.ProcessGroupNCCL(store, self.rank, self.size, opts)
            if hasattr(self.backend, "eager_connect_single_device"):   # bind the communicator to this GPU now
                self.backend.eager_connect_single_device(device)
        else:
            self.backend = dist.ProcessGroupGloo(store, self.rank, self.size, timeout)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of x over the ranks, in place (returns x)."""
        opts = dist.AllreduceOptions()
        opts.reduceOp = dist.ReduceOp.SUM
        self.backend.allreduce([x], opts).wait()
        return x

    def broadcast(self, x: torch.Tensor) -> None:
        """Rank 0's x into every rank's x (same shape everywhere)."""
        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor = 0, 0
        self.backend.broadcast([x], opts).wait()

    def gather_vocab(self, logits: torch.Tensor, vocab_size: int) -> torch.Tensor | None:
        """Partial logits [N, Vs] of every rank -> [N, vocab_size] on rank 0; None on the others."""
        opts = dist.GatherOptions()
        opts.rootRank = 0
        logits = logits.contiguous()
        out = [[torch.empty_like(logits) for _ in range(self.size)]] if self.leader else []
        self.backend.gather(out, [logits], opts).wait()
        if not self.leader:
            return None
        return torch.cat(out[0], dim=-1)[:, :vocab_size]

    def shutdown(self) -> None:
        """Leave the group, without waiting for the other ranks. NCCL: abort, which frees this
        rank's communicator locally; its graceful shutdown can wait for peers that are themselves
        waiting (rank 0 waits for the workers to exit first), a deadlock seen on two H200s.
        Callers reach this only when no collective is pending (after EXIT)."""
        backend, self.backend = self.backend, None
        if backend is None:
            return
        try:
            if isinstance(backend, dist.ProcessGroupNCCL) and hasattr(backend, "abort"):
                backend.abort()
            elif hasattr(backend, "shutdown"):
                backend.shutdown()
        except Exception:                # a peer already gone: nothing left to tear down
            pass


def vocab_shard(vocab_size: int, rank: int, size: int) -> tuple[int, int, int]:
    """(first id, ids held, rows allocated) of rank's vocabulary shard; rows = ceil(V / size)."""
    rows = -(-vocab_size // size)
    start = min(rank * rows, vocab_size)
    return start, min(vocab_size, start + rows) - start, rows


class VocabParallelEmbedding(nn.Embedding):
    """This rank's rows of the embedding; ids outside the shard contribute zeros, then all-reduce."""

    def __init__(self, vocab_size: int, dim: int, tp: TPGroup):
        self.start, _, rows = vocab_shard(vocab_size, tp.rank, tp.size)
        super().__init__(rows, dim)
        self.tp = tp

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] (full vocabulary) -> [T, dim]."""
        local = ids - self.start
        outside = (local < 0) | (local >= self.num_embeddings)
        x = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.tp.all_reduce(x.masked_fill_(outside[:, None], 0))
