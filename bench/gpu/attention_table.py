"""Attention backends per step shape on one GPU: error against float32, us per call inside a CUDA graph, the
HBM floor, auto's choice, and a replacement for the table in backend/specdec/layers/attention_choice.py.

    python3 bench/gpu/attention_table.py [--out FILE] [--quick] [--triton-configs 64x4,32x4,128x8]

Cases: 8B shape (32 query heads, 8 KV heads, D 128) and 1B shape (32/8, D 64); batch 1/8/16/64, context
512/2048/8192, 1 or 5 queries per sequence (decode, verify K=4), page 16, bfloat16, every sequence at the
full context, its queries at the last positions. Each backend runs through the engine's own entry points
(padded_context + paged_attention, as a CUDA-graph step builds them); SDPA's time includes its gather.
Timing: warm-up, then one CUDA graph of >= 8 calls cycling through enough cache copies to exceed twice the
L2 (so K/V come from HBM), median of 30 replays / calls. Floor: the K/V bytes of one call / the device-copy
bandwidth measured here (a 1 GiB copy, read + write counted). Full JSON to $OUT/attention_table.json when
OUT is set, else to --out when given. flash_attn is skipped when flash-attn-4 does not import.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "backend"))
from specdec.layers import attention_choice, flash_attention  # noqa: E402
from specdec.layers.attention import build_context, padded_context, paged_attention  # noqa: E402
from specdec.layers.triton_attention import triton_paged_attention  # noqa: E402

SHAPES = {"8b": (32, 8, 128), "1b": (32, 8, 64)}          # query heads, KV heads, head dim
BATCHES, CONTEXTS, QUERIES, PAGE = (1, 8, 16, 64), (512, 2048, 8192), (1, 5), 16
MAX_REL_ERR = 2e-2


def copy_bandwidth(dev) -> float:
    """Bytes/s of a 1 GiB device-to-device copy, read + write counted."""
    src = torch.empty(2**30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    dst.copy_(src)
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(10):
        dst.copy_(src)
    e1.record()
    torch.cuda.synchronize()
    return 2 * 10 * src.numel() / (e0.elapsed_time(e1) / 1e3)


def reference(q, kc, vc, tables, q_pos, scale) -> torch.Tensor:
    """float32: q [B, Q, H, D] attends causally by storage position over each sequence's blocks."""
    B, Q, H, D = q.shape
    kvh = kc.shape[2]
    out = torch.empty(B, Q, H, D, dtype=torch.float32, device=q.device)
    for b in range(B):
        L = int(q_pos[b].max()) + 1
        k = kc[tables[b]].reshape(-1, kvh, D)[:L].float().repeat_interleave(H // kvh, 1)    # [L, H, D]
        v = vc[tables[b]].reshape(-1, kvh, D)[:L].float().repeat_interleave(H // kvh, 1)
        s = torch.einsum("qhd,khd->hqk", q[b].float(), k) * scale
        s = s.masked_fill(torch.arange(L, device=q.device)[None, None, :] > q_pos[b][None, :, None], float("-inf"))
        out[b] = torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), v)
    return out


def rel_err(out, ref) -> float:
    return float((out.float() - ref).norm() / ref.norm())


def time_calls(fns, reps: int) -> float:
    """Median us per call of a CUDA graph that runs fns (cycled to >= 8 calls) once per replay."""
    calls = [fns[i % len(fns)] for i in range(max(8, len(fns)))]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for f in calls:
            f()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for f in calls:
            f()
    graph.replay()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for e0, e1 in ev:
        e0.record()
        graph.replay()
        e1.record()
    torch.cuda.synchronize()
    return statistics.median(e0.elapsed_time(e1) for e0, e1 in ev) * 1e3 / len(calls)


def run_case(shape, B, ctx, Q, backends, triton_cfgs, bw, l2, dtype, reps, dev):
    H, KVH, D = SHAPES[shape]
    nb = ctx // PAGE
    kv_bytes = 2 * B * ctx * KVH * D * torch.finfo(dtype).bits // 8
    sets = max(1, min(32, math.ceil(2 * l2 / kv_bytes)))
    free = torch.cuda.mem_get_info(dev)[0]
    if kv_bytes * (sets + 3) > 0.8 * free:          # caches + SDPA's gathered copy + reference workspace
        return {"shape": shape, "B": B, "ctx": ctx, "Q": Q, "skipped": f"needs {kv_bytes * (sets + 3) / 2**30:.1f} GiB"}
    scale = D ** -0.5
    q_pos = (ctx - Q + torch.arange(Q, device=dev)).expand(B, Q).contiguous()
    slots = torch.zeros(B * Q, dtype=torch.long, device=dev)
    caches = []
    for _ in range(sets):
        kc = torch.randn(B * nb + 1, PAGE, KVH, D, device=dev, dtype=dtype)
        vc = torch.randn_like(kc)
        tables = torch.randperm(B * nb, device=dev).view(B, nb)
        caches.append((kc, vc, tables, torch.randn(B * Q, H, D, device=dev, dtype=dtype)))
    kc, vc, tables, q = caches[0]
    ref = reference(q.view(B, Q, H, D), kc, vc, tables, q_pos, scale).view(B * Q, H, D)
    row = {"shape": shape, "B": B, "ctx": ctx, "Q": Q, "kv_MB": kv_bytes / 1e6, "sets": sets,
           "floor_us": kv_bytes / bw * 1e6, "us": {}, "rel_err": {}, "errors": {}}
    variants = [(b, None) for b in backends] + [("triton", c) for c in triton_cfgs]
    for name, cfg in variants:
        label = name if cfg is None else f"triton[{cfg[0]}x{cfg[1]}]"
        try:
            fns = []
            for kc_, vc_, tb_, q_ in caches:
                c = padded_context(q_pos, tb_, slots, ctx, name)
                if cfg is None:
                    fns.append(lambda q_=q_, kc_=kc_, vc_=vc_, c=c: paged_attention(q_, kc_, vc_, c, scale))
                else:
                    fns.append(lambda q_=q_, kc_=kc_, vc_=vc_, c=c: triton_paged_attention(
                        q_, kc_, vc_, c.block_tables, c.q_pos, ctx, scale, queries=Q, block_n=cfg[0], num_warps=cfg[1]))
            row["rel_err"][label] = rel_err(fns[0](), ref)
            row["us"][label] = time_calls(fns, reps)
        except Exception as e:                      # report and go on: one backend failing is a result too
            row["errors"][label] = f"{type(e).__name__}: {e}"[:300]
    row["auto"] = attention_choice.resolve_backend("auto", dev, B, Q, ctx, D, graphed=True)
    return row


def varlen_checks(dev, dtype, backends) -> dict:
    """Eager (build_context) steps against SDPA: mixed decode/verify/chunk rows, and a fresh prefill."""
    H, KVH, D = SHAPES["8b"]
    res = {}
    for label, q_lens, kv_lens in (("mixed", [1, 5, 3, 16], [700, 2048, 33, 300]), ("prefill", [300, 77], [300, 77])):
        nbs = [-(-n // PAGE) for n in kv_lens]
        kc = torch.randn(sum(nbs) + 1, PAGE, KVH, D, device=dev, dtype=dtype)
        vc = torch.randn_like(kc)
        perm = torch.randperm(sum(nbs)).tolist()
        tables = [perm[sum(nbs[:i]): sum(nbs[: i + 1])] for i in range(len(nbs))]
        q = torch.randn(sum(q_lens), H, D, device=dev, dtype=dtype)
        starts = [k - n for k, n in zip(kv_lens, q_lens)]
        slots = torch.zeros(len(q), dtype=torch.long)
        outs = {}
        for b in ["sdpa"] + [b for b in backends if b != "sdpa"] + ["triton-forced"]:
            limit = attention_choice.TRITON_MAX_QUERIES
            try:
                if b == "triton-forced":               # the kernel's query blocks on a long prefill too
                    attention_choice.TRITON_MAX_QUERIES = 10**9
                c = build_context(q_lens, kv_lens, starts, tables, slots, PAGE, dev, None, b.split("-")[0])
                outs[b] = (c.backend, paged_attention(q, kc, vc, c, D ** -0.5))
            except Exception as e:
                res[f"{label}/{b}"] = f"{type(e).__name__}: {e}"[:300]
            finally:
                attention_choice.TRITON_MAX_QUERIES = limit
        for b, (used, o) in outs.items():
            if b != "sdpa":
                res[f"{label}/{b}"] = {"ran": used, "rel_err_vs_sdpa": rel_err(o, outs["sdpa"][1].float())}
    return res


def suggest_table(rows, backends) -> list[str]:
    """Per (head dim, B, Q, ctx): the backends whose error is in bounds, fastest first (ties: the earlier in
    `backends`), then SDPA if it is not among them."""
    lines = []
    for r in rows:
        if not r.get("us"):
            continue
        ok = [b for b in backends if b in r["us"] and r["rel_err"].get(b, 1) <= MAX_REL_ERR]
        order = tuple(sorted(ok, key=lambda b: (round(r["us"][b], 1), backends.index(b))))
        order += tuple(b for b in ("sdpa",) if b not in order)
        lines.append(f"    ({SHAPES[r['shape']][2]}, {r['B']}, {r['Q']}, {r['ctx']}): {order!r},")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="JSON path when $OUT is not set")
    ap.add_argument("--quick", action="store_true", help="8B shape, batch 1/16, context 512/8192 only")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--triton-configs", default="", help="extra Triton launch configs BLOCK_NxWARPS, e.g. 32x4,128x8")
    a = ap.parse_args()
    dev = torch.device("cuda", torch.cuda.current_device())
    dtype = torch.bfloat16
    props = torch.cuda.get_device_properties(dev)
    backends = ["triton", "sdpa"] + (["flash_attn"] if flash_attention.available() else [])
    cfgs = [tuple(int(x) for x in c.split("x")) for c in a.triton_configs.split(",") if c]
    t0 = time.time()
    bw = copy_bandwidth(dev)
    l2 = getattr(props, "L2_cache_size", 50 * 2**20)
    print(f"{props.name}, {props.multi_processor_count} SMs, L2 {l2 / 2**20:.0f} MiB, copy bandwidth {bw / 1e9:.0f} GB/s; "
          f"torch {torch.__version__}; backends {backends}; table: {attention_choice.TABLE_SOURCE}")
    if "flash_attn" not in backends:
        print("flash_attn: not measured (flash-attn-4 does not import here); the suggested table leaves it out")
    shapes = ["8b"] if a.quick else list(SHAPES)
    batches, contexts = ((1, 16), (512, 8192)) if a.quick else (BATCHES, CONTEXTS)
    rows = []
    labels = backends + [f"triton[{c[0]}x{c[1]}]" for c in cfgs]
    print(f"{'shape':5} {'B':>3} {'ctx':>5} {'Q':>2} {'floor':>7} " + " ".join(f"{b:>11}" for b in labels)
          + f" {'auto':>10} {'auto/floor':>10} {'best/floor':>10}")
    for shape in shapes:
        for B in batches:
            for ctx in contexts:
                for Q in QUERIES:
                    r = run_case(shape, B, ctx, Q, backends, cfgs, bw, l2, dtype, a.reps, dev)
                    rows.append(r)
                    if "skipped" in r:
                        print(f"{shape:5} {B:>3} {ctx:>5} {Q:>2} skipped: {r['skipped']}")
                        continue
                    cells = []
                    for b in labels:
                        bad = b in r["errors"] or not r["rel_err"].get(b, 0) <= MAX_REL_ERR     # NaN is bad too
                        cells.append(f"{'ERR' if b in r['errors'] else '%.1f' % r['us'][b]:>10}{'!' if bad else ' '}")
                    auto = r["us"].get(r["auto"], float("nan"))
                    best = min(r["us"].values(), default=float("nan"))
                    print(f"{shape:5} {B:>3} {ctx:>5} {Q:>2} {r['floor_us']:>7.1f} " + " ".join(cells)
                          + f" {r['auto']:>10} {auto / r['floor_us']:>10.2f} {best / r['floor_us']:>10.2f}", flush=True)
    print("('!': error above %.0e or a failure; details in the JSON)" % MAX_REL_ERR)
    checks = varlen_checks(dev, dtype, backends)
    print("eager varlen steps vs SDPA:", json.dumps(checks))
    print("\nSuggested TABLE for backend/specdec/layers/attention_choice.py "
          f"(made by bench/gpu/attention_table.py on {props.name}):")
    print(f'TABLE_SOURCE = "bench/gpu/attention_table.py on {props.name}, {time.strftime("%Y-%m-%d")}"')
    print("TABLE: dict[tuple[int, int, int, int], tuple[str, ...]] = {")
    print("\n".join(suggest_table(rows, backends)))
    print("}")
    print(f"total {time.time() - t0:.0f} s")
    path = Path(os.environ["OUT"]) / "attention_table.json" if os.environ.get("OUT") else a.out and Path(a.out)
    if path:
        meta = {"device": props.name, "sms": props.multi_processor_count, "l2_bytes": l2, "copy_bw_Bps": bw,
                "torch": torch.__version__, "backends": backends, "table_source": attention_choice.TABLE_SOURCE}
        path.write_text(json.dumps({"meta": meta, "rows": rows, "varlen_checks": checks}, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
