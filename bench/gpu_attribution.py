"""Seconds per support prompt of torch-backend IPG attribution on a randomly initialised model with
Qwen2.5-1.5B's shapes (the paper reports 11.6 s per prompt for 1.5B models), or on a real model.

    python bench/gpu_attribution.py --device cuda            # bf16, N = 5, q = 10, 512 generated tokens
    python bench/gpu_attribution.py --device cuda --max-new-tokens 2048
    python bench/gpu_attribution.py --device cuda --model DIR   # a real checkpoint: the arithmetic questions
    python bench/gpu_attribution.py --device cpu --tiny      # a shrunken model: checks the script runs

bench/gpu_all.sh runs them all on a GPU machine.

With a random model the weights are random (no download), so every sample runs the full 512 tokens (EOS is never sampled
on purpose: the EOS id lies outside the model's vocabulary): the timing is the paper's worst case per
prompt. A random model has no accuracy; the reward is a text hash that varies between samples.
With ``--model`` (a local checkpoint directory or a catalog name), the prompts are the real-model run
config's arithmetic questions in the model's chat template, scored for accuracy, and samples stop at EOS.
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

DEFAULT_LAYERS = [20, 21, 22, 23, 24, 25, 26]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=DEFAULT_LAYERS,
        help="default: the paper's 20-26 (a real model: 3/4 up)",
    )
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--model", help="a real model (checkpoint directory or catalog name) instead of the random one")
    ap.add_argument("--out")
    args = ap.parse_args()
    from random_models import build, prompts, varied

    from ipg.attribution import attribute
    from ipg.files import atomic_write_json

    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[args.dtype]
    if args.model:
        from ipg.data import load_examples
        from ipg.models import load_model
        from ipg.signals import make_signal

        model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
        data = Path(__file__).resolve().parents[1] / "deploy" / "data" / "arithmetic" / "support.jsonl"
        examples = load_examples(data, ("prompt", "answer"), fields={"prompt": "question"}, reference="gsm8k")[
            : args.prompts
        ]
        signal, shape = make_signal("accuracy", formats=["hash", "boxed", "answer_is", "last_number"]), args.model
        n_layers = model.config.num_hidden_layers
        layers = [l_ for l_ in args.layers if l_ < n_layers] if args.layers != DEFAULT_LAYERS else [3 * n_layers // 4]
    else:
        model, tok = build("tiny" if args.tiny else "qwen2.5-1.5b", dtype, args.device)
        examples, signal, shape = prompts(args.prompts), varied, "tiny" if args.tiny else "Qwen2.5-1.5B"
        layers = [l_ for l_ in args.layers if l_ < model.config.num_hidden_layers] or [1]
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    res = attribute(
        model,
        tok,
        examples,
        signal=signal,
        method="ipg",
        layers=layers,
        n_samples=5,
        q=10,
        max_new_tokens=args.max_new_tokens,
        batch_tokens=args.batch_tokens,
        completeness=False,
        generation_batch_size=64,
    )
    seconds = time.perf_counter() - start
    out = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "dtype": args.dtype,
        "shape": shape,
        "max_new_tokens": args.max_new_tokens,
        "layers": layers,
        "prompts": args.prompts,
        "N": 5,
        "q": 10,
        "mean_generated_tokens": res.diagnostics["mean_generated_tokens"],
        "seconds_per_prompt": seconds / args.prompts,
        "timings": res.diagnostics["timings"],
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None,
    }
    print(json.dumps(out))
    if args.out:
        atomic_write_json(args.out, out)


if __name__ == "__main__":
    main()
