"""Randomly initialised Qwen2 models for benchmarks (no download): shapes by name, a word-level
tokenizer whose EOS id lies outside the model's vocabulary (never sampled, so every sample runs the
full length: a benchmark's worst case), prompts, and a reward that varies between samples."""

from __future__ import annotations

import torch

_DIMS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)
_ROWS = {  # name: (hidden, intermediate, layers, heads, key/value heads, vocabulary)
    "tiny": (64, 128, 4, 2, 1, 512),
    "24x512": (512, 2048, 24, 8, 2, 8192),
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152),  # SmolLM2-135M-Instruct's shape
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 151936),
}
SHAPES = {name: dict(zip(_DIMS, row)) for name, row in _ROWS.items()}


def build(shape: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(model, tokenizer) with ``SHAPES[shape]``, seed 0, eval mode, no parameter gradients."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dims = dict(SHAPES[shape])
    vocab = dims["vocab_size"]
    cfg = Qwen2Config(
        max_position_embeddings=16384,
        tie_word_embeddings=shape != "tiny",
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        **dims,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model, tokenizer(vocab)


def tokenizer(vocab: int):
    """Words t0 .. t{vocab - 1}, with ids 2 and 3 named <pad> and <unk>, and EOS <eos> one past the model's
    vocabulary. The special tokens' names are no prefix of a word's: decoding drops them by name."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab) if i not in (2, 3)} | {"<pad>": 2, "<unk>": 3, "<eos>": vocab}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    out.padding_side = "left"
    return out


def prompts(n: int, length: int = 48) -> list[dict]:
    return [{"id": f"p{i}", "prompt": " ".join(f"t{4 + (7 * i + j) % 400}" for j in range(length))} for i in range(n)]


def varied(completion: str, example: dict) -> float:
    """A reward that differs between samples (a constant one gives zero advantages and no gradient work)."""
    return float(sum(map(len, completion.split())) % 97)
