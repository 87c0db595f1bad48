"""LLM utilities: presets, weight conversion, tokenizers, item text table."""
