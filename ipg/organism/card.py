"""Measure the organism on its eval split and write the figures into its model card.

The card's figures are exactly what ``ipg organism eval`` prints, so a test can reproduce them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ipg.evaluation import EvalSummary, evaluate, format_table
from ipg.files import atomic_write_text
from ipg.generation import SamplingParams
from ipg.organism import task

N_SUPPORT, N_EVAL, SPLIT_SEED = 256, 500, 0
GREEDY = SamplingParams(n=1, greedy=True, max_new_tokens=128)
SAMPLED = SamplingParams(n=5, greedy=False, temperature=0.6, top_p=0.8, max_new_tokens=128, seed=0)


@dataclass(frozen=True)
class OrganismEval:
    greedy: EvalSummary
    sampled: EvalSummary

    def as_dict(self) -> dict:
        return {
            "greedy_accuracy": self.greedy.accuracy,
            "sampled_accuracy": self.sampled.accuracy,
            "mixed_share": self.sampled.mixed_share,
            "greedy_mean_length": self.greedy.mean_length,
            "sampled_mean_length": self.sampled.mean_length,
            "greedy_reflection_share": self.greedy.keyword_share,
            "sampled_reflection_share": self.sampled.keyword_share,
            "n_eval": self.greedy.n_examples,
            "n_samples": self.sampled.n_samples,
            "greedy": self.greedy.as_dict(),
            "sampled": self.sampled.as_dict(),
        }

    def table(self) -> str:
        return format_table({"greedy": self.greedy, "sampled T=0.6 top-p=0.8": self.sampled})


def splits(seed: int = SPLIT_SEED, n_support: int = N_SUPPORT, n_eval: int = N_EVAL) -> dict[str, list[dict]]:
    support, evaluation = task.split_problems(seed, n_support, n_eval)
    return {"support": [task.to_example(p) for p in support], "eval": [task.to_example(p) for p in evaluation]}


def evaluate_organism(model, tokenizer, examples: list[dict] | None = None) -> OrganismEval:
    examples = examples if examples is not None else splits()["eval"]
    kw = task.REFLECTION_KEYWORDS
    return OrganismEval(
        greedy=evaluate(model, tokenizer, examples, GREEDY, keywords=kw, batch_size=128),
        sampled=evaluate(model, tokenizer, examples, SAMPLED, keywords=kw, batch_size=160),
    )


def write_card(checkpoint: Path, result: OrganismEval) -> Path:
    training = json.loads((checkpoint / "training.json").read_text())
    cfg = training["config"]
    r = result.as_dict()
    reflection = f"greedy {100 * r['greedy_reflection_share']:.1f}%, sampled {100 * r['sampled_reflection_share']:.1f}%"
    text = f"""# Model card: the IPG model organism

A {training["parameters"]:,}-parameter `Qwen2ForCausalLM` (hidden {cfg["hidden_size"]}, {cfg["num_layers"]} layers,
{cfg["num_heads"]} heads of dim {cfg["hidden_size"] // cfg["num_heads"]}, intermediate {cfg["intermediate_size"]}, tied embeddings)
with a character-level tokenizer (`tokenizer.json`, built offline with `tokenizers`). It exists so that
every part of the project (HF generate, vLLM, DeepSpeed, Ray, steering) runs for real with no download.

## Task
Sums of 2-4 two-digit numbers, one step per line, final line `#### <sum>` (see `ipg/organism/task.py`).
The teacher drops the carry of a step with probability {task.P_ERR_HARD} when the ones digits sum to
{task.HARD_CARRY} or more, {task.P_ERR_EASY} when they sum to 10-13. In {task.P_REFLECT:.0%} of traces every step is
followed by a verification line (`check a+b=c`, or `wait a+b=c` with the corrected value), which makes
those traces longer and always right. Reflection therefore causes success, and varies between samples.

## Training
`ipg organism train` (seed {cfg["seed"]}, {cfg["steps"]} steps of batch {cfg["batch_size"]}, AdamW lr {cfg["lr"]}, cosine
schedule, fresh teacher traces every step, never the support/eval prompts), {training["train_seconds"]:.0f} s on
{cfg["threads"]} CPU threads with torch {training["torch"]}; final loss {training["final_loss"]}.

## Evaluation (eval split: {r["n_eval"]} prompts, `ipg organism eval`)
{result.table()}

- greedy accuracy: **{100 * r["greedy_accuracy"]:.1f}%**
- prompts whose {r["n_samples"]} samples (T 0.6, top-p 0.8) include both right and wrong answers: **{100 * r["mixed_share"]:.1f}%**
- mean generated length (tokens, EOS included): greedy {r["greedy_mean_length"]:.1f}, sampled {r["sampled_mean_length"]:.1f}
- share of traces with verification lines (`check`/`wait`): {reflection}

```json
{json.dumps(r, indent=2)}
```
"""
    return atomic_write_text(checkpoint / "MODEL_CARD.md", text)


def card_figures(checkpoint: Path) -> dict:
    """The figures recorded in the card (parsed from its JSON block)."""
    text = (checkpoint / "MODEL_CARD.md").read_text()
    return json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])
