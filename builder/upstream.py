"""The authors' published files: where the package keeps their example outputs, and how their decoded prompts
read (the system turn, the user text, the options as shown, the answer format). Used by the importer and by the
authors' wording of the prompts (:mod:`builder.prompts.authors`); it imports nothing of the pipeline."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from builder.answers import parse_options

EXAMPLE_DIR = Path(__file__).parent / "data" / "upstream_example"
"""The authors' published example outputs (MIT), shipped with the package: ``import_upstream(EXAMPLE_DIR, run)``."""

_FORMAT_PHRASES = {  # the authors' answer-format sentences -> our answer formats
    "provide your answer as (X)": "paren",
    "provide your answer as X.": "dot",
    "answer with the full text of the correct option": "text",
}


def between(text: str, start: str, end: str) -> str | None:
    i = text.find(start)
    if i < 0:
        return None
    j = text.find(end, i + len(start))
    return text[i + len(start): j if j >= 0 else None]


def parse_qwen_prompt(prompt: str) -> dict[str, Any]:
    """System prompt, user text, shown options, option style and answer format of a decoded Qwen prompt."""
    system = between(prompt, "<|im_start|>system\n", "<|im_end|>")
    user = between(prompt, "<|im_start|>user\n", "<|im_end|>")
    if system is None or user is None:
        raise ValueError("no system or user turn in the prompt")
    user = re.sub(r"<\|vision_start\|>.*?<\|vision_end\|>", "", user, flags=re.S).strip()
    return {"system_prompt": system.strip(), "user_text": user, **_options_of(user, system)}


def _options_of(user_text: str, instructions: str) -> dict[str, Any]:
    head, sep, tail = user_text.partition("Select from the following choices.")
    if not sep:
        raise ValueError("no 'Select from the following choices.' line")
    formats = [f for phrase, f in _FORMAT_PHRASES.items() if phrase in instructions]
    if len(formats) != 1:
        raise ValueError("answer format sentence not recognised")
    return {"question": head.strip(), "options": parse_options(tail),
            "option_style": "paren" if tail.strip().startswith("(") else "dot", "answer_format": formats[0]}


__all__ = ["EXAMPLE_DIR", "between", "parse_qwen_prompt"]
