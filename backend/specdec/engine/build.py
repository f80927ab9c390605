"""How an engine is put together: runners (KV pools sized from memory), drafters, attention
backend, CUDA graphs and tensor-parallel ranks. Mixed into :class:`LLMEngine`."""
from __future__ import annotations

import logging

import torch

from ..models.loader import DTYPES, LoadedModel, has_tokenizer, load_model, load_tokenizer
from ..spec.drafters import ModelDrafter, NgramDrafter
from .hf_runner import HFRunner
from .runner import PagedRunner

log = logging.getLogger(__name__)

CPU_KV_BUDGET_GIB = 1.0


class EngineBuild:
    def select_attention(self, choice: str) -> None:
        """Attention backend of every paged runner: the Triton kernel for few-query steps on CUDA
        ("auto"), or PyTorch SDPA everywhere ("torch"). "triton" forces the kernel (also on CPU,
        through Triton's interpreter when TRITON_INTERPRET=1: tests only)."""
        from ..layers import triton_attention
        for r in self.scheduler.runners:
            if not isinstance(r, PagedRunner):
                continue
            ok = triton_attention.supported(r.model.arch.head_dim)
            if choice == "triton" and not ok:
                raise ValueError(f"attention='triton' needs the triton package and a power-of-2 head_dim "
                                 f"(got {r.model.arch.head_dim})")
            use = choice == "triton" or (choice == "auto" and ok and r.device.type == "cuda")
            r.attn_backend = "triton" if use else "torch"
            log.info("%s attention: %s", r.name, r.attn_backend)

    def enable_graphs(self, capture: bool = True) -> None:
        """Padded static-buffer forwards (CUDA graphs when capture) for every paged runner; on CUDA
        the elementwise ops are compiled too. Called by the engine on CUDA unless eager=True."""
        from ..layers import fused
        if capture:
            fused.enable_compile(self.device, DTYPES[self.cfg.dtype])
        for r in self.scheduler.runners:
            if isinstance(r, PagedRunner):
                r.enable_graphs(self.cfg.max_batch_size, max(2, self.cfg.spec.k + 2), capture)

    def _start_tp(self):
        """Check the target's shapes against tensor_parallel_size, then start ranks 1..N-1 (they load
        their shards while this process loads rank 0's)."""
        from ..models.llama import LlamaArch
        from ..models.loader import load_hf_config
        from ..models.registry import resolve
        from .tp import TensorParallel, WorkerSpec, target_devices
        cfg = self.cfg
        LlamaArch.from_hf(load_hf_config(resolve(cfg.target))).shard(cfg.tensor_parallel_size)
        devices = target_devices(cfg.device, cfg.tensor_parallel_size, cfg.devices)
        missing = [d for d in devices if d.startswith("cuda") and torch.device(d).index >= torch.cuda.device_count()]
        if missing:
            raise ValueError(f"tensor_parallel_size={cfg.tensor_parallel_size} needs devices {devices}; "
                             f"{missing} not available ({torch.cuda.device_count()} CUDA devices)")
        threads = torch.get_num_threads() if self.device.type == "cpu" else None
        level = logging.getLevelName(logging.getLogger("specdec").getEffectiveLevel())
        return TensorParallel(WorkerSpec(cfg.target, cfg.dtype, cfg.impl, cfg.max_model_len, devices, threads, level))

    def _draft_shares_device(self) -> bool:
        d = self.cfg.spec.draft
        return self.cfg.mode == "sync" and d is not None and d != "ngram" and self.draft_device == self.device

    def _make_runner(self, m: LoadedModel, device, name: str, share: float = 1.0, module=None, tp=None):
        module = module if module is not None else m.module
        dtype = DTYPES[self.cfg.dtype]
        if m.kind == "hf":
            return HFRunner(module, device, self.max_model_len, self.cfg.max_batch_size * self.max_model_len, name)
        cc = self.cfg.cache
        per_token = m.arch.kv_bytes_per_token(dtype, module.num_layers)
        if cc.num_blocks is not None:
            blocks = cc.num_blocks
        else:
            if cc.memory_gib is not None:
                budget = cc.memory_gib * 2**30
            elif device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(device)
                budget = free * cc.gpu_memory_fraction * share
            else:
                budget = CPU_KV_BUDGET_GIB * 2**30 * share
            want = self.cfg.max_batch_size * (self.max_model_len + 2 * self.cfg.spec.k + 2)
            tokens = int(min(want, budget // per_token))
            blocks = max(tokens // cc.block_size, (self.max_model_len + cc.block_size - 1) // cc.block_size)
        if tp is None:
            return PagedRunner(module, device, dtype, cc.block_size, blocks, self.max_model_len, name)
        tp.connect(blocks, cc.block_size, self.max_model_len)          # the workers allocate the same pool
        return PagedRunner(module, device, dtype, cc.block_size, blocks, self.max_model_len, name, tp=tp.channel)

    def _make_drafter(self):
        spec, cfg = self.cfg.spec, self.cfg
        if cfg.mode == "ar" or spec.draft is None:
            return None, None
        if self._uses_worker():
            return None, None          # a draft worker: attached once connected (see _start_link)
        if spec.draft == "ngram":
            return NgramDrafter(spec.ngram_max, spec.ngram_min), None
        if spec.draft.startswith("self:"):
            if self.target.kind != "native":
                raise ValueError("draft 'self:N' needs a native Llama-family target")
            try:
                n = int(spec.draft.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"draft={spec.draft!r}: expected 'self:N' with N an integer") from None
            if self.draft_device != self.device:
                raise ValueError("draft 'self:N' shares the target's weights and must run on the target's device")
            module = self.target.module.first_layers(n)
            runner = self._make_runner(self.target, self.device, f"draft(self:{n})", share=0.5, module=module)
        else:
            dm = load_model(spec.draft, self.draft_device, cfg.dtype, cfg.impl, cfg.max_model_len)
            self._check_draft_vocab(dm)
            runner = self._make_runner(dm, self.draft_device, "draft", share=0.5 if self._draft_shares_device() else 1.0)
        return ModelDrafter(runner, spec.draft_kv_append, target_vocab=self.runner.vocab_size,
                            target_device=self.device), runner

    def _check_draft_vocab(self, dm: LoadedModel) -> None:
        if has_tokenizer(dm.folder):
            dtok = load_tokenizer(dm.folder)
            if dtok.get_vocab() != self.tokenizer.get_vocab():
                raise ValueError(
                    f"draft {dm.folder}: its tokenizer differs from the target's ({self.target.folder}): "
                    f"{len(dtok)} vs {len(self.tokenizer)} tokens; draft and target must share one vocabulary")
        if dm.vocab_size < len(self.tokenizer):
            raise ValueError(f"draft {dm.folder}: vocab_size {dm.vocab_size} < the target tokenizer's {len(self.tokenizer)} tokens")
