"""Loading checkpoints: HF folders (safetensors), GGUF (through the registry), tokenizers.

``load_model`` picks the native Llama-family implementation when the architecture has one
(``impl="auto"``) and otherwise the generic ``AutoModelForCausalLM`` path. With ``tp`` (a rank of
a tensor-parallel group) each rank reads only its slices of the safetensors (:func:`shard_slice`).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..layers.rotary import RotaryEmbedding, inverse_frequencies
from ..layers.tensor_parallel import TPGroup, vocab_shard
from .llama import NATIVE_ARCHITECTURES, LlamaArch, LlamaForCausalLM, architecture_of
from .registry import resolve
from .draft_head import HEAD_FILE, load_head_tokens, restrict_head
from .shared_weights import load_shared

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(slots=True)
class LoadedModel:
    """A model ready for a runner: ``kind`` is "native" or "hf"."""

    kind: str
    module: torch.nn.Module
    hf_config: object
    folder: Path
    arch: LlamaArch | None = None
    extra_folders: tuple = ()

    @property
    def vocab_size(self) -> int:
        return self.hf_config.vocab_size


def load_hf_config(folder: Path):
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(folder)
    except Exception as e:  # transformers raises several types for unknown model_type
        raise ValueError(f"model folder {folder}: config.json could not be read by transformers: {e}") from e


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as e:
        raise ValueError(f"model folder {folder}: expected tokenizer files (tokenizer.json or tokenizer.model): {e}") from e


def has_tokenizer(folder: Path) -> bool:
    return any((folder / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json"))


def eos_token_ids(folder: Path, hf_config, tokenizer) -> set[int]:
    """EOS ids from generation_config.json, config.json and the tokenizer (union)."""
    ids: set[int] = set()

    def add(v):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)

    gen = folder / "generation_config.json"
    if gen.exists():
        add(json.loads(gen.read_text()).get("eos_token_id"))
    add(getattr(hf_config, "eos_token_id", None))
    if tokenizer is not None and not ids:
        add(tokenizer.eos_token_id)
    return ids


def load_model(name: str, device: torch.device, dtype: str, impl: str = "auto",
               max_positions: int | None = None, tp: TPGroup | None = None) -> LoadedModel:
    """tp: this process's rank of a tensor-parallel group (native models only); it loads its shard."""
    folder = resolve(name)
    cfg = load_hf_config(folder)
    arch_name = architecture_of(cfg)
    if impl == "native" or (impl == "auto" and arch_name in NATIVE_ARCHITECTURES):
        a = LlamaArch.from_hf(cfg)
        module = _load_native(folder, cfg, a, device, DTYPES[dtype], max_positions or a.max_position_embeddings, tp)
        return LoadedModel("native", module, cfg, folder, arch=a)
    if tp is not None:
        raise ValueError(f"tensor parallelism needs a native Llama-family target ({NATIVE_ARCHITECTURES}); "
                         f"{folder} is {arch_name!r} (impl={impl!r})")
    return LoadedModel("hf", _load_generic(folder, cfg, device, DTYPES[dtype]), cfg, folder)


def _load_generic(folder: Path, cfg, device, dtype):
    from transformers import AutoModelForCausalLM
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except Exception as e:
        arch = architecture_of(cfg)
        raise ValueError(f"model folder {folder}: architecture {arch!r} could not be loaded as a causal LM: {e}") from e
    shared = load_shared(folder)                          # a distilled draft borrows its target's embeddings
    if shared:
        model.load_state_dict({k: v.to(dtype) for k, v in shared.items()}, strict=False)
        model.tie_weights()
    return model.to(device).eval()


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"model folder {folder}: expected *.safetensors weight files")
    return files


def _load_native(folder: Path, cfg, a: LlamaArch, device, dtype, max_positions: int,
                 tp: TPGroup | None = None) -> LlamaForCausalLM:
    from safetensors import safe_open

    with torch.device("meta"):
        model = LlamaForCausalLM(a, cfg, max_positions, tp)
    model = model.to(dtype=dtype).to_empty(device=device)     # allocate once, in the final dtype
    model.set_rotary(RotaryEmbedding(*inverse_frequencies(cfg), max_positions).to(device))
    if getattr(cfg, "specdec_synthetic", False):        # random weights in a real shape (synthetic.py)
        from .synthetic import init_random_
        if a.tie_word_embeddings:
            model.lm_head.weight = model.embed.weight
        init_random_(model, seed=0 if tp is None else tp.rank)
        return model.to(dtype=dtype).eval()
    params = dict(model.named_parameters())
    la = model.arch                                     # this rank's shapes (a itself without tp)
    h, kvh, d, inter = la.num_heads, la.num_kv_heads, la.head_dim, la.intermediate_size
    qkv_rows = {"q_proj": (0, h * d), "k_proj": (h * d, kvh * d), "v_proj": ((h + kvh) * d, kvh * d)}
    loaded: set[str] = set()

    def put(name: str, tensor: torch.Tensor, rows: tuple[int, int] | None = None):
        p = params[name]
        src = tensor.to(dtype=torch.float32)
        with torch.no_grad():
            if rows is None:
                if p.shape != src.shape:
                    raise ValueError(f"{folder}: weight {name} has shape {tuple(src.shape)}, expected {tuple(p.shape)}")
                p.copy_(src.to(p.dtype))
            else:
                p[rows[0]: rows[0] + rows[1]].copy_(src.to(p.dtype))
        loaded.add(name if rows is None else f"{name}[{rows[0]}]")

    for f in _weight_files(folder):
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            for key in sf.keys():
                target = _map_key(key, qkv_rows, inter)
                if target is None:
                    continue
                name, rows = target
                if name not in params:
                    continue
                if tp is None:
                    put(name, sf.get_tensor(key), rows)
                else:                                   # read only this rank's slice
                    put(name, _read_shard(sf.get_slice(key), key, a, tp), rows)
    for key, tensor in load_shared(folder).items():     # a distilled draft borrows its target's embeddings
        name, rows = _map_key(key, qkv_rows, inter)
        put(name, tensor if tp is None else _read_shard(tensor, key, a, tp), rows)
    if "lm_head.weight" not in loaded:
        model.lm_head.weight = model.embed.weight       # tied embeddings
    missing = [n for n in params if n != "lm_head.weight" and not any(x == n or x.startswith(n + "[") for x in loaded)]
    if missing:
        raise ValueError(f"model folder {folder}: weights missing for {missing[:5]}{'...' if len(missing) > 5 else ''}")
    head_ids = load_head_tokens(folder, a.vocab_size)
    if head_ids is not None:                            # a draft whose LM head covers part of the vocabulary
        if tp is not None:
            raise ValueError(f"{folder}: a partial-vocabulary LM head ({HEAD_FILE}) is for drafts; "
                             f"it cannot be tensor-parallel")
        model.lm_head = restrict_head(model.lm_head, head_ids)
        model.head_ids = head_ids.to(device)
    return model.to(dtype=dtype).eval()


def shard_slice(key: str, a: LlamaArch, rank: int, tp: int) -> tuple[int, int, int] | None:
    """(dim, start, stop) of HF tensor ``key`` that ``rank`` of ``tp`` holds; None = replicated.

    Column-parallel (output rows): q/k/v, gate/up (weights and biases). Row-parallel (input
    columns): o_proj, down. Vocabulary rows: embedding and LM head (layers/tensor_parallel.py)."""
    if key in ("model.embed_tokens.weight", "lm_head.weight"):
        start, n, _ = vocab_shard(a.vocab_size, rank, tp)
        return 0, start, start + n
    if not key.startswith("model.layers."):
        return None
    hd, inter = a.num_heads // tp * a.head_dim, a.intermediate_size // tp
    kv0, nkv = a.kv_head_start(rank, tp), max(1, a.num_kv_heads // tp)
    return {"q_proj": (0, rank * hd, (rank + 1) * hd),
            "k_proj": (0, kv0 * a.head_dim, (kv0 + nkv) * a.head_dim),
            "v_proj": (0, kv0 * a.head_dim, (kv0 + nkv) * a.head_dim),
            "gate_proj": (0, rank * inter, (rank + 1) * inter),
            "up_proj": (0, rank * inter, (rank + 1) * inter),
            "o_proj": (1, rank * hd, (rank + 1) * hd),
            "down_proj": (1, rank * inter, (rank + 1) * inter)}.get(key.split(".")[-2])


def _read_shard(src, key: str, a: LlamaArch, tp: TPGroup) -> torch.Tensor:
    """This rank's slice of a tensor or of a safetensors slice (which reads only those bytes);
    the last vocabulary shard is zero-padded to the shard's row count."""
    sl = shard_slice(key, a, tp.rank, tp.size)
    if sl is None:
        return src[:]
    dim, start, stop = sl
    t = src[start:stop] if dim == 0 else src[:, start:stop]
    if key in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = vocab_shard(a.vocab_size, tp.rank, tp.size)[2]
        if t.shape[0] < rows:
            t = torch.cat([t, t.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))])
    return t


def _map_key(key: str, qkv_rows: dict, inter: int):
    """HF checkpoint name -> (our parameter name, row slice or None)."""
    if key == "model.embed_tokens.weight":
        return "embed.weight", None
    if key == "model.norm.weight":
        return "norm.weight", None
    if key == "lm_head.weight":
        return "lm_head.weight", None
    if not key.startswith("model.layers."):
        return None
    parts = key.split(".")
    i, rest = parts[2], ".".join(parts[3:])
    pre = f"layers.{i}."
    if rest.startswith("self_attn.") and rest.split(".")[1] in qkv_rows:
        proj, kind = rest.split(".")[1], rest.split(".")[2]
        return pre + f"attn.qkv.{kind}", qkv_rows[proj]
    simple = {
        "self_attn.o_proj.weight": "attn.o_proj.weight",
        "self_attn.q_norm.weight": "attn.q_norm.weight",
        "self_attn.k_norm.weight": "attn.k_norm.weight",
        "mlp.down_proj.weight": "mlp.down.weight",
        "input_layernorm.weight": "input_norm.weight",
        "post_attention_layernorm.weight": "post_norm.weight",
    }
    if rest in simple:
        return pre + simple[rest], None
    if rest == "mlp.gate_proj.weight":
        return pre + "mlp.gate_up.weight", (0, inter)
    if rest == "mlp.up_proj.weight":
        return pre + "mlp.gate_up.weight", (inter, inter)
    return None


def context_limit(hf_config) -> int:
    """The context length a checkpoint supports (Llama family: max_position_embeddings; GPT-2: n_positions)."""
    return getattr(hf_config, "max_position_embeddings", None) or getattr(hf_config, "n_positions", 2048)


def encode_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    """Token ids of a text prompt: plain, or wrapped as one user turn of the tokenizer's chat template
    (with the generation prompt). The engine's API and Triton's preprocessing both encode here."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("apply_chat_template=True is not supported by this model: its tokenizer has no "
                             "chat template; allowed [False]")
        return list(tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                                  add_generation_prompt=True, return_dict=False))
    return list(tokenizer.encode(text))
