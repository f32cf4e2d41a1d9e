"""The method's fixed numbers and word lists, in one place (docs/method.md explains each).

Everything a user may change per run is a setting in :mod:`builder.settings`; its defaults come from here.
"""

from __future__ import annotations

DEFAULT_SEED = 42

MAX_PIXELS = 512 * 512
"""Cap on an image's area (width × height) wherever a model sees an image: stage 2 and evaluation."""

BAD_WORDS = (
    "description", "descriptions", "describe", "describes", "described",
    "mention", "mentions", "mentioned", "misread", "text",
    "state", "states", "stated", "say", "says", "said",
    "internal", "mental", "visualize", "visualization",
    "the image described", "user's", "detailed image",
)
"""Words that give away that the reasoning model read a description instead of looking (stage 3): blocked at
generation time and, as whole words, filtered from the added text (docs/method.md, defect 2)."""

CUES = ("Wait,", "Hmm,", "Alternatively,", "Let's double-check the details.")
"""Cognitive cues appended after the simple thought for the reasoning model to continue (stage 3)."""

__all__ = ["BAD_WORDS", "CUES", "DEFAULT_SEED", "MAX_PIXELS"]
