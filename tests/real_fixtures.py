"""Helpers shared by the real-model tests: a tiny random Llama saved as a local Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from irunlearn.world.tokenizer import train_tokenizer

TOKENIZER_LINES = [
    f"Q: In which country is the city of {city}? A: {country}"
    for city, country in [("Lyon", "France"), ("Osaka", "Japan"), ("Venice", "Italy"), ("Leeuwarden", "Netherlands")]
] * 20


def save_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama (grouped-query attention, tied embeddings) and its BPE tokenizer in `folder`."""
    tokenizer = train_tokenizer(TOKENIZER_LINES, folder, vocab_size=300)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder
