"""Synthetic-scale models: real architectures, random weights.

``synthetic:llama-8b`` and ``synthetic:llama-1b`` have the shapes of Llama-3.1-8B and
Llama-3.2-1B (no such weights exist here). They measure step times, CUDA-graph coverage and
the fraction of the bandwidth floor honestly; acceptance-based speedups are meaningless for
them. The folder holds config.json and a small byte-level tokenizer (token ids beyond it are
fine: benchmarks feed token ids).
"""
from __future__ import annotations

import json
from pathlib import Path

SHAPES = {
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, head_dim=64),
    # the shipped SmolLM2 draft's shape (drafts/smollm2-135m-draft: 4 of the target's 30 layers), full head
    "smollm2-135m-4l": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=9,
                            num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, head_dim=64),
    "llama-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                      num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    # Llama-3.1-70B's layers, 32 of its 80: ~57 GB in bfloat16, one GPU (a step costs ~0.4 of the 70B's)
    "llama-70b-32l": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=32, num_attention_heads=64,
                          num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    # CPU dry runs of GPU scripts (bench/gpu/*.sh with DRY=1)
    "llama-tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False, head_dim=16),
    "llama-tiny-draft": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             num_key_value_heads=1, vocab_size=512, tie_word_embeddings=False, head_dim=16),
}
ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def synthetic_folder(name: str, root: Path) -> Path:
    shape = name.split(":", 1)[1]
    if shape not in SHAPES:
        raise ValueError(f"unknown synthetic model {name!r}; known: {', '.join('synthetic:' + s for s in SHAPES)}")
    out = root / f"synthetic-{shape}"
    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(dict(head_dim=128), **SHAPES[shape], architectures=["LlamaForCausalLM"], model_type="llama",
               rms_norm_eps=1e-5, max_position_embeddings=131072, rope_parameters=ROPE, bos_token_id=128000,
               eos_token_id=128001, specdec_synthetic=True)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(out)
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    return out


def init_random_(model, seed: int = 0) -> None:
    """Fill every parameter with small normal noise (norms at 1), on its own device."""
    import torch
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
