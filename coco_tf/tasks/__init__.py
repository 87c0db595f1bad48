"""Losses for retrieval training (TFRS tasks and full softmax)."""
