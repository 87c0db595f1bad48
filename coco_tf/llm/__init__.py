"""LLM: the Qwen3-style decoder and its layers, LoRA, presets, weight conversion, tokenizers,
prompt texts, item text table, the frozen-decoder assets and decoder pretraining.

``qwen_decoder.QwenBackbone`` is the whole decoder (the class keeps keras-nlp's name,
``Qwen3Backbone``, for parity; in this package "backbone" otherwise means the query tower).
A new decoder goes here: its layers one per file, its model next to ``qwen_decoder.py``.
"""
