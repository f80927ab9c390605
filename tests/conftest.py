"""Shared fixtures: tiny random HF folders (built once per session) and small engines."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton kernels (layers/triton_attention.py) run through Triton's interpreter on machines without a
# GPU; triton reads this when a kernel is decorated, so it must be set before specdec is imported.
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
logging.getLogger("transformers").setLevel(logging.ERROR)

from tiny import make_model, word_tokenizer  # noqa: E402  (test data such as PROMPTS: import from tiny)


@pytest.fixture(scope="module")
def one_thread():
    """For modules that run a second process (draft worker, TP ranks) on the 2 CI cores: one torch
    thread each, or both processes' thread pools fight over the cores (10x slower was seen)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_llama(model_dir) -> Path:
    """Target: 2-layer random Llama with llama3 RoPE scaling and a byte-level BPE tokenizer."""
    return make_model(model_dir / "llama", "llama", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_draft(model_dir) -> Path:
    """An unrelated random Llama with the same tokenizer (acceptance near 0)."""
    return make_model(model_dir / "llama_draft", "llama", layers=1, seed=1)


@pytest.fixture(scope="session")
def tiny_qwen2(model_dir) -> Path:
    return make_model(model_dir / "qwen2", "qwen2", seed=2)


@pytest.fixture(scope="session")
def tiny_qwen3(model_dir) -> Path:
    return make_model(model_dir / "qwen3", "qwen3", seed=3)


@pytest.fixture(scope="session")
def tiny_gpt2(model_dir) -> Path:
    return make_model(model_dir / "gpt2", "gpt2", seed=4)


@pytest.fixture(scope="session")
def small_vocab_pair(model_dir) -> tuple[Path, Path]:
    """Target and a differently distributed draft over a 12-token vocabulary (for chi-square tests)."""
    tok = word_tokenizer(12)
    t = make_model(model_dir / "sv_target", "llama", layers=2, hidden=32, heads=2, kv_heads=1, seed=10,
                   tokenizer=tok, init_std=0.3)
    d = make_model(model_dir / "sv_draft", "llama", layers=1, hidden=32, heads=2, kv_heads=1, seed=11,
                   tokenizer=tok, init_std=0.3)
    return t, d




@pytest.fixture
def moved(monkeypatch):
    """Counts the speculative rounds launched from the device's outcome of the round before (engine/spec_overlap.py)."""
    from specdec.engine import spec_overlap
    n = [0]
    launch = spec_overlap.SpecPipeline._launch

    def counting(self, drafter, seqs, k, prev):
        n[0] += prev is not None
        return launch(self, drafter, seqs, k, prev)

    monkeypatch.setattr(spec_overlap.SpecPipeline, "_launch", counting)
    return n
