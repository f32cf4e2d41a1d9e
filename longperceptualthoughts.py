"""LongPerceptualThoughts dataset builder (filled in by the dataset work)."""
