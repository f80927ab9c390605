"""The draft worker: a draft model in its own process (or thread) on its own device, serving a target.

Entry points:

* :func:`serve_draft` — load the draft, join ``rendezvous`` as rank 1 and serve until EXIT
  (returns) or a channel failure (raises :class:`~specdec.draft.channel.ChannelError`).
  Callable from a subprocess or from a background thread; call it again to serve the next
  connection.
* ``python -m specdec.draft.worker --config JSON --rendezvous tcp://HOST:PORT`` — what
  ``LLM(mode="async")`` and the Triton ``draft`` model start (processes.py). ``--config`` is the
  engine's :class:`~specdec.config.EngineConfig`; the worker runs on its ``draft_device``.

Its runner comes from the same setup as the target's (runner/setup.py): KV sizing, attention
backend, compiled small ops and CUDA graphs are decided the same way, from the same config. The
target is authoritative for what to speculate: its CONFIG message (K, mode, fan-out, Saguaro C,
backup, batch and context limits) rebuilds the KV pool, sized for max_batch_size sequences of
max_model_len tokens plus one round's glue and tree; HELLO answers with the worker's capacity and
whether its steps replay CUDA graphs. Each SPECULATE is answered first (cache hit, or the backup),
and only then is the next speculation cache built, while the target verifies.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable

import torch

from ..config import MAX_K, EngineConfig
from ..layers.rotary import RotaryEmbedding, inverse_frequencies
from ..models.loader import LoadedModel
from ..processes import parent_gone
from ..runner.setup import build_runner
from .channel import DRAFT_RANK, Channel, ChannelError, Rendezvous
from .core import DraftCore
from .load import load_draft
from .messages import Command, Config, Hello

log = logging.getLogger(__name__)

WARN_EVERY_S = 30.0
_LOADED: dict[tuple, LoadedModel] = {}         # the last loaded draft of this process


class _Worker:
    """The serving loop's state: the loaded model, the runner sized at CONFIG, the core."""

    def __init__(self, model: LoadedModel, device: torch.device, cfg: EngineConfig):
        self.model, self.device, self.cfg = model, device, cfg
        self.core: DraftCore | None = None
        self.runner = None
        self._warned = 0.0

    def configure(self, msg: Config) -> Hello:
        if msg.async_mode and self.model.kind != "native":      # refused at the target's construction too
            raise ValueError("async SSD needs a native Llama-family draft (tree decode uses the paged runner)")
        mml = max(msg.max_model_len, self.cfg.max_model_len or 0)
        budget = sum(msg.fan_out_hit) if msg.async_mode else 0
        storage = mml + 2 * msg.k + 2              # a sequence, its glue, and a branch's tokens past the glue
        tree = budget * (msg.k + self.cfg.cache.block_size)      # per sequence: each branch's own blocks
        self._ensure_positions(storage)
        if self.core is not None:                     # free the old pool before allocating the new one
            self.core = self.runner = None
        # num_kv_blocks sizes the engine's pools; the worker's sequences also hold the speculation tree,
        # so its pool is sized from memory (kv_cache_memory_gib, or a share of free memory)
        cfg = dataclasses.replace(self.cfg, max_batch_size=msg.max_batch_size,
                                  cache=dataclasses.replace(self.cfg.cache, num_kv_blocks=None),
                                  spec=dataclasses.replace(self.cfg.spec, k=msg.k))
        self.runner = build_runner(self.model, self.device, cfg, name="draft", max_model_len=storage,
                                   want_tokens=msg.max_batch_size * (storage + tree))
        self.core = DraftCore(self.runner, self.device, msg)
        log.info("draft configured: K=%d async=%s fan_out_hit=%s miss=%s fast=%s geometric=%s C=%s backup=%s",
                 msg.k, msg.async_mode, msg.fan_out_hit, msg.fan_out_miss, msg.fan_out_fast, msg.geometric,
                 msg.sampler_x, msg.backup)
        return Hello(self.model.vocab_size, mml, self.kv_tokens, os.getpid(),
                     graphs=getattr(self.runner, "graph", None) is not None,
                     attention=getattr(self.runner, "attn_backend", ""))

    @property
    def kv_tokens(self) -> int:
        r = self.runner
        return r.blocks.num_blocks * r.blocks.block_size if hasattr(r, "blocks") else r.capacity

    def _ensure_positions(self, n: int) -> None:
        m = self.model
        if m.kind == "native" and m.module.rotary.cos.shape[0] < n:
            m.module.set_rotary(RotaryEmbedding(*inverse_frequencies(m.hf_config), n).to(self.device))

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
                ch.send(self.core.speculate(msg))     # waits for the last build first (its one host sync)
                self.core.build()                     # only launched: the next message is read while it runs
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


def draft_device(cfg: EngineConfig) -> torch.device:
    return torch.device(cfg.draft_device or cfg.device)


def serve_draft(cfg: EngineConfig, rendezvous: str, *, connect_timeout_s: float | None = None,
                num_threads: int | None = None, should_stop: Callable[[], bool] = lambda: False) -> None:
    """Load ``cfg.spec.draft`` on ``cfg.draft_device``, join ``rendezvous`` (tcp://HOST:PORT, hosted by the
    target) as rank 1, serve.

    Returns after EXIT; raises ChannelError when the channel fails, TimeoutError when no target
    joined within connect_timeout_s (None = wait until should_stop() is true).
    """
    if not cfg.spec.draft or cfg.spec.remote or cfg.spec.draft == "ngram":
        raise ValueError(f"a draft worker needs a draft model; got draft={cfg.spec.draft!r}")
    dev = draft_device(cfg)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)                  # per thread: this thread runs every forward
    if num_threads:
        torch.set_num_threads(num_threads)
    positions = None if cfg.max_model_len is None else cfg.max_model_len + 2 * MAX_K + 2
    key = (cfg.spec.draft, str(dev), cfg.dtype, cfg.target, cfg.impl, positions)
    model = _LOADED.get(key)
    if model is None:                               # kept across calls: a reconnect does not reload
        _LOADED.clear()
        model = _LOADED[key] = load_draft(cfg.spec.draft, dev, cfg.dtype, target=cfg.target, impl=cfg.impl,
                                          max_positions=positions)
    worker = _Worker(model, dev, cfg)
    log.info("draft %s loaded on %s; joining %s", cfg.spec.draft, dev, rendezvous)
    ch = Channel.connect(Rendezvous(rendezvous, DRAFT_RANK), dev, cfg.spec.channel_timeout_s, connect_timeout_s,
                         should_stop)
    try:
        worker.serve(ch)
    finally:
        ch.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="specdec draft worker (rank 1 of a target<->draft channel)")
    p.add_argument("--config", required=True, help="the engine's EngineConfig as JSON (EngineConfig.to_json)")
    p.add_argument("--rendezvous", required=True, help="tcp://HOST:PORT hosted by the target")
    p.add_argument("--num-threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--connect-timeout", type=float, default=300.0)
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    p.add_argument("--log-level", default="WARNING")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level, format="[draft %(process)d] %(levelname)s %(name)s: %(message)s")
    try:
        serve_draft(EngineConfig.from_json(a.config), a.rendezvous, connect_timeout_s=a.connect_timeout,
                    num_threads=a.num_threads, should_stop=lambda: parent_gone(a.parent_pid))
    except (ChannelError, TimeoutError) as e:
        log.warning("draft worker stops: %s", e)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
