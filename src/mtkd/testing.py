"""Helpers for tests and benchmark smoke runs (no network: the tokenizer is the bundled one)."""

from __future__ import annotations

from pathlib import Path


def save_tiny_encoder(folder: Path, max_positions: int = 512) -> Path:
    """Save a 2-layer, hidden-64 BERT with random weights (seed 0) and the default encoder's
    tokenizer as a Hugging Face folder: real tokenisation (tokenised caches are shared with the
    default encoder), a model small enough to train in milliseconds."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mtkd.model import resolve_encoder

    tok = AutoTokenizer.from_pretrained(resolve_encoder("default"), use_fast=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=max_positions)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)
