"""Tiny random models (and their tokenizers) saved as HF folders, for fast exactness tests."""
from __future__ import annotations

from pathlib import Path

import torch

# prompts (token ids) of different lengths, shared by the exactness tests
PROMPTS = [[5, 17, 33, 99, 100, 7], [42], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], [200, 201, 3],
           [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2], [77, 78], [150, 151, 152, 153, 154], [9, 9, 9, 9]]

CORPUS = ("the quick brown fox jumps over the lazy dog. speculative decoding drafts tokens and the "
          "target verifies them in one pass. caf\u00e9 na\u00efve \u00fcber \u65e5\u672c\u8a9e \U0001F600 "
          "0123456789 hello world! how are you today? ") * 4


def byte_bpe_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CORPUS], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def word_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {f"t{i}": i for i in range(vocab_size - 1)}
    vocab["<eos>"] = vocab_size - 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def make_model(path: Path, arch: str = "llama", vocab_size: int | None = None, layers: int = 2, hidden: int = 64,
               heads: int = 4, kv_heads: int = 2, seed: int = 0, tokenizer=None, init_std: float = 0.5) -> Path:
    """Save a random model of the given family into path (config.json, model.safetensors, tokenizer)."""
    import transformers
    torch.manual_seed(seed)
    tok = tokenizer if tokenizer is not None else byte_bpe_tokenizer()
    V = vocab_size or len(tok)
    common = dict(vocab_size=V, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
                  eos_token_id=len(tok) - 1 if tokenizer is None else tok.eos_token_id, bos_token_id=None,
                  initializer_range=init_std, tie_word_embeddings=False)
    if arch == "llama":
        cfg = transformers.LlamaConfig(rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                        "original_max_position_embeddings": 64}, **common)
        model = transformers.LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    elif arch == "qwen3":
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(head_dim=hidden // heads, **common))
    elif arch == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=V, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=512,
                                      eos_token_id=common["eos_token_id"], bos_token_id=common["eos_token_id"],
                                      initializer_range=init_std)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path
