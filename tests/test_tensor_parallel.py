"""Tensor-parallel target on CPU (Gloo, 2 ranks): greedy output identical to TP = 1 in every mode.

Shapes and sharded loading are checked in-process; the end-to-end cases share one TP engine
(sync with an unrelated model draft; AR through per-request K = 0, n-gram by swapping the
drafter, then the padded static-buffer path), plus one async engine (its draft worker is a third
process) and the shutdown cases: close() and rank 0's death both end the workers.
"""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tiny import PROMPTS
from safetensors.torch import load_file

from specdec import LLM, SamplingParams
from specdec.config import EngineConfig, SpecConfig
from specdec.runner.tp_step import DEFAULT_CAPACITY
from specdec.layers.tensor_parallel import TPGroup
from specdec.models.llama import LlamaArch
from specdec.models.loader import load_hf_config, load_model
from specdec.draft.ngram import NgramDrafter

GREEDY = SamplingParams(max_tokens=20, ignore_eos=True)
LONG = [[(13 * i + 7 * j) % 300 + 1 for j in range(180 + 9 * i)] for i in range(8)]   # > one broadcast


pytestmark = pytest.mark.usefixtures("one_thread")   # several processes share 2 cores


@pytest.fixture(scope="module")
def reference(tiny_llama):
    llm = LLM(str(tiny_llama), mode="ar", max_batch_size=8)
    ref = {tuple(p): o.token_ids for p, o in zip(PROMPTS, llm.generate(PROMPTS, GREEDY))}
    short = SamplingParams(max_tokens=4, ignore_eos=True)
    ref.update({tuple(p): o.token_ids for p, o in zip(LONG, llm.generate(LONG, short))})
    return ref


@pytest.fixture(scope="module")
def tp_llm(tiny_llama, tiny_llama_draft):
    llm = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="sync", k=3, max_batch_size=8, tensor_parallel_size=2)
    yield llm
    procs = llm.engine.tp.procs
    llm.close()
    assert [p.returncode for p in procs] == [0]                 # EXIT: the worker returned


# --- shapes and sharded loading (no processes) --------------------------------------------------
def _arch(heads=32, kv_heads=8, inter=14336):
    return LlamaArch("LlamaForCausalLM", 128256, 4096, inter, 2, heads, kv_heads, 128, 1e-5, False, False, False, 8192)


def test_shard_shapes_and_errors():
    a = _arch().shard(4)
    assert (a.num_heads, a.num_kv_heads, a.intermediate_size, a.vocab_size) == (8, 2, 3584, 128256)
    assert _arch().shard(16).num_kv_heads == 1                  # tp > KV heads: one replicated head per rank
    assert [_arch().kv_head_start(r, 16) for r in (0, 1, 2, 15)] == [0, 0, 1, 7]
    with pytest.raises(ValueError, match="num_attention_heads=32 is not divisible by tensor_parallel_size=3"):
        _arch().shard(3)
    with pytest.raises(ValueError, match="intermediate_size=14004 is not divisible by tensor_parallel_size=8"):
        _arch(inter=14004).shard(8)
    with pytest.raises(ValueError, match="num_key_value_heads=6 and tensor_parallel_size=4"):
        _arch(heads=24, kv_heads=6).shard(4)


def test_config_errors(tiny_llama):
    with pytest.raises(ValueError, match="tensor_parallel_size=2 needs one per rank"):
        EngineConfig(target=str(tiny_llama), tensor_parallel_size=2, devices=["cpu"])
    with pytest.raises(ValueError, match="each rank needs its own GPU"):
        EngineConfig(target=str(tiny_llama), device="cuda:0", tensor_parallel_size=2, devices=["cuda:0", "cuda:0"])
    with pytest.raises(ValueError, match="shares the target's weights"):
        EngineConfig(target=str(tiny_llama), mode="sync", tensor_parallel_size=2, spec=SpecConfig(draft="self:1"))
    with pytest.raises(ValueError, match="num_attention_heads=4 is not divisible by tensor_parallel_size=3"):
        LLM(str(tiny_llama), tensor_parallel_size=3)            # checked before any worker starts


@pytest.mark.parametrize("tp", [2, 4])
def test_shards_are_slices_of_the_checkpoint(tiny_llama, tp):
    """Each rank's fused parameters hold exactly its rows/columns of the HF tensors (tp = 4 > 2 KV
    heads: each KV head is replicated on two ranks); vocabulary shards concatenate to the vocabulary."""
    w = load_file(str(tiny_llama / "model.safetensors"))
    a = LlamaArch.from_hf(load_hf_config(tiny_llama))
    d, hl, il = a.head_dim, a.num_heads // tp, a.intermediate_size // tp
    shards = [load_model(str(tiny_llama), torch.device("cpu"), "float32", tp=TPGroup(r, tp)).module for r in range(tp)]
    p = "model.layers.1."
    for r, m in enumerate(shards):
        kv = a.kv_head_start(r, tp)
        qkv = m.layers[1].attn.qkv.weight
        assert torch.equal(qkv[: hl * d], w[p + "self_attn.q_proj.weight"][r * hl * d: (r + 1) * hl * d])
        assert torch.equal(qkv[hl * d: hl * d + d], w[p + "self_attn.k_proj.weight"][kv * d: (kv + 1) * d])
        assert torch.equal(m.layers[1].attn.o_proj.weight, w[p + "self_attn.o_proj.weight"][:, r * hl * d: (r + 1) * hl * d])
        assert torch.equal(m.layers[1].mlp.gate_up.weight[il:], w[p + "mlp.up_proj.weight"][r * il: (r + 1) * il])
        assert torch.equal(m.layers[1].mlp.down.weight, w[p + "mlp.down_proj.weight"][:, r * il: (r + 1) * il])
    for ours, theirs in (("embed", "model.embed_tokens.weight"), ("lm_head", "lm_head.weight")):
        full = torch.cat([getattr(m, ours).weight for m in shards])
        assert torch.equal(full[: a.vocab_size], w[theirs]) and not full[a.vocab_size:].any()   # zero padding


# --- end to end on two ranks ---------------------------------------------------------------------
def _check(llm, reference, prompts, params=GREEDY):
    outs = llm.generate(prompts, params)
    for p, o in zip(prompts, outs):
        assert o.token_ids == reference[tuple(p)], p
    return outs


def test_sync_model_draft_and_ar(tp_llm, reference):
    outs = _check(tp_llm, reference, PROMPTS)
    assert sum(o.stats["drafted"] for o in outs) > 0
    ar = [SamplingParams(max_tokens=20, ignore_eos=True, num_draft_tokens=0)] * len(PROMPTS)
    outs = _check(tp_llm, reference, PROMPTS, ar)
    assert all(o.stats["drafted"] == 0 and o.stats["ar_steps"] > 0 for o in outs)


def test_sync_ngram(tp_llm, reference):
    eng = tp_llm.engine
    model_drafter = eng.drafter
    eng.draft.drafter = NgramDrafter(4, 1)            # the slot's drafter, swapped for this test
    try:
        outs = _check(tp_llm, reference, PROMPTS)
        assert sum(o.stats["drafted"] for o in outs) > 0
    finally:
        eng.draft.drafter = model_drafter


def test_long_prefill_takes_two_broadcasts(tp_llm, reference):
    assert sum(len(p) for p in LONG) * 3 > DEFAULT_CAPACITY
    _check(tp_llm, reference, LONG, SamplingParams(max_tokens=4, ignore_eos=True))


def test_padded_graph_path(tp_llm, reference):
    """Decode-shaped steps through the static buffer that CUDA graphs replay (rank 0 and worker)."""
    tp_llm.engine.runner.enable_graphs(8, 5, capture=False)    # rank 0 sends Graphs: the workers follow
    assert tp_llm.engine.runner.graph is not None
    _check(tp_llm, reference, PROMPTS)
    _check(tp_llm, reference, PROMPTS[:3])                      # 3 rows padded up to a bucket of 4
    ar = [SamplingParams(max_tokens=20, ignore_eos=True, num_draft_tokens=0)] * len(PROMPTS)
    _check(tp_llm, reference, PROMPTS, ar)
    assert not tp_llm.engine.runner.eager_fallbacks


def test_async_with_a_draft_worker(tiny_llama, tiny_llama_draft, reference):
    """SSD: TP rank 0 is also the draft channel's rank 0 (the two groups are separate)."""
    llm = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="async", k=3, max_batch_size=8, tensor_parallel_size=2,
              draft_placement="worker")
    try:
        procs = llm.engine.tp.procs + [llm.engine.draft.link.proc]
        _check(llm, reference, PROMPTS)
        assert llm.metrics.rounds > 0
    finally:
        llm.close()
    assert [p.returncode for p in procs] == [0, 0]


RANK0 = """
import os, signal, sys
from specdec import LLM
llm = LLM(sys.argv[1], mode="ar", tensor_parallel_size=2)
print(llm.engine.tp.procs[0].pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_workers_exit_when_rank0_dies(tiny_llama):
    p = subprocess.run([sys.executable, "-c", RANK0, str(tiny_llama)], capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    pid = int(p.stdout.split()[-1])
    deadline = time.monotonic() + 15
    while _alive(pid):
        assert time.monotonic() < deadline, f"worker {pid} outlived rank 0"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:                        # a zombie has exited
        return f.read().split(")")[-1].split()[0] != "Z"


def test_triton_tp_variant_and_gpus_parameter():
    """model_repository/*/configs/tp2.pbtxt (tritonserver --model-config-name=tp2) differ from config.pbtxt only in
    placement: the target is one KIND_MODEL instance over GPUs 0,1 (its `gpus` parameter), the draft keeps GPU 2."""
    pytest.importorskip("tritonclient")
    from tritonclient.grpc import model_config_pb2 as mc

    from specdec.triton.repository import default_source, read_config
    from specdec.triton.settings import Settings, parse_parameters
    src = default_source()
    for model, kind, gpus in (("target", mc.ModelInstanceGroup.KIND_MODEL, []), ("draft", mc.ModelInstanceGroup.KIND_GPU, [2])):
        base, tp2 = read_config(src / model / "config.pbtxt"), read_config(src / model / "configs" / "tp2.pbtxt")
        (group,) = tp2.instance_group
        assert group.kind == kind and list(group.gpus) == gpus
        for c in (base, tp2):
            del c.instance_group[:]
            c.parameters.pop("gpus", None)
        assert base == tp2, model
    params = read_config(src / "target" / "configs" / "tp2.pbtxt").parameters
    cfg = parse_parameters({k: v.string_value for k, v in params.items()}).engine_config("cuda:0")
    assert cfg.tensor_parallel_size == 2 and cfg.devices == ["cuda:0", "cuda:1"] and cfg.device == "cuda:0"
    assert Settings().engine_config("cpu").tensor_parallel_size == 1
    with pytest.raises(ValueError, match="gpus='0,x'"):
        Settings(gpus="0,x")
