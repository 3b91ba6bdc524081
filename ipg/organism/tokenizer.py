"""Character-level tokenizer of the organism, built offline with the `tokenizers` library.

Every printable ASCII character and the newline is one token, so any text a user types (random-letter
strings for the control-vector baseline, reflection keywords, other answer formats) round-trips exactly;
other characters are dropped. Saved as ``tokenizer.json`` + ``tokenizer_config.json``.

It is a byte-level BPE with no merges, i.e. a ``Qwen2Tokenizer`` whose vocabulary is single characters:
transformers 5 loads every ``qwen2`` checkpoint with ``Qwen2Tokenizer`` whatever the tokenizer config
says, rebuilding its byte-level pipeline, and vLLM loads it the same way. A tokenizer with another
pipeline would be silently replaced (the byte-level regex then drops newlines).
"""

from __future__ import annotations

from transformers import Qwen2Tokenizer

PAD, EOS, UNK = "<|pad|>", "<|endoftext|>", "<|unk|>"
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]


def _byte_level(char: str) -> str:
    """GPT-2 byte-level symbol of an ASCII character: printable ones are themselves, others shift to
    U+0100 + their rank among the non-printable bytes (space -> 'Ġ', newline -> 'Ċ')."""
    code = ord(char)
    if 33 <= code <= 126:
        return char
    shifted = [b for b in range(256) if not (33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255)]
    return chr(256 + shifted.index(code))


def build_tokenizer() -> Qwen2Tokenizer:
    vocab = {PAD: 0, EOS: 1, UNK: 2}
    vocab.update({_byte_level(c): i for i, c in enumerate(CHARS, start=3)})
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=UNK,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",  # decoder-only generation pads on the left
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )
