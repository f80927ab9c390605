"""The architecture's promises, checked: one config tree reaches every entry point, the folders
import in one direction, the draft worker's runner comes from the engine's setup, draft channels
are per engine (two async LLMs in one process), and the tensor-parallel close order."""
from __future__ import annotations

import ast
import gc
import time
from pathlib import Path

import pytest
from tiny import PROMPTS

from specdec import LLM, SamplingParams
from specdec.config import (EngineConfig, default_of, engine_config, flat_fields, flat_values, format_flat,
                            parse_flat)

PKG = Path(__file__).resolve().parents[1] / "backend" / "specdec"
GREEDY = SamplingParams(max_tokens=16, ignore_eos=True)


def _imports(folder: str) -> set[str]:
    """The specdec subpackages and top-level modules that the modules of one folder import."""
    out = set()
    for path in (PKG / folder).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 0 and (node.module or "").startswith("specdec."):
                out.add(node.module.split(".")[1])
            elif node.level == 1:
                out.add(folder)
            elif node.level == 2:
                out.add((node.module or "specdec").split(".")[0])
    return out


def test_layers_import_in_one_direction():
    assert _imports("spec") <= {"spec", "config", "layers", "transfer"}, _imports("spec")        # pure algorithms
    assert "engine" not in _imports("draft") and "engine" not in _imports("runner")
    assert "draft" not in _imports("runner") and "parallel" not in _imports("runner")
    assert "config" in _imports("runner")
    config = ast.parse((PKG / "config.py").read_text())
    assert not [n for n in ast.walk(config) if isinstance(n, ast.ImportFrom) and (n.level or "specdec" in (n.module or ""))]


def test_engine_has_no_mixins():
    from specdec.engine.engine import LLMEngine
    assert LLMEngine.__bases__ == (object,)


def test_one_config_tree_reaches_every_entry_point():
    names = flat_fields()
    assert len(names) == len(set(names))
    # every leaf, through text (CLI flags and config.pbtxt parameters use parse_flat)
    cfg = engine_config(mode="async", draft="d", k=3, fan_out_hit=[2, 1, 1, 2], fan_out_miss=[6, 0, 0, 0],
                        sampler_x=0.5, backup="fast", num_kv_blocks=40, attention_backend="sdpa", graphs="off")
    text = {n: format_flat(v) for n, v in flat_values(cfg).items()}
    assert engine_config(**{n: parse_flat(n, t) for n, t in text.items() if n != "draft"}, draft="d") == cfg
    assert EngineConfig.from_json(cfg.to_json()) == cfg                  # the draft worker's --config
    assert parse_flat("fan_out", "geometric") == "geometric" and parse_flat("fan_out", "3") == 3
    with pytest.raises(ValueError, match="unknown option"):
        engine_config(no_such_option=1)
    with pytest.raises(ValueError, match=r"fan_out_hit has 2 entries: expected K\+1 = 4"):
        engine_config(mode="sync", draft="d", k=3, fan_out_hit=[1, 2])
    # the CLI: one flag per option, defaults from the tree
    import argparse

    from specdec.commands.common import add_engine_args, engine_options
    p = argparse.ArgumentParser()
    add_engine_args(p)
    a = p.parse_args(["--fan-out-hit", "2", "1", "1", "2", "--sampler-x", "0.5", "--backup", "fast", "--k", "3",
                      "--mode", "async", "--draft", "d", "--no-draft-kv-append"])
    assert engine_options(a) == dict(fan_out_hit=[2, 1, 1, 2], sampler_x=0.5, backup="fast", k=3, mode="async",
                                     draft="d", draft_kv_append=False)
    assert default_of("k") == EngineConfig().spec.k
    # Triton: every option is a config.pbtxt parameter
    from specdec.triton.settings import PARAMETERS, parse_parameters
    assert set(names) <= set(PARAMETERS)
    s = parse_parameters({"mode": "async", "draft": "d", "k": "3", "sampler_x": "0.5", "backup": "fast",
                          "fan_out_hit": "2,1,1,2", "fan_out_miss": "6,0,0,0"})
    tc = s.engine_config("cpu")
    assert (tc.spec.sampler_x, tc.spec.backup, tc.spec.fan_out_hit) == (0.5, "fast", [2, 1, 1, 2])
    assert s.worker_config("cuda:1").draft_device == "cuda:1" and s.worker_config("cuda:1").spec.draft == "d"


@pytest.fixture(scope="module")
def ar_ref(tiny_llama):
    outs = LLM(str(tiny_llama), mode="ar", max_batch_size=8).generate(PROMPTS, GREEDY)
    return [o.token_ids for o in outs]


@pytest.mark.usefixtures("one_thread")
def test_two_async_llms_one_after_another(tiny_llama, ar_ref):
    """Each engine's draft channel is a process group of its own: the first LLM is only dropped
    (``del``), and its worker exits once the LLM is collected."""
    first = LLM(str(tiny_llama), draft=str(tiny_llama), mode="async", k=3, max_batch_size=8, draft_placement="worker")
    assert [o.token_ids for o in first.generate(PROMPTS, GREEDY)] == ar_ref
    proc = first.engine.draft.link.proc
    del first
    gc.collect()
    second = LLM(str(tiny_llama), draft=str(tiny_llama), mode="async", k=2, max_batch_size=8, draft_placement="worker")
    try:
        assert [o.token_ids for o in second.generate(PROMPTS, GREEDY)] == ar_ref
        assert second.metrics.rounds > 0 and second.metrics.cache_hits > 0
    finally:
        second.close()
    deadline = time.monotonic() + 30
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the dropped LLM's draft worker is still running"
        time.sleep(0.1)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("graphs", ["padded", "off"])
def test_draft_worker_runs_the_engines_runner_setup(tiny_llama, tiny_llama_draft, ar_ref, graphs):
    """The worker builds its runner with runner/setup.py from the engine's config: with graphs on
    (here the graphs' padded path, which CPU can run) both use them, with graphs off neither does."""
    with LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="async", k=3, max_batch_size=8, graphs=graphs,
             draft_placement="worker") as llm:
        hello = llm.engine.drafter.hello
        assert hello.graphs == (llm.engine.runner.graph is not None) == (graphs == "padded")
        assert hello.attention == llm.engine.runner.attn_backend
        assert [o.token_ids for o in llm.generate(PROMPTS, GREEDY)] == ar_ref


def test_async_refuses_a_generic_draft_at_construction(tiny_llama, tiny_gpt2):
    """SSD's tree decode needs the paged runner: a GPT-2-style draft is refused before any worker
    starts, with the families that work; sync mode takes it."""
    with pytest.raises(ValueError, match="native Llama-family architecture.*LlamaForCausalLM.*GPT2LMHeadModel"):
        LLM(str(tiny_gpt2), draft=str(tiny_gpt2), mode="async")
    out = LLM(str(tiny_gpt2), draft=str(tiny_gpt2), mode="sync", k=3).generate(PROMPTS[:2], GREEDY)
    ref = LLM(str(tiny_gpt2), mode="ar").generate(PROMPTS[:2], GREEDY)
    assert [o.token_ids for o in out] == [o.token_ids for o in ref]


def test_tensor_parallel_close_leaves_the_group_before_waiting():
    """Rank 0 sends EXIT, aborts its own communicator, and only then waits for the workers; waiting
    first deadlocked on two H200s (a worker's shutdown waited for rank 0)."""
    import threading

    import torch

    from specdec.parallel import tp as tpmod
    events = []

    class Channel:
        def send(self, msg):
            events.append(("send", type(msg).__name__))

    class Group:
        def shutdown(self):
            events.append(("shutdown",))

    class Proc:
        def poll(self):
            return None

        def wait(self, timeout=None):
            events.append(("wait",))
            return 0

    t = object.__new__(tpmod.TensorParallel)
    t.channel, t.group, t.procs, t.device = Channel(), Group(), [Proc(), Proc()], torch.device("cpu")
    t._closing, t.store = threading.Event(), object()
    t._finalizer = type("F", (), {"detach": lambda self: None})()
    t.close()
    assert events == [("send", "Exit"), ("shutdown",), ("wait",), ("wait",)]
    assert t.channel is None and t._closing.is_set()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("graphs", ["padded", "off"])
def test_in_process_draft_runs_the_engines_runner_setup(tiny_llama, tiny_llama_draft, ar_ref, graphs):
    """SSD with the draft in the target's process: its runner also comes from runner/setup.py (graphs
    with the target's), it is the default placement on the target's device, and no worker starts."""
    with LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="async", k=3, max_batch_size=8, graphs=graphs) as llm:
        eng = llm.engine
        assert type(eng.drafter).__name__ == "InProcessDrafter" and eng.draft.link is None
        assert (eng.drafter.runner.graph is not None) == (eng.runner.graph is not None) == (graphs == "padded")
        assert [o.token_ids for o in llm.generate(PROMPTS, GREEDY)] == ar_ref
