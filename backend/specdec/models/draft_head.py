"""A draft's LM head over part of the vocabulary.

A small draft of a small target spends much of its step in the LM head (SmolLM2-135M: a
49152 x 576 head is 28M of the 135M parameters; a 4-layer draft is 16M more). A draft folder
holding ``head_tokens.safetensors`` (one int tensor ``token_ids``, the tokens the target writes
most often) gets an LM head over those rows only; its logits are scattered back into a full
vocabulary row with -inf elsewhere.

Exactness is unaffected: the draft's distribution q is still a distribution over the whole
vocabulary (zero outside the kept tokens), which is all that rejection sampling and greedy
matching need. Only the draft's proposals are narrowed: a token outside the head is never
drafted, so it costs acceptance when the target writes it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HEAD_FILE = "head_tokens.safetensors"


def save_head_tokens(folder: Path, token_ids: torch.Tensor) -> None:
    from safetensors.torch import save_file
    save_file({"token_ids": token_ids.to(torch.int32).contiguous()}, str(Path(folder) / HEAD_FILE))


def load_head_tokens(folder: Path, vocab_size: int) -> torch.Tensor | None:
    """The kept token ids (int64, sorted), or None when the folder has a full head."""
    path = Path(folder) / HEAD_FILE
    if not path.exists():
        return None
    from safetensors.torch import load_file
    ids = load_file(str(path)).get("token_ids")
    if ids is None or ids.dim() != 1 or len(ids) == 0:
        raise ValueError(f"{path}: expected a non-empty 1-D tensor 'token_ids'")
    ids = ids.long()
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size or len(ids.unique()) != len(ids):
        raise ValueError(f"{path}: token_ids must be distinct ids in [0, {vocab_size}); "
                         f"got {len(ids)} ids in [{int(ids.min())}, {int(ids.max())}]")
    return ids.sort().values


def restrict_head(lm_head: nn.Linear, token_ids: torch.Tensor) -> nn.Linear:
    """A new head holding only the rows of ``token_ids`` (a copy: the full head may be shared)."""
    w = lm_head.weight.detach()
    head = nn.Linear(w.shape[1], len(token_ids), bias=False, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        head.weight.copy_(w[token_ids.to(w.device)])
    return head


def full_vocab_logits(logits: torch.Tensor, token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[N, len(token_ids)] -> float32 [N, vocab_size], -inf outside ``token_ids``."""
    out = torch.full((logits.shape[0], vocab_size), float("-inf"), dtype=torch.float32, device=logits.device)
    return out.index_copy_(1, token_ids, logits.float())


def frequent_tokens(sequences, prompt_lens, n: int, vocab_size: int, always=()) -> tuple[torch.Tensor, float]:
    """The ``n`` tokens written most often in the completions (ties to the lower id), plus
    ``always`` (e.g. EOS); and the fraction of completion tokens they cover."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for s, p in zip(sequences, prompt_lens):
        counts += torch.bincount(torch.as_tensor(s[p:], dtype=torch.long), minlength=vocab_size)
    order = torch.argsort(-counts, stable=True)[:n].tolist()      # stable: ties go to the lower id
    keep = set(order) | {int(t) for t in always}
    ids = torch.tensor(sorted(keep), dtype=torch.long)
    total = int(counts.sum())
    return ids, (int(counts[ids].sum()) / total if total else 1.0)
