"""The embedded default (SmolLM2-135M-Instruct, real weights) on CPU: sync equals AR at temperature 0."""
import pytest

from specdec import LLM, SamplingParams

PROMPTS = ["What is the capital of France?", "Write a haiku about GPUs.", "List three prime numbers."]


@pytest.fixture(scope="module")
def ar_outputs():
    llm = LLM("smollm2-135m", mode="ar", max_batch_size=4)
    assert llm.engine.target.kind == "native" and llm.engine.target.arch.num_layers == 30
    return llm.generate(PROMPTS, SamplingParams(max_tokens=16, chat=True))


@pytest.mark.parametrize("draft", ["self:8", "ngram", "smollm2-135m-draft"])
def test_smollm2_sync_equals_ar(draft, ar_outputs):
    llm = LLM("smollm2-135m", draft=draft, mode="sync", k=3, max_batch_size=4)
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=16, chat=True))
    assert [o.token_ids for o in outs] == [o.token_ids for o in ar_outputs]
    assert sum(o.stats["drafted"] for o in outs) > 0


def test_smollm2_answers_sensibly(ar_outputs):
    assert "Paris" in ar_outputs[0].text


def test_shipped_draft_is_the_default_and_beats_self8(ar_outputs):
    """The distilled draft (drafts/smollm2-135m-draft) is what sync mode uses by default; it is
    exact (greedy = AR) and accepts far more than self:8 (which accepts ~1-2 % on SmolLM2)."""
    llm = LLM("smollm2-135m", mode="sync", k=3, max_batch_size=4)
    assert llm.config.spec.draft == "smollm2-135m-draft"
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=16, chat=True))
    assert [o.token_ids for o in outs] == [o.token_ids for o in ar_outputs]
    assert sum(o.stats["accepted"] for o in outs) / sum(o.stats["drafted"] for o in outs) > 0.08


def test_shipped_draft_brings_its_measured_k():
    """No K given with the shipped draft: its measured best (2, BENCHMARKS.md); a K given, or another
    draft, keeps the config's own. The Triton settings resolve the same way."""
    from specdec.config import EngineConfig
    from specdec.llm import make_config
    from specdec.triton.settings import Settings
    default = EngineConfig().spec.k
    assert default != 2
    assert make_config("smollm2-135m", mode="sync").spec.k == 2
    assert make_config("smollm2-135m", mode="sync", k=5).spec.k == 5
    assert make_config("smollm2-135m", draft="ngram", mode="sync").spec.k == default
    assert make_config("smollm2-135m", mode="ar").spec.k == default
    assert Settings(target="smollm2-135m", mode="sync").engine_config("cpu").spec.k == 2
    assert Settings(target="smollm2-135m", mode="sync", k=3).engine_config("cpu").spec.k == 3


def test_bench_k_defaults_to_the_drafts_measured_k():
    """`specdec bench` without --k: the shipped draft's K (2), the seed's 6 for any other draft, --k when given."""
    import argparse
    from specdec.benchmark.run import SEED_K, bench_k
    from specdec.commands import bench as bench_cmd
    p = argparse.ArgumentParser()
    bench_cmd.add_parser(p.add_subparsers())
    k = lambda *argv: bench_k(p.parse_args(["bench", *argv]))     # noqa: E731
    assert k() == 2 and k("--draft", "ngram") == SEED_K == 6 and k("--k", "3") == 3
    assert k("--target", "synthetic:llama-tiny", "--draft", "synthetic:llama-tiny") == 6
