"""EAGLE heads (models/eagle.py, draft/eagle.py): the two forwards agree, and speculative decoding with
an EAGLE draft is exact (greedy: identical to AR; sampled: seeded outputs match the AR distribution test
elsewhere, here the same K/V bookkeeping under sampling)."""
from pathlib import Path

import pytest
import torch
from tiny import PROMPTS

from specdec import LLM, SamplingParams
from specdec.models.eagle import EagleArch, EagleCache, EagleHead, is_eagle_folder, level_mask, load_eagle, save_eagle
from specdec.models.loader import load_model

GREEDY = SamplingParams(max_tokens=20, ignore_eos=True)


def make_eagle(target: Path, out: Path, layers: int = 1, seed: int = 0, head_ids=None) -> Path:
    """A random EAGLE head for ``target`` saved like ``specdec distill --arch eagle`` saves one."""
    t = load_model(str(target), torch.device("cpu"), "float32")
    torch.manual_seed(seed)
    head = EagleHead(EagleArch.from_target(t.arch, layers), t.module.rotary)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    with torch.no_grad():
        for n, p in head.named_parameters():
            if "norm" in n:
                p.fill_(1.0)
    save_eagle(out, head, str(target), {"model.embed_tokens.weight": t.module.embed.weight}, torch.float32,
               head_ids=head_ids)
    return out


@pytest.fixture(scope="module")
def tiny_eagle(tiny_llama, tmp_path_factory):
    return make_eagle(tiny_llama, tmp_path_factory.mktemp("eagle") / "head")


@pytest.fixture(scope="module")
def ar_reference(tiny_llama):
    llm = LLM(str(tiny_llama), mode="ar", max_batch_size=8)
    return {tuple(p): o.token_ids for p, o in zip(PROMPTS, llm.generate(PROMPTS, GREEDY))}


def test_level_mask():
    m = level_mask(4, 2)
    # level 2, query 2: level-1 keys 0..1, level-2 key 2
    assert m[2].tolist() == [True, True, False, False, False, False, True, False]
    assert level_mask(3, 1).tolist() == torch.tril(torch.ones(3, 3, dtype=torch.bool)).tolist()


def test_train_forward_matches_cached_drafting(tiny_llama, tiny_eagle):
    """Level s of the teacher-forced forward at position j == the s-th cached draft step from context j - s + 1."""
    t = load_model(str(tiny_llama), torch.device("cpu"), "float32")
    head = load_eagle(tiny_eagle, t.module, "cpu", torch.float32)
    torch.manual_seed(1)
    L, H, steps = 9, head.arch.hidden_size, 3
    feats = torch.randn(1, L, H)
    nxt = torch.randint(0, 300, (1, L))
    levels = head.forward_train(feats, nxt, steps)
    for ctx_end in (2, 4):                              # context: positions 0..ctx_end from true features
        cache = EagleCache(head.arch, 2, 32, "cpu", torch.float32)
        n = ctx_end + 1
        pos = torch.arange(n)
        g = head.forward_cached(nxt[0, :n], feats[0, :n], pos, torch.zeros(n, dtype=torch.long), pos.view(1, n),
                                torch.zeros(1, dtype=torch.long), 32, cache)
        assert torch.allclose(g, levels[0][0, :n], atol=1e-5)
        g = g[-1:]
        for s in range(2, steps + 1):                   # draft step s at position ctx_end + s - 1
            p = torch.tensor([ctx_end + s - 1])
            g = head.forward_cached(nxt[0, p], g, p, torch.zeros(1, dtype=torch.long), p.view(1, 1),
                                    torch.zeros(1, dtype=torch.long), 32, cache)
            assert torch.allclose(g[0], levels[s - 1][0, ctx_end + s - 1], atol=1e-5), (ctx_end, s)


def test_eagle_folder_and_checksum(tiny_llama, tiny_llama_draft, tiny_eagle):
    assert is_eagle_folder(tiny_eagle) and not is_eagle_folder(tiny_llama)
    other = load_model(str(tiny_llama_draft), torch.device("cpu"), "float32")
    with pytest.raises(ValueError, match="checksum|match"):
        load_eagle(tiny_eagle, other.module, "cpu", torch.float32)


@pytest.mark.parametrize("graphs", ["off", "padded"])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_sync_eagle_matches_ar(k, graphs, tiny_llama, tiny_eagle, ar_reference):
    llm = LLM(str(tiny_llama), draft=str(tiny_eagle), mode="sync", k=k, max_batch_size=8, graphs=graphs)
    assert type(llm.engine.drafter).__name__ == "EagleDrafter"
    drafted = 0
    for bs in (1, 3, 8):
        prompts = PROMPTS[:bs]
        for p, o in zip(prompts, llm.generate(prompts, GREEDY)):
            assert o.token_ids == ar_reference[tuple(p)], (k, bs, p)
            drafted += o.stats["drafted"]
    assert drafted > 0
    assert not llm.engine.drafter.rows                  # every sequence's slot given back
    assert len(llm.engine.drafter._free) == 8


def test_sync_eagle_mixed_k_and_restricted_head(tiny_llama, tmp_path, ar_reference):
    folder = make_eagle(tiny_llama, tmp_path / "h", layers=2, seed=3, head_ids=torch.arange(0, 200))
    llm = LLM(str(tiny_llama), draft=str(folder), mode="sync", k=4, max_batch_size=8)
    params = [SamplingParams(max_tokens=20, ignore_eos=True, num_draft_tokens=n) for n in (0, 1, 4, 2)]
    for p, o, sp in zip(PROMPTS[:4], llm.generate(PROMPTS[:4], params), params):
        assert o.token_ids == ar_reference[tuple(p)]
        assert (o.stats["drafted"] == 0) == (sp.num_draft_tokens == 0)


def test_sync_eagle_sampled_is_seeded_and_batch_independent(tiny_llama, tiny_eagle):
    llm = LLM(str(tiny_llama), draft=str(tiny_eagle), mode="sync", k=3, max_batch_size=8)
    params = [SamplingParams(temperature=0.8, top_p=0.9, max_tokens=16, ignore_eos=True, seed=10 + i) for i in range(4)]
    alone = [llm.generate([p], [sp])[0].token_ids for p, sp in zip(PROMPTS[:4], params)]
    together = [o.token_ids for o in llm.generate(PROMPTS[:4], params)]
    assert alone == together


def test_eagle_refuses_async(tiny_llama, tiny_eagle):
    with pytest.raises(ValueError, match="EAGLE"):
        LLM(str(tiny_llama), draft=str(tiny_eagle), mode="async", k=2)


def test_eagle_drafts_follow_the_true_features(tiny_llama, tiny_eagle):
    """Every proposal equals a fresh recomputation: the head run over the whole committed context with the
    target's features of a full forward, then K greedy steps. Checks the bookkeeping (which features,
    catch-up, rollback of stale draft K/V) that exactness alone would not catch."""
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    llm = LLM(str(tiny_llama), draft=str(tiny_eagle), mode="sync", k=3, max_batch_size=4)
    drafter = llm.engine.drafter
    head = drafter.head
    seen = []
    propose = drafter.propose

    def recording(seqs, ks, sampling):
        prop = propose(seqs, ks, sampling)
        seen.extend((list(s.token_ids), prop.tokens[b, : ks[b]].tolist()) for b, s in enumerate(seqs) if ks[b])
        return prop
    drafter.propose = recording
    llm.generate(PROMPTS[:3], SamplingParams(max_tokens=24, ignore_eos=True))
    assert len(seen) > 20
    for tokens, drafts in seen:
        n = len(tokens)
        with torch.no_grad():
            f = hf.model(torch.tensor([tokens])).last_hidden_state[0]            # [n, H]
            cache = EagleCache(head.arch, 1, 64, "cpu", torch.float32)
            zero = torch.zeros(n - 1, dtype=torch.long)
            pos = torch.arange(n - 1)
            g = head.forward_cached(torch.tensor(tokens[1:]), f[: n - 1], pos, zero, pos.view(1, -1),
                                    zero[:1], 64, cache)[-1:]
            ref = []
            for i in range(len(drafts)):
                if i:
                    p = torch.tensor([n - 2 + i])
                    g = head.forward_cached(torch.tensor(ref[-1:]), g, p, zero[:1], p.view(1, 1), zero[:1], 64, cache)
                ref.append(int(head.logits(g).argmax(-1)))
        assert drafts == ref, (n, drafts, ref)
