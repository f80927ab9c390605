"""Async SSD end to end, in both placements: the draft in the target's process (a draft thread on
CPU; ``graphs="padded"`` also runs the static-buffer path of the CUDA graphs) and the draft worker as a
real second process over Gloo.

Greedy output must equal AR for every configuration. One engine per placement serves many
configurations: ``engine.update_spec`` reconfigures the draft in place (a CONFIG message to a worker),
so the cases below cover batch sizes {1, 2, 4, 8, 16}, K in {2, 4, 7}, F in {1, 3}, explicit hit/miss
lists, geometric fan-out, all backups and both tree policies without an engine per case.
"""
import time

import pytest
from tiny import PROMPTS

from specdec import LLM, SamplingParams

MAX_TOKENS = 24
PROMPTS16 = PROMPTS + [[(5 * i + 3) % 300 + 1 for i in range(n)] for n in range(1, 9)]


pytestmark = pytest.mark.usefixtures("one_thread")   # several processes share 2 cores


@pytest.fixture(scope="module")
def ar_ref(tiny_llama):
    llm = LLM(str(tiny_llama), mode="ar", max_batch_size=16)
    outs = llm.generate(PROMPTS16, SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
    return {tuple(p): o.token_ids for p, o in zip(PROMPTS16, outs)}


# One async LLM per process at a time (its channel is the process's torch.distributed default
# group), so the worker fixtures are class-scoped: each is closed before the next class starts.
PLACEMENTS = [("in_process", "off"), ("in_process", "padded"), ("worker", "off")]


@pytest.fixture(scope="class", params=PLACEMENTS, ids=[f"{p}-graphs_{g}" for p, g in PLACEMENTS])
def ssd(request, tiny_llama, tiny_llama_draft):
    """An unrelated draft (acceptance near 0): many misses, so both backups really run."""
    placement, graphs = request.param
    llm = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="async", k=7, max_batch_size=16,
              draft_placement=placement, graphs=graphs)
    yield llm
    llm.close()


@pytest.fixture(scope="class", params=["in_process", "worker"])
def ssd_same(request, tiny_llama):
    """Draft == target: every draft token is accepted and the bonus token is always forked. The
    target's KV pool is small (12 blocks of 16 tokens), so sequences get preempted and re-prefilled."""
    llm = LLM(str(tiny_llama), draft=str(tiny_llama), mode="async", k=4, max_batch_size=16, num_kv_blocks=12,
              draft_placement=request.param)
    yield llm
    llm.close()


BASE = dict(fan_out=3, fan_out_hit=None, fan_out_miss=None, fan_out_budget=None, backup="jit", tree_policy="auto")
CASES = [  # (batch size, spec changes, per-request K override)
    (16, dict(k=7, fan_out=3, backup="jit"), None),
    (8, dict(k=7, fan_out=1, backup="fast"), None),
    (4, dict(k=4, fan_out=3, backup="fast"), None),
    (2, dict(k=4, fan_out=1, backup="jit"), None),
    (1, dict(k=2, fan_out=3, backup="jit"), None),
    (16, dict(k=2, fan_out_hit=[2, 1, 3], fan_out_miss=[6, 0, 0], backup="fast"), None),
    (8, dict(k=4, fan_out_hit=[1, 1, 1, 1, 2], fan_out_miss=[6, 0, 0, 0, 0], backup="jit"), None),
    (16, dict(k=7, fan_out="geometric", fan_out_budget=16, backup="auto"), [None, 2, 4, 0]),
    (4, dict(k=4, fan_out=3, backup="jit", tree_policy="always"), None),
    (16, dict(k=2, fan_out=2, backup="fast", tree_policy="always"), [None, 1]),
]


class TestUnrelatedDraft:
    @pytest.mark.parametrize("bs,changes,per_request_k", CASES,
                             ids=[f"bs{c[0]}-" + "-".join(f"{k}={v}" for k, v in c[1].items()) for c in CASES])
    def test_greedy_async_matches_ar(self, ssd, ar_ref, bs, changes, per_request_k):
        ssd.engine.update_spec(**{**BASE, **changes})
        m = ssd.metrics
        before = (m.cache_lookups, m.rounds)
        prompts = PROMPTS16[:bs]
        ks = per_request_k or [None]
        params = [SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True, num_draft_tokens=ks[i % len(ks)])
                  for i in range(bs)]
        outs = ssd.generate(prompts, params)
        for p, o in zip(prompts, outs):
            assert o.token_ids == ar_ref[tuple(p)], (changes, p)
        assert m.cache_lookups - before[0] == m.rounds - before[1] > 0     # one lookup per speculative round
        for o, sp in zip(outs, params):
            st = o.stats
            if sp.num_draft_tokens == 0:
                assert st["rounds"] == 0 and st["cache_lookups"] == 0
                continue
            assert st["cache_lookups"] == st["rounds"] > 0
            assert st["hit_tokens"] + st["miss_tokens"] == st["spec_tokens"]
            assert "cache_hit_rate" in st and "tokens_per_round_miss" in st


    @pytest.mark.parametrize("backup", ["jit", "fast"])
    def test_mixed_greedy_and_sampled_rows(self, ssd, ar_ref, backup):
        """Greedy rows verify against one-hot q next to sampled rows in the same rounds."""
        ssd.engine.update_spec(**{**BASE, "k": 4, "backup": backup})
        params = [SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True, temperature=0.9 * (i % 2)) for i in range(16)]
        outs = ssd.generate(PROMPTS16, params)
        for i in range(0, 16, 2):
            assert outs[i].token_ids == ar_ref[tuple(PROMPTS16[i])]
        assert all(len(o.token_ids) == MAX_TOKENS for o in outs)


    def test_rounds_drafted_like_sync_keep_tokens_on_the_device(self, ssd, ar_ref):
        """An unrelated draft never hits, so the build rule turns to drafting like sync: those rounds are
        drafted with their tokens left on the device (every SHADOW_EVERY-th also brings each step's top
        candidates back, which keeps the hit-rate estimate fed), and the output is still AR's, across batch
        sizes and per-request K. With static-buffer programs most of them are the engine's overlapped rounds
        (engine/spec_overlap.py), among which every MOVED_PER_MEASURE-th is a plain, measured one."""
        if ssd.engine.draft.link is not None:
            pytest.skip("a draft worker process answers over the channel (host tokens)")
        core = ssd.engine.drafter.core
        for bs, k, ks in ((1, 2, [None]), (16, 4, [None, 2])):
            ssd.engine.update_spec(**{**BASE, "k": k})
            d0, h0, m0 = core.device_rounds, core.rule.hit_samples, core.moved_total
            params = [SamplingParams(max_tokens=48, ignore_eos=True, num_draft_tokens=ks[i % len(ks)]) for i in range(bs)]
            outs = ssd.generate(PROMPTS16[:bs], params)
            for p, o in zip(PROMPTS16[:bs], outs):
                assert o.token_ids[:MAX_TOKENS] == ar_ref[tuple(p)], (bs, k, p)
            dev, samples, moved = core.device_rounds - d0, core.rule.hit_samples - h0, core.moved_total - m0
            assert dev + moved > 8, (dev, moved)
            assert (moved > dev) == (ssd.engine.runner.graph is not None and len(set(ks)) == 1), (dev, moved)
            assert 0 < samples < (dev + moved) * bs / 2, (samples, dev, moved)   # some rounds sample (and tree rounds)


class TestSameDraft:
    def test_draft_equal_to_target_hits_the_cache(self, ssd_same, ar_ref):
        for k, fan in ((4, 3), (2, 1)):
            ssd_same.engine.update_spec(**{**BASE, "k": k, "fan_out": fan, "tree_policy": "always"})
            m = ssd_same.metrics
            h0, l0, a0, d0 = m.cache_hits, m.cache_lookups, m.accepted, m.drafted
            outs = ssd_same.generate(PROMPTS16[:8], SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
            assert [o.token_ids for o in outs] == [ar_ref[tuple(p)] for p in PROMPTS16[:8]]
            hits, lookups = m.cache_hits - h0, m.cache_lookups - l0
            assert lookups > 0 and hits / lookups >= 0.95, (k, fan, hits, lookups)
            assert m.accepted - a0 == m.drafted - d0 > 0              # acceptance 100%
        assert m.preemptions > 0
        s = ssd_same.metrics.summary()
        assert s["tokens_per_round_hit"] > 2 and s["avg_draft_build_ms"] > 0 and s["avg_verify_ms"] > 0

    def test_worker_crash_falls_back_to_ar_then_respawns(self, ssd_same, ar_ref):
        eng, m = ssd_same.engine, ssd_same.metrics
        if eng.draft.link is None:
            pytest.skip("the draft runs in this process: no worker to crash")
        first = eng.draft.link.proc
        seqs = [eng.add_request(list(p), SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)) for p in PROMPTS]
        for _ in range(2):
            eng.step()
        first.kill()                                                  # mid-stream
        while any(not s.finished for s in seqs):
            eng.step()
        assert [s.output_ids for s in seqs] == [ar_ref[tuple(p)] for p in PROMPTS]
        assert m.ar_fallbacks == 1 and any(s.stats.ar_steps for s in seqs)
        deadline = time.monotonic() + 60
        while eng.drafter is None:                                    # a fresh worker, same rendezvous
            assert time.monotonic() < deadline, "no respawned worker attached"
            eng.step()
            time.sleep(0.05)
        second = eng.draft.link.proc
        assert second.pid != first.pid
        rounds = m.rounds
        outs = ssd_same.generate(PROMPTS[:4], SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
        assert [o.token_ids for o in outs] == [ar_ref[tuple(p)] for p in PROMPTS[:4]] and m.rounds > rounds
        ssd_same.close()                                              # EXIT: the worker returns, no orphan
        assert second.poll() == 0 and first.poll() is not None and eng.draft.link is None
