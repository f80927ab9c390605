"""specdec distill / acceptance on tiny random models: the distilled draft decodes exactly, its
folder stores only what it adds, a resumed run equals an uninterrupted one."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from tiny import PROMPTS
from specdec import LLM, SamplingParams
from specdec.cli import main
from specdec.distill.prompts import HELDOUT_PROMPTS, TRAIN_PROMPTS
from specdec.models.loader import load_model
from specdec.models.shared_weights import MANIFEST

RUN = ["--layers", "1", "--batch", "2", "--seq-len", "64", "--num-prompts", "3", "--samples", "1",
       "--save-every", "2", "--lr", "1e-3"]


def distill(target, out, *extra):
    assert main(["distill", "--target", str(target), "--out", str(out), *RUN, *extra]) == 0
    return out


def trained_state(out):
    return torch.load(out / "train" / "checkpoint.pt", weights_only=True)


@pytest.fixture(scope="module")
def distilled(tiny_llama, tmp_path_factory):
    """4 steps in one go (checkpoints at steps 2 and 4)."""
    return distill(tiny_llama, tmp_path_factory.mktemp("distill") / "draft", "--steps", "4")


@pytest.fixture(scope="module")
def tiny_chat(tiny_llama, tmp_path_factory):
    """The tiny target with a chat template (so it can write its own prompts)."""
    from transformers import AutoTokenizer
    path = tmp_path_factory.mktemp("chat") / "llama"
    shutil.copytree(tiny_llama, path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<eos>{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    tok.save_pretrained(path)
    return path


def test_prompt_sets_are_disjoint():
    assert len(set(TRAIN_PROMPTS)) == len(TRAIN_PROMPTS) >= 300
    assert not set(TRAIN_PROMPTS) & set(HELDOUT_PROMPTS)


def test_distilled_draft_decodes_exactly(tiny_llama, distilled):
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    ar = LLM(str(tiny_llama), mode="ar").generate(PROMPTS[:4], params)
    spec = LLM(str(tiny_llama), draft=str(distilled), mode="sync", k=3)
    out = spec.generate(PROMPTS[:4], params)
    assert [o.token_ids for o in out] == [o.token_ids for o in ar]
    assert spec.metrics.drafted > 0


def test_export_stores_only_what_the_draft_adds(tiny_llama, distilled):
    with safe_open(str(distilled / "model.safetensors"), framework="pt") as sf:
        keys = set(sf.keys())
        assert {sf.get_tensor(k).dtype for k in keys} == {torch.bfloat16}
    assert not any("embed_tokens" in k or "lm_head" in k for k in keys)
    assert any(k.startswith("model.layers.0.") for k in keys) and "model.norm.weight" in keys
    manifest = json.loads((distilled / MANIFEST).read_text())
    assert manifest["base"] == str(tiny_llama.resolve())
    assert set(manifest["shared"]) == {"model.embed_tokens.weight", "lm_head.weight"}  # the tiny target is untied
    draft = load_model(str(distilled), torch.device("cpu"), "float32").module
    target = load_model(str(tiny_llama), torch.device("cpu"), "float32").module
    assert torch.equal(draft.embed.weight, target.embed.weight)
    assert torch.equal(draft.lm_head.weight, target.lm_head.weight)
    assert draft.num_layers == 1


def test_borrowed_weights_are_checked(tiny_llama, distilled, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(distilled, bad, ignore=shutil.ignore_patterns("train"))
    manifest = json.loads((bad / MANIFEST).read_text())
    manifest["checksums"]["model.embed_tokens.weight"][0] += 1.0
    (bad / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not the one it was trained with"):
        load_model(str(bad), torch.device("cpu"), "float32")


def test_resume_equals_uninterrupted_run(tiny_llama, distilled, tmp_path):
    out = tmp_path / "draft"
    (out / "train").mkdir(parents=True)
    shutil.copy(distilled / "train" / "corpus.pt", out / "train" / "corpus.pt")   # same settings: reused
    distill(tiny_llama, out, "--steps", "4", "--stop-at", "2")            # "interrupted" after step 2
    assert trained_state(out)["step"] == 2
    with pytest.raises(ValueError, match="--resume"):
        distill(tiny_llama, out, "--steps", "4")
    with pytest.raises(ValueError, match="layers"):
        main(["distill", "--out", str(out), "--resume", "--layers", "2"])
    assert main(["distill", "--out", str(out), "--resume"]) == 0
    resumed, straight = trained_state(out), trained_state(distilled)
    assert resumed["step"] == straight["step"] == 4
    for name, value in straight["draft"].items():
        torch.testing.assert_close(resumed["draft"][name], value, rtol=1e-5, atol=1e-6)


def test_untrained_draft_equals_self_n(tiny_llama, tmp_path):
    """Init + export + loader: the draft before training is the target's first layer (= self:1),
    whether it borrows the target's embeddings or stores them (standalone)."""
    from specdec.distill.export import export_draft
    from specdec.distill.model import init_draft, load_teacher
    from specdec.models.loader import load_tokenizer
    teacher, folder = load_teacher(str(tiny_llama), torch.device("cpu"), "float32")
    draft = init_draft(teacher, 1)
    tokenizer = load_tokenizer(folder)
    export_draft(draft, teacher, tokenizer, str(tiny_llama), tmp_path / "small", save_dtype="float32")
    export_draft(draft, teacher, tokenizer, str(tiny_llama), tmp_path / "full", save_dtype="float32", standalone=True)
    with safe_open(str(tmp_path / "full" / "model.safetensors"), framework="pt") as sf:
        assert {"model.embed_tokens.weight", "lm_head.weight"} <= set(sf.keys())
    assert not (tmp_path / "full" / MANIFEST).exists()
    params = SamplingParams(max_tokens=16, ignore_eos=True)
    counts = []
    for d in (str(tmp_path / "small"), str(tmp_path / "full"), "self:1"):
        llm = LLM(str(tiny_llama), draft=d, mode="sync", k=3)
        llm.generate(PROMPTS[:3], params)
        counts.append((llm.metrics.drafted, llm.metrics.accepted))
    assert counts[0] == counts[1] == counts[2]


def test_acceptance_command(tiny_llama, distilled, tmp_path, capsys):
    rows_file = tmp_path / "rows.json"
    assert main(["acceptance", "--target", str(tiny_llama), "--draft", f"{distilled},ngram", "--k", "2",
                 "--temp", "0,0.7", "--num-prompts", "2", "--max-tokens", "6", "--json", str(rows_file)]) == 0
    table = capsys.readouterr().out
    assert "alpha" in table and "AR tok/s" in table
    rows = json.loads(rows_file.read_text())
    assert [(r["draft"], r["temp"]) for r in rows] == [(str(distilled), 0.0), (str(distilled), 0.7),
                                                       ("ngram", 0.0), ("ngram", 0.7)]
    for r in rows:
        assert 0.0 <= r["accept_rate"] <= r["alpha"] <= 1.0 and r["tok_s"] > 0 and r["ar_tok_s"] > 0
        assert r["draft"] == "ngram" or 1.0 <= r["tokens_per_round"] <= 3.0


def test_target_invents_prompts(tiny_llama, tiny_chat):
    from specdec.distill.data import invent_prompts
    prompts = invent_prompts(LLM(str(tiny_chat), mode="ar"), 24, seed=0, max_tokens=48)
    assert 1 <= len(prompts) <= 24 and len(set(prompts)) == len(prompts)
    assert all(isinstance(p, str) and p and p == p.strip() for p in prompts)
    with pytest.raises(ValueError, match="chat template"):
        invent_prompts(LLM(str(tiny_llama), mode="ar"), 2, seed=0)


def test_checksum_does_not_depend_on_the_dtype_held():
    """A draft trained against a bfloat16 teacher loads against the float32 base (and vice versa)."""
    from specdec.models.shared_weights import checksum
    w = torch.randn(320, 64)
    assert checksum(w) == checksum(w.to(torch.bfloat16))


def test_validation_split_holds_out_whole_prompts():
    from specdec.distill.batches import Batcher, split_by_prompt
    from specdec.distill.data import Corpus
    seqs = [[p, p + 1, 7, 8 + j] for p in range(0, 80, 2) for j in range(3)]     # 40 prompts x 3 completions
    corpus = Corpus(seqs, [2] * len(seqs))
    train, val = split_by_prompt(corpus)
    assert len(val) == 2 * 3 and not set(train) & set(val) and len(train) + len(val) == len(seqs)
    assert not {tuple(seqs[r][:2]) for r in train} & {tuple(seqs[r][:2]) for r in val}
    batcher = Batcher(corpus, train, batch=4, seed=0)
    ids, mask = batcher.get(5)
    assert ids.shape == mask.shape == (4, 4) and mask[:, 1:3].all() and not mask[:, [0, 3]].any()
    assert torch.equal(Batcher(corpus, train, batch=4, seed=0).get(5)[0], ids)          # resumable: same batch
    assert split_by_prompt(Corpus(seqs[:30], [2] * 30)) == (list(range(30)), [])        # 10 prompts: no validation


@pytest.fixture(scope="module")
def distilled_eagle(tiny_llama, tmp_path_factory):
    """An EAGLE head trained 4 steps (2 draft depths), checkpoints at 2 and 4."""
    return distill(tiny_llama, tmp_path_factory.mktemp("eagle") / "head", "--arch", "eagle", "--eagle-steps", "2",
                   "--steps", "4", "--head-vocab", "100")


def test_eagle_distill_exports_a_head_that_decodes_exactly(tiny_llama, distilled_eagle):
    from specdec.models.eagle import is_eagle_folder
    assert is_eagle_folder(distilled_eagle)
    manifest = json.loads((distilled_eagle / MANIFEST).read_text())
    assert manifest["shared"] == ["model.embed_tokens.weight"] and manifest["trained"]["arch"] == "eagle"
    with safe_open(str(distilled_eagle / "model.safetensors"), framework="pt") as sf:
        assert not any("embed" in k or "lm_head" in k for k in sf.keys())       # only the head's own tensors
        assert any(k.startswith("fc.") for k in sf.keys())
    params = SamplingParams(max_tokens=16, ignore_eos=True)
    ref = [o.token_ids for o in LLM(str(tiny_llama), mode="ar").generate(PROMPTS[:4], params)]
    llm = LLM(str(tiny_llama), draft=str(distilled_eagle), mode="sync", k=3)
    assert [o.token_ids for o in llm.generate(PROMPTS[:4], params)] == ref
    assert llm.metrics.drafted > 0


def test_eagle_resume_equals_uninterrupted_run(tiny_llama, distilled_eagle, tmp_path):
    out = tmp_path / "head"
    (out / "train").mkdir(parents=True)
    shutil.copy(distilled_eagle / "train" / "corpus.pt", out / "train" / "corpus.pt")
    distill(tiny_llama, out, "--arch", "eagle", "--eagle-steps", "2", "--steps", "4", "--head-vocab", "100",
            "--stop-at", "2")
    assert main(["distill", "--out", str(out), "--resume"]) == 0
    resumed, straight = trained_state(out), trained_state(distilled_eagle)
    assert resumed["step"] == straight["step"] == 4
    for name, value in straight["draft"].items():
        torch.testing.assert_close(resumed["draft"][name], value, rtol=1e-5, atol=1e-6)


def test_synthetic_prompts_are_varied_and_never_held_out():
    from specdec.distill.prompts import synthetic_prompts
    ps = synthetic_prompts(2000, seed=1)
    assert len(ps) == len(set(ps)) == 2000
    assert not set(ps) & set(HELDOUT_PROMPTS)
    assert synthetic_prompts(50, seed=1) == ps[:50]                  # seeded, a prefix of the larger draw
    kinds = {"code": ("function", "code", "program"), "maths": ("What is", "Solve", "Calculate", "costs"),
             "translation": ("Translate",)}
    for kind, words in kinds.items():
        assert sum(any(w in p for w in words) for p in ps) > 80, kind
    assert any(not p.isascii() for p in ps)                           # some prompts in other scripts


def test_time_schedule_decays_over_the_time_budget():
    from specdec.distill.config import DistillConfig
    from specdec.distill.train import lr_lambda
    cfg = DistillConfig(out="x", steps=10_000, warmup=10, time_limit=100.0, schedule="time")
    now = {"frac": 0.0}
    f = lr_lambda(cfg, lambda: now["frac"])
    assert f(0) == pytest.approx(0.1) and f(20) == pytest.approx(1.0, abs=1e-3)
    now["frac"] = 0.5
    assert f(20) == pytest.approx(0.55, abs=1e-3)            # half the time: half-way down the cosine
    now["frac"] = 1.0
    assert f(20) == pytest.approx(0.1)
    assert lr_lambda(cfg)(5_005) == pytest.approx(0.55, abs=1e-3)   # by steps alone
    with pytest.raises(ValueError, match="time_limit"):
        DistillConfig(out="x", schedule="time")


def test_llama_loss_over_head_rows_is_the_renormalised_kl(tiny_llama):
    """The 4-layer draft's loss over the exported head's rows: KL between the two distributions restricted
    to those tokens and renormalised (checked against a direct computation), and the full-vocabulary
    loss when the rows are the whole LM head."""
    import contextlib
    import torch.nn.functional as F
    from specdec.distill.eagle import head_rows
    from specdec.distill.model import init_draft, load_teacher
    from specdec.distill.train_loss import llama_batch_loss
    teacher, _ = load_teacher(str(tiny_llama), torch.device("cpu"), "float32")
    draft = init_draft(teacher, 1)
    V = teacher.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (2, 12), generator=g)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[:, 4:11] = True
    none = contextlib.nullcontext()
    head = torch.tensor(sorted(torch.randperm(V, generator=g)[: V // 3].tolist()))
    loss, agree, n = llama_batch_loss(teacher, draft, ids, mask, none, 4096, head_rows(teacher, head))
    with torch.no_grad():
        rows = mask.view(-1).nonzero().squeeze(1)
        lp = teacher(ids).logits.view(-1, V)[rows][:, head].log_softmax(-1)
        lq = draft(ids).logits.view(-1, V)[rows][:, head].log_softmax(-1)
        want = F.kl_div(lq, lp, log_target=True, reduction="sum") / len(rows)
        want_agree = (lp.argmax(-1) == lq.argmax(-1)).float().mean()
    assert n == len(rows) == 14
    assert loss.item() == pytest.approx(want.item(), rel=1e-4) and float(agree) == pytest.approx(want_agree.item())
    full, _, _ = llama_batch_loss(teacher, draft, ids, mask, none, 4096)
    every, _, _ = llama_batch_loss(teacher, draft, ids, mask, none, 4096, head_rows(teacher, torch.arange(V)))
    assert full.item() > 0 and every.item() == pytest.approx(full.item(), rel=1e-5)


def test_init_from_starts_from_an_exported_draft(tiny_llama, distilled, tmp_path):
    """--init-from: the new draft's layers and norm are the exported draft's (not the target's first layers);
    a draft of another depth is refused with the reason."""
    from safetensors.torch import load_file
    from specdec.distill.model import init_draft, load_teacher
    teacher, _ = load_teacher(str(tiny_llama), torch.device("cpu"), "float32")
    saved = load_file(str(distilled / "model.safetensors"))
    fresh = init_draft(teacher, 1).state_dict()
    draft = init_draft(teacher, 1, init_from=str(distilled)).state_dict()
    layer_keys = [k for k in saved if k.startswith("model.layers.")]
    assert layer_keys and all(torch.equal(draft[k], saved[k].float()) for k in layer_keys + ["model.norm.weight"])
    assert any(not torch.equal(fresh[k], draft[k]) for k in layer_keys)        # trained: not the target's layer 0
    from safetensors.torch import save_file
    other = tmp_path / "other"
    shutil.copytree(distilled, other, ignore=shutil.ignore_patterns("train"))
    save_file({k: v for k, v in saved.items() if k != "model.norm.weight"}, str(other / "model.safetensors"))
    with pytest.raises(ValueError, match="missing \\['model.norm.weight'\\].*as many layers"):
        init_draft(teacher, 1, init_from=str(other))
    out = distill(tiny_llama, tmp_path / "again", "--steps", "2", "--init-from", str(distilled))
    info = json.loads((out / MANIFEST).read_text())["trained"]
    assert info["init_from"] == str(distilled) and info["steps"] == 2
