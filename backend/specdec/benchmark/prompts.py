"""Built-in benchmark prompts (chat instructions plus the first two GSM8K train questions), or JSONL."""
from __future__ import annotations

import json
from pathlib import Path

GSM8K = [   # GSM8K (Cobbe et al. 2021), train split, first two questions
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?",
]

CHAT = [
    "Introduce yourself in two sentences.",
    "Explain how a hash map works to a new programmer.",
    "Write a short poem about the sea at night.",
    "What are three good habits for writing maintainable code?",
    "Summarise the plot of a heist movie you would like to see.",
    "Give me a recipe for a quick vegetable soup.",
    "Why is the sky blue? Answer simply.",
    "List five countries in South America and their capitals.",
    "Write a Python function that checks whether a string is a palindrome.",
    "What is the difference between weather and climate?",
    "Describe a busy train station in the morning.",
    "How do vaccines train the immune system?",
    "Suggest a name for a bakery and explain it.",
    "Translate 'good morning, how are you?' into French and Spanish.",
]

BUILTIN = GSM8K + CHAT


def load_prompts(spec: str | None, n: int) -> list[str]:
    """spec None/'builtin' -> the built-in set (cycled to n); else a JSONL file with a 'text' (or 'prompt') field."""
    if spec in (None, "builtin"):
        base = BUILTIN
    elif spec == "gsm8k":
        base = GSM8K
    else:
        rows = [json.loads(line) for line in Path(spec).read_text().splitlines() if line.strip()]
        base = [r.get("text") or r.get("prompt") for r in rows]
        if not base or any(not isinstance(t, str) for t in base):
            raise ValueError(f"{spec}: expected JSON lines with a 'text' or 'prompt' string field")
    return [base[i % len(base)] for i in range(n)]
