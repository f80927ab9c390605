"""The engine: requests in, committed tokens out, one ``step()`` at a time.

Data flow of one step (see sequence.py for the commit convention):

* CPU scheduling state: :class:`Sequence` objects (token ids, params, stats) owned by the
  :class:`Scheduler`; block tables owned by each runner's block manager.
* ``step()`` either prefills newly admitted sequences (target samples their first token) or
  runs one decode round for every running sequence: the drafter proposes up to K tokens per
  row, the target scores [last, d1..dK] for all rows in ONE forward (a row with K = 0 is plain
  AR), verification picks (k, t*), and the host commits 1 + k tokens per row.
* Device inputs are built per forward from the feeds (runner.py); the only host syncs are
  the ones that bring sampled tokens back, each marked where it happens.
* SSD (mode "async") and ``draft="remote:..."``: the drafter is a RemoteDrafter talking to a
  draft worker process (spec/remote.py, spec/link.py); it is attached once the worker has
  joined and detached on a channel failure (AR from then on, committed tokens kept).
* ``tensor_parallel_size`` N > 1: this process is rank 0 of the target (tp.py). Everything above
  stays here; the target runner broadcasts each forward's arrays to ranks 1..N-1, which hold
  the other weight and KV shards, and only rank 0 receives logits.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from ..config import EngineConfig, SamplingParams
from ..models.loader import DTYPES, LoadedModel, eos_token_ids, has_tokenizer, load_model, load_tokenizer
from ..spec.drafters import ModelDrafter, NgramDrafter, SamplingRows
from ..spec.transport import ChannelError
from ..spec.verify import greedy_accept_length, verify
from ..layers.sampling import sample_from_probs
from .detokenizer import IncrementalDetokenizer
from .hf_runner import HFRunner
from .metrics import EngineMetrics, Timer
from .runner import Feed, PagedRunner
from .scheduler import Scheduler
from .sequence import Sequence, Status

log = logging.getLogger(__name__)

CPU_KV_BUDGET_GIB = 1.0


@dataclass(slots=True)
class StepOutput:
    seq: Sequence
    new_token_ids: list[int]
    text_delta: str
    finished: bool


class LLMEngine:
    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.tp = None                    # rank 0's handle on the target's other ranks (tp.py)
        self.drafter, self.link = None, None
        try:
            self._setup(cfg)
        except BaseException:
            self.close()                  # no worker process outlives a failed start
            raise

    def _setup(self, cfg: EngineConfig) -> None:
        self.device = torch.device(cfg.device)
        if cfg.tensor_parallel_size > 1:
            self.tp = self._start_tp()
            self.device = self.tp.device              # devices[0], with its index
        self.draft_device = torch.device(cfg.draft_device) if cfg.draft_device else self.device
        target = load_model(cfg.target, self.device, cfg.dtype, cfg.impl, cfg.max_model_len,
                            tp=None if self.tp is None else self.tp.group)
        self.target = target
        self.tokenizer = load_tokenizer(target.folder)
        self.eos_ids = eos_token_ids(target.folder, target.hf_config, self.tokenizer)
        limit = getattr(target.hf_config, "max_position_embeddings", None) or getattr(target.hf_config, "n_positions", 2048)
        self.max_model_len = min(cfg.max_model_len or limit, limit)
        self.runner = self._make_runner(target, self.device, "target", share=0.5 if self._draft_shares_device() else 1.0,
                                        tp=self.tp)
        self.drafter, draft_runner = self._make_drafter()
        runners = [self.runner] + ([draft_runner] if draft_runner is not None else [])
        self.scheduler = Scheduler(cfg.max_batch_size, cfg.max_prefill_tokens, runners, self.drafter)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.metrics = EngineMetrics()
        self.timer = Timer(self.device)
        self.k = cfg.spec.k if self.drafter is not None else 0
        self.link = None
        if self._uses_worker():
            self._start_link()
        self.select_attention(cfg.attention)
        if self.device.type == "cuda" and not cfg.eager:
            self.enable_graphs(capture=True)

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

    # --- construction -----------------------------------------------------------------------
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

    # --- draft worker (mode "async", or draft "remote:...") ----------------------------------
    def _uses_worker(self) -> bool:
        return self.cfg.mode == "async" or self.cfg.spec.remote

    def _start_link(self) -> None:
        """Remote: connect in the background and serve AR meanwhile. Spawned: start the worker and
        wait for it, so that a bad draft fails here (spec/link.py)."""
        from ..spec.link import open_link
        self.link = open_link(self)

    def _attach(self, channel) -> None:
        from ..spec.link import remote_drafter
        drafter = remote_drafter(self, channel)
        if drafter is not None:
            self.attach_drafter(drafter)
            log.info("speculating with the draft worker (mode %s, K=%d)", self.cfg.mode, self.k)

    def attach_drafter(self, drafter) -> None:
        """Speculate with ``drafter`` from the next step on (step() is its only user)."""
        self.drafter = drafter
        self.scheduler.drafter = drafter
        self.k = self.cfg.spec.k

    def detach_drafter(self, send_exit: bool = True) -> None:
        """Back to AR decoding; running sequences keep every committed token."""
        d, self.drafter = self.drafter, None
        self.scheduler.drafter = None
        self.k = 0
        if d is not None and hasattr(d, "close"):
            d.close(send_exit)

    def _draft_failed(self, err: Exception) -> None:
        log.error("draft channel failed (%s); continuing in AR mode and reconnecting in the background", str(err))
        self.metrics.ar_fallbacks += 1
        self.detach_drafter(send_exit=False)
        if self.link is not None:
            self.link.failed()

    def update_spec(self, **changes) -> None:
        """Change speculation settings (K, fan-out, Saguaro C, backup) between requests; a draft
        worker is reconfigured in place (no reload)."""
        import dataclasses
        if self.scheduler.has_work():
            raise RuntimeError("update_spec needs an idle engine (no running or waiting requests)")
        if "draft" in changes and changes["draft"] != self.cfg.spec.draft:
            raise ValueError("the draft itself cannot change; build a new LLM")
        spec = dataclasses.replace(self.cfg.spec, **changes)
        dataclasses.replace(self.cfg, spec=spec)         # validates the combination (e.g. sampler_x needs async)
        self.cfg.spec = spec
        if self.drafter is not None:
            self.k = spec.k
            if hasattr(self.drafter, "configure"):
                try:
                    self.drafter.configure(spec)
                except ChannelError as e:
                    self._draft_failed(e)

    def close(self) -> None:
        """Send EXIT to a draft worker and to the target's other ranks, and wait for them to end (idempotent)."""
        if self.drafter is not None and hasattr(self.drafter, "close"):
            self.detach_drafter(send_exit=True)
        if self.link is not None:
            self.link.close()
            self.link = None
        if self.tp is not None:
            self.tp.close()
            self.tp = None

    # --- requests ---------------------------------------------------------------------------
    def add_request(self, prompt_ids: list[int], params: SamplingParams) -> Sequence:
        if not prompt_ids:
            raise ValueError("prompt is empty: at least 1 token is required")
        vocab = self.runner.vocab_size
        bad = [t for t in prompt_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is out of range: allowed [0, {vocab - 1}]")
        if len(prompt_ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(prompt_ids)} tokens: allowed [1, {self.max_model_len - 1}] "
                             f"(max_model_len={self.max_model_len})")
        seq = Sequence(list(prompt_ids), params, arrival=time.perf_counter())
        seq.detok = IncrementalDetokenizer(self.tokenizer, params.skip_special_tokens)
        self.scheduler.add(seq)
        return seq

    def abort(self, seq: Sequence, reason: str = "abort") -> None:
        if seq.finished:
            return
        seq.finish_reason = reason
        self.scheduler.finish(seq)
        self.metrics.requests_aborted += 1

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    # --- the step ---------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        if self.link is not None and self.drafter is None:
            channel = self.link.take()
            if channel is not None:
                self._attach(channel)
        admitted = self.scheduler.admit(lookahead=1 + self.k)
        if admitted:
            return self._prefill(admitted)
        if not self.scheduler.running:
            return []
        try:
            return self._decode()
        except ChannelError as e:          # nothing was committed yet: redo the round in AR mode
            self._draft_failed(e)
            return self._decode()

    def _k_for(self, s: Sequence) -> int:
        if self.drafter is None:
            return 0
        k = self.k if s.params.num_draft_tokens is None else min(s.params.num_draft_tokens, self.k)
        return max(0, min(k, s.remaining - 1, self.max_model_len - len(s) - 1))

    def _prefill(self, seqs: list[Sequence]) -> list[StepOutput]:
        t0 = self.timer.now()
        feeds, fresh = [], []
        for s in seqs:
            if s.output_ids:   # resumed after preemption: rebuild the cache of committed tokens
                feeds.append(Feed(s.seq_id, s.token_ids[:-1], 0, num_logits=0))
            else:
                feeds.append(Feed(s.seq_id, s.prompt_ids, 0, num_logits=1))
                fresh.append(s)
            s.draft_cached = 0
        if self.drafter is not None and hasattr(self.drafter, "prefill"):
            try:                           # sent first: the draft's prefill overlaps the target's
                self.drafter.prefill(seqs)
            except ChannelError as e:
                self._draft_failed(e)
        logits = self.runner.forward(feeds)
        outs = []
        if fresh:
            rows = SamplingRows(fresh, self.device, self.generator)
            tokens = self._sample(rows, logits).tolist()      # host sync: first tokens go to the host
            now = time.perf_counter()
            for s, t in zip(fresh, tokens):
                s.first_token_time = now
                outs.append(self._commit(s, [t]))
        m = self.metrics
        m.prefill_steps += 1
        m.prefill_tokens += sum(len(f.tokens) for f in feeds)
        m.prefill_time += self.timer.now() - t0
        return outs

    def _sample(self, rows: SamplingRows, logits: torch.Tensor) -> torch.Tensor:
        if rows.all_greedy:
            return logits.argmax(-1)
        return sample_from_probs(rows.probs(logits), rows.uniforms(1)[:, 0])

    def _decode(self) -> list[StepOutput]:
        sched, m = self.scheduler, self.metrics
        ks = {s.seq_id: self._k_for(s) for s in sched.running}
        for s in sched.make_room(ks):
            log.info("preempted sequence %d (KV cache full); it will be recomputed", s.seq_id)
            m.preemptions += 1
        seqs = list(sched.running)
        kl = [ks[s.seq_id] for s in seqs]
        B, K = len(seqs), max(kl)
        rows = SamplingRows(seqs, self.device, self.generator)
        timer = self.timer
        t0, w0 = timer.mark(), timer.now()
        if K > 0:
            prop = self.drafter.propose(seqs, kl, rows)
            num = prop.num
            draft_tokens = prop.tokens.to(self.device)
        else:
            num = [0] * B
            draft_tokens = torch.zeros((B, 0), dtype=torch.long, device=self.device)
        t1 = timer.mark()
        Kv = max(num)
        # verify feed [last, d1..dk]: the drafts stay on the device (host lists hold placeholders)
        feeds = [Feed(s.seq_id, [s.last_token] + [0] * num[b], len(s) - 1, num_logits=num[b] + 1)
                 for b, s in enumerate(seqs)]
        draft_tokens = draft_tokens[:, :Kv]
        logits = self.runner.forward(feeds, (draft_tokens, 1) if Kv else None)   # [sum(num + 1), V]
        if Kv == 0:         # plain AR round: sample straight from p_0 (same uniform as verify would use)
            if rows.all_greedy:
                tok = logits.argmax(-1)
            else:
                tok = sample_from_probs(rows.probs(logits), rows.uniforms(self.k + 1)[:, self.k])
            t2 = timer.mark()
            rec = tok.tolist()                                    # host sync: the step's tokens
            return self._finish_round(seqs, num, [[]] * B, [0] * B, rec, (t0, t1, t2, w0))
        padded = self._pad_rows(logits, num, Kv)                  # [B, Kv + 1, V]
        num_t = torch.tensor(num, device=self.device)
        if rows.all_greedy:
            argmax = padded.argmax(-1)                            # [B, Kv + 1]
            accepted = greedy_accept_length(draft_tokens, argmax, num_t)
            recovery = argmax.gather(1, accepted[:, None]).squeeze(1)
        else:
            q = None if prop.probs is None else prop.probs[:, :Kv].to(self.device)
            u = rows.uniforms(self.k + 1)        # a fixed count per row: seeded streams ignore batch make-up
            accepted, recovery = verify(rows.probs(padded), draft_tokens, q, num_t, u[:, :Kv], u[:, self.k])
        t2 = timer.mark()
        flat = torch.cat([accepted, recovery, draft_tokens.reshape(-1)]).tolist()   # host sync: the round's one
        acc, rec = flat[:B], flat[B:2 * B]
        drafts = [flat[2 * B + b * Kv: 2 * B + b * Kv + num[b]] for b in range(B)]
        return self._finish_round(seqs, num, drafts, acc, rec, (t0, t1, t2, w0))

    def _finish_round(self, seqs, num, drafts, acc, rec, marks) -> list[StepOutput]:
        """Commit each row's outcome (k accepted drafts + recovery token), roll back, record stats."""
        m, timer = self.metrics, self.timer
        t0, t1, t2, w0 = marks
        if any(num):
            m.draft_time += timer.seconds(t0, t1)
            m.draft_steps += 1
        m.verify_time += timer.seconds(t1, t2)
        m.verify_steps += 1
        outs = []
        for b, s in enumerate(seqs):
            old_len = len(s)
            new = drafts[b][: acc[b]] + [rec[b]]
            self.runner.truncate(s.seq_id, old_len + acc[b])      # rollback by length: rejected K/V is dropped
            if num[b]:
                self.drafter.commit(s, old_len, acc[b], num[b])
                s.stats.rounds += 1
                s.stats.drafted += num[b]
                s.stats.accepted += acc[b]
                s.stats.spec_tokens += 1 + acc[b]
                m.rounds += 1
                m.drafted += num[b]
                m.accepted += acc[b]
                m.spec_tokens += 1 + acc[b]
                m.tokens_per_round_hist[1 + acc[b]] += 1
            else:
                s.stats.ar_steps += 1
            s.last_accepted = acc[b]
            out = self._commit(s, new)
            m.decode_tokens += len(out.new_token_ids)
            outs.append(out)
        m.decode_steps += 1
        m.decode_time += timer.now() - w0
        return outs

    def _pad_rows(self, logits: torch.Tensor, num: list[int], Kv: int) -> torch.Tensor:
        B = len(num)
        if all(n == Kv for n in num):
            return logits.view(B, Kv + 1, -1)
        padded = logits.new_zeros((B, Kv + 1, logits.shape[-1]))
        idx, row = [], 0
        for b, n in enumerate(num):
            idx.extend(b * (Kv + 1) + i for i in range(n + 1))
        padded.view(B * (Kv + 1), -1)[torch.tensor(idx, device=logits.device)] = logits
        return padded

    # --- committing tokens ------------------------------------------------------------------
    def _commit(self, s: Sequence, new: list[int]) -> StepOutput:
        """Append a round's tokens, applying stop conditions inside the block; emit the text delta.

        Stop strings are searched after every token, so one may end mid-round; text that could be
        the start of a stop string is held back until it is known not to be one.
        """
        p = s.params
        emitted: list[int] = []
        reason, by_string = None, False
        for tok in new:
            emitted.append(tok)
            s.output_ids.append(tok)
            if p.stop:
                before = len(s.detok.text)
                s.detok.push([tok])
                cut = _find_stop(s.detok.text, before, p.stop)
                if cut is not None:
                    s.detok.text = s.detok.text[:cut]
                    reason, by_string = "stop", True
                    break
            if (not p.ignore_eos and tok in self.eos_ids) or tok in p.stop_token_ids:
                reason = "stop"
                break
            if len(s.output_ids) >= p.max_tokens or len(s) >= self.max_model_len:
                reason = "length"
                break
        if not p.stop and (s.stream_text or reason is not None):
            # ids not yet turned into text (all of them, for a request nobody streams)
            s.detok.push(s.output_ids[len(s.detok.ids):], final=reason is not None)
        elif p.stop and reason is not None and not by_string:
            s.detok.push([], final=True)
        text = s.detok.text
        end = len(text) if reason is not None else len(text) - _held_back(text, p.stop)
        delta = text[s.emitted_chars:end] if end > s.emitted_chars else ""
        s.emitted_chars = max(s.emitted_chars, end)
        if reason is not None:
            s.finish_reason = reason
            self.scheduler.finish(s)
            self.metrics.requests_finished += 1
        return StepOutput(s, emitted, delta, reason is not None)


def _find_stop(text: str, before: int, stops: list[str]) -> int | None:
    """Index of the earliest stop string that ends in text[before:], or None."""
    start = max(0, before - max(len(x) for x in stops) + 1)
    hits = [i for i in (text.find(x, start) for x in stops) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string."""
    best = 0
    for x in stops:
        for n in range(min(len(x) - 1, len(text)), best, -1):
            if text.endswith(x[:n]):
                best = n
                break
    return best
