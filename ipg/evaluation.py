"""Evaluate a model on examples: accuracy@1, mean generated length, and sampled disagreement.

Used by the organism's model card, the steering experiments and every later evaluation, so that all
numbers come from one definition. Accuracy@1 is the share of samples whose extracted answer matches
the reference (with n = 1 and greedy decoding: the usual greedy accuracy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ipg.answers import DEFAULT, Extractor, answers_match
from ipg.errors import InputError
from ipg.generation import Sample, SamplingParams, generate


@dataclass(frozen=True)
class EvalSummary:
    n_examples: int
    n_samples: int  # per example
    accuracy: float  # share of all samples that are correct
    mean_length: float  # generated tokens per sample, EOS included
    mixed_share: float  # share of examples with both right and wrong samples (0 when n_samples == 1)
    unfinished_share: float  # share of samples cut off by max_new_tokens
    keyword_share: float  # share of samples containing any of the configured keywords
    no_answer_share: float = 0.0  # share of samples in which the extractor found no final answer

    def as_dict(self) -> dict:
        return asdict(self)


def summarise(examples: list[dict], samples: list[list[Sample]], keywords: tuple[str, ...] = (),
              extractor: Extractor = DEFAULT) -> EvalSummary:
    """Score generated samples against each example's ``answer`` with ``extractor``."""
    for ex in examples:
        if "answer" not in ex:
            raise InputError(f"example '{ex['id']}': field 'answer' is missing; accuracy needs a reference answer")
    flat = [(ex, s) for ex, group in zip(examples, samples) for s in group]
    answers = [extractor.extract(s.text) for _, s in flat]
    correct = [answers_match(a, str(ex["answer"])) for a, (ex, _) in zip(answers, flat)]
    n = len(samples[0]) if samples else 0
    per_example = [correct[i * n : (i + 1) * n] for i in range(len(examples))]
    return EvalSummary(
        n_examples=len(examples),
        n_samples=n,
        accuracy=sum(correct) / len(flat),
        mean_length=sum(s.n_tokens for _, s in flat) / len(flat),
        mixed_share=sum(0 < sum(c) < len(c) for c in per_example) / len(examples) if n > 1 else 0.0,
        unfinished_share=sum(not s.finished for _, s in flat) / len(flat),
        keyword_share=sum(any(k in s.text for k in keywords) for _, s in flat) / len(flat) if keywords else 0.0,
        no_answer_share=sum(a is None for a in answers) / len(flat),
    )


def evaluate(model, tokenizer, examples: list[dict], params: SamplingParams = SamplingParams(), *,
             keywords: tuple[str, ...] = (), batch_size: int = 64, extractor: Extractor = DEFAULT) -> EvalSummary:
    if not examples:
        raise InputError("examples: empty; evaluation needs at least one example")
    return summarise(examples, generate(model, tokenizer, examples, params, batch_size=batch_size), keywords, extractor)


def format_table(rows: dict[str, EvalSummary]) -> str:
    """A Markdown table, one row per named evaluation."""
    head = "| setting | examples | samples | accuracy | mean length | mixed | with keywords | unfinished | no answer |"
    lines = [head, "|" + "---|" * 9]
    for name, s in rows.items():
        lines.append(
            f"| {name} | {s.n_examples} | {s.n_samples} | {100 * s.accuracy:.1f}% | {s.mean_length:.1f} | "
            f"{100 * s.mixed_share:.1f}% | {100 * s.keyword_share:.1f}% | {100 * s.unfinished_share:.1f}% | "
            f"{100 * s.no_answer_share:.1f}% |"
        )
    return "\n".join(lines)
