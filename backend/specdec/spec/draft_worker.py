"""The draft worker: a draft model in its own process (or thread) on its own device, serving a target.

Entry points:

* :func:`serve_draft` — load the draft, join ``rendezvous`` as rank 1 and serve until EXIT
  (returns) or a channel failure (raises :class:`~specdec.spec.transport.ChannelError`).
  Callable from a subprocess or from a background thread (the Triton ``draft`` model calls
  it from ``initialize``); call it again to serve the next connection.
* ``python -m specdec.spec.draft_worker --draft ... --rendezvous tcp://HOST:PORT`` — what
  ``LLM(mode="async")`` spawns.

The target is authoritative: its CONFIG message (K, mode, fan-out, Saguaro C, backup) replaces
``spec_opts``, which are validated up front and logged when they disagree. The KV pool is
(re)built at each CONFIG, sized for max_batch_size sequences of max_model_len tokens plus one
round's glue and tree. Each SPECULATE is answered first (cache hit, or the backup), and only
then is the next speculation cache built, while the target verifies.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable

import torch

from ..config import MAX_K, SpecConfig
from ..engine.hf_runner import HFRunner
from ..engine.runner import PagedRunner
from ..models.loader import DTYPES, LoadedModel, load_model
from ..layers.rotary import RotaryEmbedding, inverse_frequencies
from .draft_core import DraftCore
from .messages import Command, Config, Hello
from .transport import DRAFT_RANK, Channel, ChannelError, Rendezvous

log = logging.getLogger(__name__)

CPU_KV_BUDGET_GIB = 1.0
WARN_EVERY_S = 30.0
_LOADED: dict[tuple, LoadedModel] = {}         # the last loaded draft of this process


def load_draft(draft: str, device: torch.device, dtype: str, target: str | None = None,
               max_positions: int | None = None) -> LoadedModel:
    """A draft path/alias, or ``self:N`` = the first N layers of ``target``."""
    if draft.startswith("self:"):
        if target is None:
            raise ValueError(f"draft={draft!r} needs the target model (target=...)")
        try:
            n = int(draft.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"draft={draft!r}: expected 'self:N' with N an integer") from None
        m = load_model(target, device, dtype, "auto", max_positions)
        if m.kind != "native":
            raise ValueError("draft 'self:N' needs a native Llama-family target")
        m.module = m.module.first_layers(n)
        return m
    return load_model(draft, device, dtype, "auto", max_positions)


class _Worker:
    """The serving loop's state: the loaded model, the runner sized at CONFIG, the core."""

    def __init__(self, model: LoadedModel, device: torch.device, dtype: str, max_batch_size: int,
                 max_model_len: int | None, block_size: int, kv_cache_memory_gib: float | None, defaults: SpecConfig):
        self.model, self.device, self.dtype = model, device, dtype
        self.max_batch_size, self.max_model_len = max_batch_size, max_model_len
        self.block_size, self.memory_gib, self.defaults = block_size, kv_cache_memory_gib, defaults
        self.core: DraftCore | None = None
        self.kv_tokens = 0
        self._warned = 0.0

    def configure(self, cfg: Config) -> Hello:
        if cfg.async_mode and self.model.kind != "native":
            raise ValueError("async SSD needs a native Llama-family draft (tree decode uses custom masks)")
        d = self.defaults
        if (d.fan_out_hit and d.fan_out_hit != cfg.fan_out_hit) or (d.sampler_x is not None and d.sampler_x != cfg.sampler_x):
            log.warning("draft worker options differ from the target's CONFIG; the target's apply: %s", cfg)
        mml = max(cfg.max_model_len, self.max_model_len or 0)
        budget = sum(cfg.fan_out_hit) if cfg.async_mode else 0
        storage = mml + cfg.k + 1 + cfg.k * budget + 1                   # prefix + glue + tree, per sequence
        self._ensure_positions(mml + 2 * cfg.k + 2)
        self.core = DraftCore(self._runner(storage, cfg), self.device, cfg)
        log.info("draft configured: K=%d async=%s fan_out_hit=%s miss=%s fast=%s geometric=%s C=%s backup=%s",
                 cfg.k, cfg.async_mode, cfg.fan_out_hit, cfg.fan_out_miss, cfg.fan_out_fast, cfg.geometric,
                 cfg.sampler_x, cfg.backup)
        return Hello(self.model.vocab_size, mml, self.kv_tokens, os.getpid())

    def _ensure_positions(self, n: int) -> None:
        m = self.model
        if m.kind == "native" and m.module.rotary.cos.shape[0] < n:
            m.module.set_rotary(RotaryEmbedding(*inverse_frequencies(m.hf_config), n).to(self.device))

    def _runner(self, storage: int, cfg: Config):
        m, dt = self.model, DTYPES[self.dtype]
        want = cfg.max_batch_size * storage
        if m.kind == "hf":
            self.kv_tokens = want
            return HFRunner(m.module, self.device, storage, want, "draft")
        per_token = m.arch.kv_bytes_per_token(dt, m.module.num_layers)
        if self.memory_gib is not None:
            budget = self.memory_gib * 2**30
        elif self.device.type == "cuda":
            budget = torch.cuda.mem_get_info(self.device)[0] * 0.8
        else:
            budget = CPU_KV_BUDGET_GIB * 2**30
        tokens = int(min(want, budget // per_token))
        blocks = max(tokens // self.block_size, -(-storage // self.block_size))
        self.kv_tokens = blocks * self.block_size
        if self.core is not None:                     # free the old pool before allocating the new one
            self.core.runner = None
            self.core = None
        return PagedRunner(m.module, self.device, dt, self.block_size, blocks, storage, "draft")

    def serve(self, ch: Channel) -> None:
        while True:
            msg = ch.recv()
            cmd = msg.command
            if cmd is Command.CONFIG:
                ch.send(self.configure(msg))
            elif cmd is Command.EXIT:
                if self.core is not None:
                    log.info("draft worker exiting: %s", self.core.summary())
                return
            elif self.core is None:
                raise ChannelError(f"{cmd.name} before CONFIG")
            elif cmd is Command.SPECULATE:
                ch.send(self.core.speculate(msg))
                self.core.build()                     # overlaps the target's verification
                self._check_hidden()
            elif cmd is Command.PREFILL:
                self.core.prefill(msg)
            elif cmd is Command.FREE:
                self.core.free(msg.seq_ids)
            else:
                raise ChannelError(f"unexpected message {cmd.name}")

    def _check_hidden(self) -> None:
        a = self.core.adaptive
        build, verify = a.build_s.value, a.verify_s.value
        now = time.monotonic()
        if build and verify and build > verify and now - self._warned > WARN_EVERY_S:
            self._warned = now
            log.warning("draft step %.2f ms > target round %.2f ms: the draft is not hidden behind verification "
                        "(lower the fan-out budget or K, or use a smaller draft)", 1e3 * build, 1e3 * verify)


def serve_draft(draft: str, device: str, dtype: str, rendezvous: str, *, target: str | None = None,
                max_batch_size: int = 16, max_model_len: int | None = None, block_size: int = 16,
                kv_cache_memory_gib: float | None = None, connect_timeout_s: float | None = None,
                channel_timeout_s: float = 120.0, num_threads: int | None = None,
                should_stop: Callable[[], bool] = lambda: False, **spec_opts) -> None:
    """Load the draft, join ``rendezvous`` (tcp://HOST:PORT, hosted by the target) as rank 1, serve.

    Returns after EXIT; raises ChannelError when the channel fails, TimeoutError when no target
    joined within connect_timeout_s (None = wait until should_stop() is true). spec_opts are
    SpecConfig fields (k, fan_out, fan_out_hit, fan_out_miss, sampler_x, backup), validated
    here; the target's CONFIG takes precedence.
    """
    defaults = SpecConfig(draft=draft, **spec_opts)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)                  # per thread: this thread runs every forward
    if num_threads:
        torch.set_num_threads(num_threads)
    positions = None if max_model_len is None else max_model_len + 2 * MAX_K + 2
    key = (draft, str(dev), dtype, target, positions)
    model = _LOADED.get(key)
    if model is None:                               # kept across calls: a reconnect does not reload
        _LOADED.clear()
        model = _LOADED[key] = load_draft(draft, dev, dtype, target, positions)
    worker = _Worker(model, dev, dtype, max_batch_size, max_model_len, block_size, kv_cache_memory_gib, defaults)
    log.info("draft %s loaded on %s; joining %s", draft, dev, rendezvous)
    ch = Channel.connect(Rendezvous(rendezvous, DRAFT_RANK), dev, channel_timeout_s, connect_timeout_s, should_stop)
    try:
        worker.serve(ch)
    finally:
        ch.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="specdec draft worker (rank 1 of a target<->draft channel)")
    p.add_argument("--draft", required=True)
    p.add_argument("--target", default=None, help="the target model, for draft 'self:N'")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--rendezvous", required=True, help="tcp://HOST:PORT hosted by the target")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--kv-cache-memory-gib", type=float, default=None)
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--connect-timeout", type=float, default=300.0)
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    p.add_argument("--log-level", default="WARNING")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level, format="[draft %(process)d] %(levelname)s %(name)s: %(message)s")
    parent_gone = (lambda: a.parent_pid is not None and os.getppid() != a.parent_pid)
    try:
        serve_draft(a.draft, a.device, a.dtype, a.rendezvous, target=a.target, max_batch_size=a.max_batch_size,
                    max_model_len=a.max_model_len, block_size=a.block_size, kv_cache_memory_gib=a.kv_cache_memory_gib,
                    connect_timeout_s=a.connect_timeout, num_threads=a.num_threads, should_stop=parent_gone)
    except (ChannelError, TimeoutError) as e:
        log.warning("draft worker stops: %s", e)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
