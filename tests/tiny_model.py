"""A tiny Hugging Face causal LM built on the spot (no download): random weights, a tokenizer trained on a few lines.

Callers import this only after ``pytest.importorskip("transformers")``: torch and transformers are optional.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_gpt2(path: Path, corpus: list[str], *, n_positions: int, n_layer: int) -> Path:
    """Save a GPT-2 of ``n_layer`` layers with random (seeded) weights and a byte-level BPE tokenizer in ``path``."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=32, n_layer=n_layer, n_head=2,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(path)
    return path
