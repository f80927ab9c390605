"""The engine's draft slot: which drafter speculates this round, if any, and its whole lifetime.

:class:`DraftSlot` receives an explicit :class:`DraftContext` (what a drafter needs to know about the
target), never the engine. It builds the drafter the config names:

* none (mode "ar", or no draft): the slot stays empty and every round is plain decoding;
* ``ngram``: :class:`~.ngram.NgramDrafter`;
* a model or ``self:N`` in sync mode: :class:`~.model.ModelDrafter` over a runner from the one runner
  setup (runner/setup.py), on ``draft_device``;
* SSD (mode "async") with the draft in this process (``draft_placement`` in_process, or auto with the
  draft on the target's device): :class:`~.inprocess.InProcessDrafter` over a :class:`~.core.DraftCore`
  whose runner comes from the same setup, on a second CUDA stream (a thread on CPU);
* a draft worker (mode "async" placed in a worker, or ``remote:tcp://...``): a :class:`~.link.DraftLink` connects in the
  background (a spawned worker is waited for, so a bad draft fails at construction). Once a channel
  is up, :meth:`poll` (called by the engine at the top of each step) does the CONFIG/HELLO handshake
  and attaches a :class:`~.remote.RemoteDrafter`. A channel failure detaches it (:meth:`failed`): the
  engine decodes autoregressively, keeping every committed token, while the link reconnects.

``close()`` sends EXIT to a worker, ends the link and frees the channel's process group, so a later
engine in the same process can open a channel of its own.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from ..config import EngineConfig, self_draft_layers
from ..layers.rotary import RotaryEmbedding, inverse_frequencies
from ..models.eagle import is_eagle_folder
from ..models.loader import LoadedModel
from ..runner.setup import build_runner
from ..spec.fanout import resolve_fan_out
from .base import Drafter
from .channel import Channel, ChannelError
from .core import DraftCore
from .inprocess import DraftExecutor, InProcessDrafter
from .link import DraftLink, SpawnArgs
from .load import check_async_draft, check_vocab, draft_folder, load_draft
from .model import ModelDrafter
from .ngram import NgramDrafter
from .remote import RemoteDrafter

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DraftContext:
    """What the slot knows about the target: its config, devices, vocabulary and (for self:N) the model."""

    config: EngineConfig              # the engine's, with the effective max_model_len
    device: torch.device              # the target's device (rank 0): proposals go there
    draft_device: torch.device
    vocab_size: int                   # the target's vocabulary: q has this many columns
    tokenizer: object                 # the target's tokenizer (vocabulary checks)
    target: LoadedModel               # the loaded target (self:N shares its weights)


class DraftSlot:
    def __init__(self, ctx: DraftContext):
        self.ctx = ctx
        self.drafter: Drafter | None = None
        self.runner = None                     # a local draft model's runner (its KV pool)
        self.link: DraftLink | None = None
        cfg = ctx.config
        spec = cfg.spec
        if cfg.mode == "ar" or spec.draft is None:
            return
        if cfg.draft_in_process:
            self.drafter = self._in_process()
        elif cfg.uses_draft_worker:
            self._open_link()
        elif spec.draft == "ngram":
            self.drafter = NgramDrafter(spec.ngram_max, spec.ngram_min)
        else:
            self.drafter = self._local_model()

    @property
    def active(self) -> bool:
        return self.drafter is not None

    # --- a draft model in this process ------------------------------------------------------
    def _local_model(self) -> Drafter:
        ctx, cfg = self.ctx, self.ctx.config
        draft = cfg.spec.draft
        shared = self_draft_layers(draft) is not None
        if not shared and is_eagle_folder(draft_folder(draft)):     # hook: an EAGLE head (draft/eagle.py)
            from .eagle import build_eagle_drafter
            return build_eagle_drafter(draft_folder(draft), ctx)
        if shared and ctx.draft_device != ctx.device:
            raise ValueError(f"draft {draft!r} shares the target's weights and must run on the target's device")
        m = load_draft(draft, ctx.draft_device, cfg.dtype, target_model=ctx.target if shared else None,
                       impl=cfg.impl, max_positions=cfg.max_model_len)
        if not shared:
            check_vocab(ctx.tokenizer, draft_folder=m.folder, draft_vocab_size=m.vocab_size)
        same_device = ctx.draft_device == ctx.device
        self.runner = build_runner(m, ctx.draft_device, cfg, name=f"draft({draft})", max_model_len=cfg.max_model_len,
                                   want_tokens=cfg.max_batch_size * (cfg.max_model_len + 2 * cfg.spec.k + 2),
                                   share=0.5 if same_device else 1.0)
        return ModelDrafter(self.runner, cfg.spec.draft_kv_append, target_vocab=ctx.vocab_size,
                            target_device=ctx.device)

    # --- SSD in this process ------------------------------------------------------------------
    def _in_process(self) -> InProcessDrafter:
        """The draft model, its runner (the one setup; a pool for every sequence plus one round's glue and
        tree) and a core driven from this process."""
        ctx, cfg = self.ctx, self.ctx.config
        spec = cfg.spec
        check_async_draft(spec.draft, cfg.target, cfg.impl)
        shared = self_draft_layers(spec.draft) is not None
        if shared and ctx.draft_device != ctx.device:
            raise ValueError(f"draft {spec.draft!r} shares the target's weights and must run on the target's device")
        mml, K = cfg.max_model_len, spec.k
        storage = mml + 2 * K + 2                   # a sequence, its glue, and a branch's tokens past the glue
        m = load_draft(spec.draft, ctx.draft_device, cfg.dtype, target_model=ctx.target if shared else None,
                       impl=cfg.impl, max_positions=storage)
        if m.kind != "native":
            raise ValueError("async SSD needs a native Llama-family draft (tree decode uses the paged runner)")
        if m.module.rotary.cos.shape[0] < storage:  # self:N shares the target's table, sized for mml only
            m.module.set_rotary(RotaryEmbedding(*inverse_frequencies(m.hf_config), storage).to(ctx.draft_device))
        if not shared:
            check_vocab(ctx.tokenizer, draft_folder=m.folder, draft_vocab_size=m.vocab_size)
        budget = sum(resolve_fan_out(spec)[0])
        tree = budget * (K + cfg.cache.block_size)                  # per sequence: each branch's own blocks
        run_cfg = dataclasses.replace(cfg, cache=dataclasses.replace(cfg.cache, num_kv_blocks=None))
        self.runner = build_runner(m, ctx.draft_device, run_cfg, name="draft(ssd)", max_model_len=storage,
                                   want_tokens=cfg.max_batch_size * (storage + tree),
                                   share=0.5 if ctx.draft_device == ctx.device else 1.0)
        executor = DraftExecutor(ctx.draft_device)
        msg = InProcessDrafter.config_message(spec, ctx.vocab_size, cfg.max_batch_size, mml, cfg.seed)
        core = DraftCore(self.runner, ctx.draft_device, msg)
        log.info("SSD draft %s in this process on %s (%s)", spec.draft, ctx.draft_device,
                 "second CUDA stream" if executor.stream is not None else "draft thread")
        return InProcessDrafter(core, spec, ctx.vocab_size, cfg.max_batch_size, mml, cfg.seed, ctx.device, executor)

    # --- a draft worker ---------------------------------------------------------------------
    def _open_link(self) -> None:
        """Remote: connect in the background and serve AR meanwhile. Spawned: start the worker and
        wait for it, so that a bad draft fails here."""
        ctx, cfg = self.ctx, self.ctx.config
        spec = cfg.spec
        if spec.remote:
            self.link = DraftLink(ctx.device, rendezvous=spec.draft[len("remote:"):], timeout_s=spec.channel_timeout_s)
            self.link.start()
            return
        if cfg.mode == "async":
            check_async_draft(spec.draft, cfg.target, cfg.impl)
        if self_draft_layers(spec.draft) is not None:
            if ctx.target.kind != "native":
                raise ValueError(f"draft {spec.draft!r} needs a native Llama-family target")
        else:
            check_vocab(ctx.tokenizer, draft_folder=draft_folder(spec.draft))
        threads = None
        if ctx.draft_device.type == "cpu" and ctx.device.type == "cpu":
            threads = max(1, torch.get_num_threads() // 2)          # two processes share the cores
        worker_cfg = _worker_config(cfg, ctx.draft_device)
        self.link = DraftLink(ctx.device, spawn=SpawnArgs(worker_cfg, threads), timeout_s=spec.channel_timeout_s)
        self.link.start()
        try:
            self._attach(self.link.wait())
            if self.drafter is None:
                raise RuntimeError("the draft worker connected but the handshake failed (see the log)")
        except BaseException:
            self.close()
            raise

    def poll(self) -> bool:
        """Attach a newly connected worker, if one is waiting; True when it happened now."""
        if self.link is None or self.drafter is not None:
            return False
        channel = self.link.take()
        if channel is None:
            return False
        self._attach(channel)
        return self.drafter is not None

    def _attach(self, channel: Channel) -> None:
        """CONFIG/HELLO over a fresh channel; on a failed handshake, close it and reconnect."""
        ctx, cfg = self.ctx, self.ctx.config
        try:
            drafter = RemoteDrafter(channel, cfg.spec, cfg.mode == "async", ctx.vocab_size, cfg.max_batch_size,
                                    cfg.max_model_len, cfg.seed, ctx.device)
        except ChannelError as e:
            log.error("draft handshake failed: %s", e)
            channel.close()
            self.link.failed()
            return
        try:
            check_vocab(ctx.tokenizer, draft_vocab_size=drafter.hello.vocab_size, what="the draft worker's")
        except ValueError as e:
            drafter.close()
            if not cfg.spec.remote:
                raise
            self.link.error = str(e)                  # a remote worker: stay in AR mode, do not reconnect
            log.error("%s; staying in AR mode", e)
            return
        self.drafter = drafter
        log.info("speculating with the draft worker (mode %s, K=%d)", cfg.mode, cfg.spec.k)

    def failed(self, err: Exception) -> None:
        """The channel broke: back to AR (committed tokens are kept) and reconnect in the background."""
        log.error("draft channel failed (%s); continuing in AR mode and reconnecting in the background", err)
        self.detach(send_exit=False)
        if self.link is not None:
            self.link.failed()

    def detach(self, send_exit: bool = True) -> None:
        d, self.drafter = self.drafter, None
        if d is not None:
            d.close(send_exit)

    # --- settings and lifetime --------------------------------------------------------------
    def configure(self, spec) -> None:
        """New speculation settings; a worker is reconfigured in place (CONFIG, no reload)."""
        if self.drafter is None:
            return
        try:
            self.drafter.configure(spec)
        except ChannelError as e:
            self.failed(e)

    def close(self) -> None:
        """EXIT to a worker, stop connecting, free the channel (idempotent)."""
        if self.drafter is not None:
            self.detach(send_exit=True)
        if self.link is not None:
            self.link.close()
            self.link = None


def _worker_config(cfg: EngineConfig, draft_device: torch.device) -> EngineConfig:
    """The config a spawned worker starts from: the engine's, running on ``draft_device``."""
    return dataclasses.replace(cfg, draft_device=str(draft_device))
