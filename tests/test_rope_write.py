"""The fused q/k-norm + rotary + K/V-write kernel (layers/rope_write.py) equals the unfused layer path
(CPU: Triton's interpreter)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
rw = pytest.importorskip("specdec.layers.rope_write")
if not rw.HAVE_TRITON:
    pytest.skip("triton is not installed", allow_module_level=True)

from specdec.layers import fused  # noqa: E402
from specdec.layers.attention import write_kv  # noqa: E402
from specdec.layers.norm import RMSNorm  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("H,KVH,D,qk_norm", [(4, 2, 32, False), (6, 3, 64, True), (2, 2, 16, False)])
def test_matches_the_unfused_path(H, KVH, D, qk_norm):
    torch.manual_seed(H * D)
    T, NB, BS = 5, 6, 4
    qkv = torch.randn(T, (H + 2 * KVH) * D, device=DEV)
    ang = torch.rand(T, 1, D, device=DEV) * 6.3
    cos, sin = ang.cos(), ang.sin()
    slots = torch.tensor([3, 9, 10, 17, NB * BS], device=DEV)          # the last one: the sentinel slot
    caches = [torch.zeros(NB + 1, BS, KVH, D, device=DEV) for _ in range(4)]
    qn, kn = RMSNorm(D, 1e-6).to(DEV), RMSNorm(D, 1e-6).to(DEV)
    with torch.no_grad():
        qn.weight.uniform_(0.5, 1.5)
        kn.weight.uniform_(0.5, 1.5)
    # unfused (what models/llama.py runs without the kernel)
    q, k, v = qkv.split([H * D, KVH * D, KVH * D], dim=-1)
    q, k, v = q.reshape(T, H, D), k.reshape(T, KVH, D), v.reshape(T, KVH, D)
    if qk_norm:
        q, k = qn(q), kn(k)
    q_ref, k_ref = fused.rotary(q, k, cos, sin)
    write_kv(caches[0], caches[1], k_ref, v, slots)
    q_out = rw.rope_and_write_kv(qkv, cos, sin, caches[2], caches[3], slots, H, KVH, D,
                                 qn.weight if qk_norm else None, kn.weight if qk_norm else None, 1e-6)
    assert torch.allclose(q_out, q_ref, atol=1e-5)
    assert torch.allclose(caches[2], caches[0], atol=1e-5) and torch.equal(caches[3], caches[1])
