"""The bench's warm-up runs every graph key its timed run meets, so no capture lands in a timed figure. On the CPU,
graphs "padded" count each key's first run as a capture (where a GPU captures it), which these tests read: sync
with a fixed K and with k_policy=auto, over a batch sweep (rows finishing at different rounds meet smaller batch
buckets), greedy outputs unchanged."""
import argparse
import random

import pytest

from specdec.benchmark.run import bench
from specdec.commands import bench as bench_cmd
from specdec.runner import graph_tools
from specdec.spec.auto_k import AutoK


def args(target, *argv):
    p = argparse.ArgumentParser()
    bench_cmd.add_parser(p.add_subparsers())
    return p.parse_args(["bench", "--device", "cpu", "--graphs", "padded", "--dtype", "float32", "--max-model-len", "256",
                         "--target", str(target), "--draft", "self:1", "--numseqs", "4", "--output_len", "40",
                         "--sweep", "b=1,4", "--k", "3", *argv])


def test_padded_keys_count_as_captures(tiny_llama):
    """A key's first padded run counts once, like a capture; its later runs do not."""
    from tiny import PROMPTS

    from specdec import LLM, SamplingParams
    llm = LLM(str(tiny_llama), mode="ar", graphs="padded")
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    c0 = graph_tools.captures()
    llm.generate(PROMPTS[:1], params)
    first = graph_tools.captures() - c0
    assert first == len(llm.engine.runner.graph.padded_keys) > 0
    c1 = graph_tools.captures()
    llm.generate(PROMPTS[:1], params)
    assert graph_tools.captures() == c1


def test_loop_step_zero_holds_every_catch_up_the_loop_is_given():
    """The loop's step 0 runs at LOOP_QUERIES queries so its key does not depend on the round before: that holds
    while no catch-up the draft loop passes on is longer (runner/ may not import draft/, so the two are apart)."""
    from specdec.draft.loop import LOOP_CATCH_UP
    from specdec.runner.cuda_graphs import LOOP_QUERIES
    assert LOOP_QUERIES == LOOP_CATCH_UP


def test_fixed_k_timed_runs_meet_no_new_graph_key(tiny_llama):
    c0 = graph_tools.captures()
    rep = bench(args(tiny_llama, "--modes", "sync"))
    assert graph_tools.captures() > c0                                   # the warm-up ran (and counted) keys
    assert [(r["b"], r["graph_captures"]) for r in rep["runs"]] == [(1, 0), (4, 0)]


@pytest.mark.parametrize("seed", [0, 1])
def test_auto_k_timed_runs_meet_no_new_graph_key(tiny_llama, monkeypatch, seed):
    """Auto K's choices depend on measured times, so each pass drafts different K' at different contexts and after
    plain stretches of different lengths; here a seeded random choice per round stands for them. Whatever they
    are, the timed run meets no key the warm-up has not run, and greedy output stays AR's."""
    rng = random.Random(seed)
    monkeypatch.setattr(AutoK, "next_k", lambda self, batch, metrics=None: rng.choice((0, 0, 1, 2, 3)))
    rep = bench(args(tiny_llama, "--modes", "ar,sync", "--k-policy", "auto"))
    ar1, ar4, sync1, sync4 = rep["runs"]
    assert [(r["b"], r["graph_captures"]) for r in (sync1, sync4)] == [(1, 0), (4, 0)]
    assert sync1["outputs"] == ar1["outputs"] and sync4["outputs"] == ar4["outputs"]


@pytest.mark.parametrize("batch", [1, 3])
def test_warm_graphs_alone_holds_every_key_of_any_auto_k_schedule(tiny_llama, batch):
    """The grid by itself, with no pass of the run's requests after it: rounds of every K' after plain stretches of
    every length (the draft's catch-up forward, then its loop), rows accepting all or not, meet no new key."""
    from specdec import LLM, SamplingParams
    from specdec.benchmark.run import longest_context, warm_graphs
    params = SamplingParams(max_tokens=60, ignore_eos=True)
    prompts = [[(r * 31 + j * 17) % 300 + 5 for j in range(30)] for r in range(4)]     # 30-token prompts: prefilled eagerly
    ref = [o.token_ids for o in LLM(str(tiny_llama), mode="ar").generate(prompts, params)]
    llm = LLM(str(tiny_llama), draft="self:1", mode="sync", k=3, k_policy="auto", graphs="padded", max_batch_size=4,
              max_model_len=256)
    eng = llm.engine
    eng.scheduler.max_batch_size = batch
    warm_graphs(eng, longest_context(prompts, params.max_tokens, eng.k))
    schedule = iter([k for j in range(8) for k in (3, 2, 1, *[0] * j)] * 10)
    eng.auto_k.next_k = lambda b, metrics=None: next(schedule)
    c0 = graph_tools.captures()
    outs = llm.generate(prompts, params)
    assert graph_tools.captures() == c0
    assert [o.token_ids for o in outs] == ref
