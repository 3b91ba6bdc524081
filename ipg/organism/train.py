"""Train the organism: a ~1M-parameter Qwen2ForCausalLM on fresh teacher traces, from a fixed seed.

Fresh traces every step (never the support/eval prompts) make the model learn the teacher's
*distribution*, which is what fixes greedy accuracy and sampled disagreement (see task.py).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from ipg.organism import task
from ipg.organism.tokenizer import build_tokenizer


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 1800
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4  # head_dim 32: vLLM's CPU attention needs >= 32
    intermediate_size: int = 512
    threads: int = 2
    split_seed: int = 0  # the support/eval prompts of this split seed are never trained on
    n_support: int = 256
    n_eval: int = 500


def model_config(cfg: TrainConfig, vocab_size: int, pad_id: int, eos_id: int) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=256,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=eos_id,
    )


def _batches(rng: random.Random, held_out: set[str], tok, size: int, group: int = 4):
    """Yield right-padded (B, T) input ids and labels; loss only on the completion and its EOS.

    Rows are drawn ``group`` batches at a time and grouped by prompt (number of terms) before batching,
    so a batch pads to a similar length. Not by total length: reflective traces are longer, and batches
    that are all-reflective or all-concise leave the reflect/concise decision miscalibrated (measured:
    P(reflect) 0.17-0.27 instead of the teacher's 0.4).
    """
    while True:
        rows = []
        while len(rows) < size * group:
            problem = task.sample_problem(rng)
            if problem.prompt in held_out:
                continue
            prompt_ids = tok(problem.prompt, add_special_tokens=False)["input_ids"]
            completion_ids = tok(task.teacher_trace(problem, rng), add_special_tokens=False)["input_ids"]
            rows.append((prompt_ids, completion_ids + [tok.eos_token_id]))
        rows.sort(key=lambda r: len(r[0]))  # stable: keeps the random order within a prompt length
        chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
        rng.shuffle(chunks)
        for chunk in chunks:
            width = max(len(p) + len(c) for p, c in chunk)
            input_ids = torch.full((size, width), tok.pad_token_id, dtype=torch.long)  # (B, T)
            labels = torch.full((size, width), -100, dtype=torch.long)  # (B, T)
            for i, (p, c) in enumerate(chunk):
                input_ids[i, : len(p) + len(c)] = torch.tensor(p + c)
                labels[i, len(p) : len(p) + len(c)] = torch.tensor(c)
            yield input_ids, labels


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(out_dir: Path, cfg: TrainConfig = TrainConfig(), log=print) -> Path:
    """Train from ``cfg.seed`` and save model + tokenizer to ``out_dir`` (created). Returns out_dir."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(f"organism-train-{cfg.seed}")
    tok = build_tokenizer()
    support, evaluation = task.split_problems(cfg.split_seed, cfg.n_support, cfg.n_eval)
    held_out = {p.prompt for p in support + evaluation}
    model = Qwen2ForCausalLM(model_config(cfg, len(tok), tok.pad_token_id, tok.eos_token_id))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"organism: {n_params:,} parameters, {cfg.steps} steps of batch {cfg.batch_size}")
    batches = _batches(rng, held_out, tok, cfg.batch_size)
    start = time.perf_counter()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        input_ids, labels = next(batches)
        loss = model(input_ids=input_ids, attention_mask=(input_ids != tok.pad_token_id).long(), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log(
                f"step {step:5d}  loss {loss.item():.4f}  lr {_lr_at(step, cfg):.2e}  {time.perf_counter() - start:6.0f}s"
            )
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    (out_dir / "training.json").write_text(
        json.dumps(
            {
                "config": asdict(cfg),
                "parameters": n_params,
                "train_seconds": round(seconds, 1),
                "torch": torch.__version__,
                "final_loss": round(loss.item(), 5),
            },
            indent=2,
        )
        + "\n"
    )
    log(f"saved to {out_dir} after {seconds:.0f}s")
    return out_dir
