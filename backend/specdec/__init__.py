"""specdec: speculative and speculative-speculative (SSD) decoding, served through Triton."""
from .config import SamplingParams
from .llm import LLM, RequestOutput, StreamChunk

__all__ = ["LLM", "SamplingParams", "RequestOutput", "StreamChunk"]
__version__ = "0.1.0"
