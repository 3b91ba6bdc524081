"""Seconds per support prompt of torch-backend IPG attribution on a randomly initialised model with
Qwen2.5-1.5B's shapes (the paper reports 11.6 s per prompt for 1.5B models).

    python bench/gpu_attribution.py --device cuda            # bf16, N = 5, q = 10, 512 generated tokens
    python bench/gpu_attribution.py --device cpu --tiny      # a shrunken model: checks the script runs

The weights are random (no download), so every sample runs the full 512 tokens (EOS is never sampled
on purpose: the EOS id lies outside the model's vocabulary): the timing is the paper's worst case per
prompt. A random model has no accuracy; the reward is a text hash that varies between samples.
Prints one JSON line; ``--out`` writes it too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def build(tiny: bool, dtype: torch.dtype, device: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = 512 if tiny else 151936
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1) if tiny \
        else dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2)
    cfg = Qwen2Config(vocab_size=vocab, max_position_embeddings=4096, tie_word_embeddings=not tiny,
                      bos_token_id=0, eos_token_id=1, pad_token_id=2, **shape)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    # EOS is an id outside the model's vocabulary: never sampled, so every sample runs the full length
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab + 1)}, unk_token="t3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=f"t{vocab}", pad_token="t2", unk_token="t3")
    tokenizer.padding_side = "left"
    return model, tokenizer


def _varied(completion: str, example: dict) -> float:
    """A reward that differs between samples (a constant one gives zero advantages and no gradient work)."""
    return float(sum(map(len, completion.split())) % 97)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--layers", type=int, nargs="+", default=[20, 21, 22, 23, 24, 25, 26])
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    from ipg.attribution import attribute

    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[args.dtype]
    model, tok = build(args.tiny, dtype, args.device)
    layers = [l_ for l_ in args.layers if l_ < model.config.num_hidden_layers] or [1]
    examples = [{"id": f"p{i}", "prompt": " ".join(f"t{4 + (7 * i + j) % 400}" for j in range(48))} for i in range(args.prompts)]
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    res = attribute(model, tok, examples, signal=_varied, layers=layers, n_samples=5, q=10, max_new_tokens=args.max_new_tokens,
                    batch_tokens=args.batch_tokens, completeness=False, generation_batch_size=64)
    seconds = time.perf_counter() - start
    out = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu", "dtype": args.dtype,
           "shape": "tiny" if args.tiny else "Qwen2.5-1.5B", "layers": layers, "prompts": args.prompts, "N": 5, "q": 10,
           "mean_generated_tokens": res.diagnostics["mean_generated_tokens"], "seconds_per_prompt": seconds / args.prompts,
           "timings": res.diagnostics["timings"],
           "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None}
    print(json.dumps(out))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
