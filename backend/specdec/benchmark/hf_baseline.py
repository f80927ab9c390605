"""HF transformers on the same device and prompts: plain `generate`, and assisted generation
with the same draft (a model folder, the target's first N layers for `self:N`, prompt lookup
for `ngram`). Batch 1, greedy or sampled like the bench, fixed output length."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch


def _hf_model(folder, device, dtype, num_layers=None):
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(folder)
    if num_layers is not None:
        cfg = copy.deepcopy(cfg)
        cfg.num_hidden_layers = num_layers
    if any(Path(folder).glob("*.safetensors")) or any(Path(folder).glob("*.bin")):
        model = AutoModelForCausalLM.from_pretrained(folder, config=cfg, dtype=dtype)
    else:        # a synthetic shape (models/synthetic.py: no weight files): HF's own random init of the same
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)   # shape; its speed, not its text, is compared
    model = model.to(device).eval()
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or 0
    return model


def run_hf(target_folder, prompt_ids: list[list[int]], output_len: int, device, dtype, temperature: float,
           draft: str | None = None, draft_folder=None, k: int = 4) -> dict:
    """Returns tok/s of plain generate, and of assisted generation when a draft is given."""
    target = _hf_model(target_folder, device, dtype)
    assistant, lookup = None, None
    if draft == "ngram":
        lookup = k
    elif draft is not None and draft.startswith("self:"):
        assistant = _hf_model(target_folder, device, dtype, num_layers=int(draft.split(":")[1]))
    elif draft_folder is not None:
        assistant = _hf_model(draft_folder, device, dtype)
    kw = dict(max_new_tokens=output_len, min_new_tokens=output_len, do_sample=temperature > 0)
    if temperature > 0:
        kw["temperature"] = temperature
    results = {}
    for name, extra in (("hf_generate", {}),
                        ("hf_assisted", {"assistant_model": assistant, "num_assistant_tokens": k} if assistant is not None
                         else {"prompt_lookup_num_tokens": lookup} if lookup else None)):
        if extra is None:
            continue
        ids = torch.tensor([prompt_ids[0]], device=device)
        target.generate(ids, **dict(kw, max_new_tokens=4, min_new_tokens=4), **extra)   # warm-up
        tokens, t0 = 0, time.perf_counter()
        outputs = []
        for p in prompt_ids:
            out = target.generate(torch.tensor([p], device=device), **kw, **extra)
            outputs.append(out[0, len(p):].tolist())
            tokens += out.shape[1] - len(p)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        results[name] = {"tok_s": tokens / (time.perf_counter() - t0), "tokens": tokens, "outputs": outputs}
    return results
