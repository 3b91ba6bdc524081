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

# A trace loops when one run of LOOP_TOKENS generated tokens occurs LOOP_REPEATS times or more: the model repeats
# itself instead of reasoning on ("formula-theorem-theorem-theorem-..."). Longer traces made of loops are breakage.
LOOP_TOKENS = 8
LOOP_REPEATS = 3


def loops(token_ids: list[int], n: int = LOOP_TOKENS, repeats: int = LOOP_REPEATS) -> bool:
    """Whether some run of ``n`` tokens occurs ``repeats`` times or more in ``token_ids`` (overlaps count)."""
    seen: dict[tuple[int, ...], int] = {}
    for i in range(len(token_ids) - n + 1):
        run = tuple(token_ids[i : i + n])
        seen[run] = seen.get(run, 0) + 1
        if seen[run] >= repeats:
            return True
    return False


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
    loop_share: float = 0.0  # share of samples that loop (``loops``)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ItemScore:
    """One sample of one example, scored: what intervals and paired comparisons are computed from."""

    example_id: str
    sample_index: int
    correct: bool
    answered: bool  # the extractor found a final answer (a damage measure that does not need accuracy)
    length: int  # generated tokens, EOS included
    finished: bool
    keyword: bool  # contains any of the configured keywords
    looped: bool = False  # repeats one run of LOOP_TOKENS tokens LOOP_REPEATS times or more (``loops``)


def score_items(
    examples: list[dict], samples: list[list[Sample]], keywords: tuple[str, ...] = (), extractor: Extractor = DEFAULT
) -> list[ItemScore]:
    """Score every sample against its example's ``answer`` with ``extractor``."""
    for ex in examples:
        if "answer" not in ex:
            raise InputError(f"example '{ex['id']}': field 'answer' is missing; accuracy needs a reference answer")
    items = []
    for ex, group in zip(examples, samples):
        for s in group:
            answer = extractor.extract(s.text)
            items.append(
                ItemScore(
                    str(ex["id"]),
                    s.sample_index,
                    answers_match(answer, str(ex["answer"])),
                    answer is not None,
                    s.n_tokens,
                    s.finished,
                    any(k in s.text for k in keywords),
                    loops(s.completion_ids),
                )
            )
    return items


def summary_of(items: list[ItemScore], n_examples: int) -> EvalSummary:
    n = len(items) // n_examples if n_examples else 0
    groups: dict[str, list[bool]] = {}
    for it in items:
        groups.setdefault(it.example_id, []).append(it.correct)
    total = len(items)
    return EvalSummary(
        n_examples=n_examples,
        n_samples=n,
        accuracy=sum(it.correct for it in items) / total,
        mean_length=sum(it.length for it in items) / total,
        mixed_share=sum(0 < sum(c) < len(c) for c in groups.values()) / n_examples if n > 1 else 0.0,
        unfinished_share=sum(not it.finished for it in items) / total,
        keyword_share=sum(it.keyword for it in items) / total,
        no_answer_share=sum(not it.answered for it in items) / total,
        loop_share=sum(it.looped for it in items) / total,
    )


def summarise(
    examples: list[dict], samples: list[list[Sample]], keywords: tuple[str, ...] = (), extractor: Extractor = DEFAULT
) -> EvalSummary:
    """Score generated samples against each example's ``answer`` with ``extractor``."""
    return summary_of(score_items(examples, samples, keywords, extractor), len(examples))


def evaluate(
    model,
    tokenizer,
    examples: list[dict],
    params: SamplingParams | None = None,
    *,
    keywords: tuple[str, ...] = (),
    batch_size: int = 64,
    extractor: Extractor = DEFAULT,
) -> EvalSummary:
    if not examples:
        raise InputError("examples: empty; evaluation needs at least one example")
    params = params or SamplingParams()  # greedy, the sampler's defaults
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
