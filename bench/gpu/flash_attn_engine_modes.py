"""attention_backend=flash_attn through the engine in each mode on a tiny Llama (head dim 64, bf16): AR with graphs
off, then on, sync and SSD; prints each mode's first tokens, or the Python traceback of the first failure."""
import faulthandler
import sys
import tempfile
import traceback
from pathlib import Path

faulthandler.enable()
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "backend"))
from tiny import make_model  # noqa: E402

from specdec import LLM, SamplingParams  # noqa: E402

folder = make_model(Path(tempfile.mkdtemp()) / "m", "llama", layers=2, hidden=256, heads=4, kv_heads=2, init_std=0.05)
p = SamplingParams(max_tokens=16, ignore_eos=True)
for graphs, kw in (("off", {}), ("auto", {}), ("auto", dict(mode="sync", draft=str(folder), k=4)),
                   ("auto", dict(mode="async", draft=str(folder), k=3, tree_policy="always"))):
    try:
        out = LLM(str(folder), device="cuda:0", dtype="bfloat16", attention_backend="flash_attn", graphs=graphs,
                  max_batch_size=4, max_model_len=512, **kw).generate([[5, 6, 7], [9] * 40], p)
        print(f"graphs={graphs} {kw.get('mode', 'ar')}: ok {[o.token_ids[:6] for o in out]}", flush=True)
    except BaseException:
        print(f"graphs={graphs} {kw.get('mode', 'ar')}: FAILED", flush=True)
        traceback.print_exc()
        break
