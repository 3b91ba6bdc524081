"""The organism's task: multi-step addition with a fallible first pass and optional reflection.

A prompt is 2-4 two-digit numbers joined by '+' and a newline, e.g. ``"47+48+17\\n"``. The teacher
writes one step per line, adding the next term to the running sum. Steps whose ones digits carry are
stated wrong (carry dropped: the result is 10 too small) with a probability that depends on how hard the
carry is. In *reflective* traces every step is followed by a line that recomputes it: ``check a+b=c``
when the step was right, ``wait a+b=c`` when it was wrong (the recomputed value is carried forward). The
final line is ``#### <running sum>``.

Why this shape: a model trained to convergence learns the teacher's distribution, so the quality
targets follow from the teacher's numbers rather than from a lucky stopping step (in early trials
accuracy on a deterministic task jumped from 17% to 99% within 70 steps).
Greedy decoding takes the most likely branch at each choice: no reflection (p 0.6) and, at hard carries,
the dropped carry (p 0.65), so greedy fails exactly on prompts with a hard carry. Sampling at T 0.6 /
top-p 0.8 keeps both branches of every choice, so most groups of 5 samples mix right and wrong answers,
and reflection (longer traces, 'wait' lines) is what makes a sample right: the mechanism IPG should find.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

MIN_TERMS, MAX_TERMS = 2, 4
MIN_TERM, MAX_TERM = 10, 99
P_REFLECT = 0.4  # share of teacher traces that verify every step
P_ERR_HARD = 0.65  # carry with ones digits summing to >= 14: greedy follows the error
P_ERR_EASY = 0.35  # carry with ones digits summing to 10..13: greedy is right, samples sometimes not
HARD_CARRY = 14
REFLECTION_KEYWORDS = ("wait", "check")


@dataclass(frozen=True)
class Problem:
    """One prompt of the task: the terms to add."""

    terms: tuple[int, ...]

    @property
    def prompt(self) -> str:
        return "+".join(str(t) for t in self.terms) + "\n"

    @property
    def answer(self) -> int:
        return sum(self.terms)

    @property
    def id(self) -> str:
        """Content-derived id: stable across runs, machines and split sizes."""
        return "add-" + hashlib.sha1(self.prompt.encode()).hexdigest()[:12]


def carry_error_probability(running: int, term: int) -> float:
    """Probability that the teacher drops the carry when adding ``term`` to ``running``."""
    ones = running % 10 + term % 10
    if ones >= HARD_CARRY:
        return P_ERR_HARD
    if ones >= 10:
        return P_ERR_EASY
    return 0.0


def sample_problem(rng: random.Random) -> Problem:
    k = rng.randint(MIN_TERMS, MAX_TERMS)
    return Problem(tuple(rng.randint(MIN_TERM, MAX_TERM) for _ in range(k)))


def teacher_trace(problem: Problem, rng: random.Random) -> str:
    """Sample one chain of thought for ``problem`` from the teacher distribution (ends with a newline)."""
    reflect = rng.random() < P_REFLECT
    running = problem.terms[0]
    lines = []
    for term in problem.terms[1:]:
        correct = running + term
        stated = correct - 10 if rng.random() < carry_error_probability(running, term) else correct
        lines.append(f"{running}+{term}={stated}")
        if reflect:
            lines.append(f"{'check' if stated == correct else 'wait'} {running}+{term}={correct}")
            running = correct
        else:
            running = stated
    lines.append(f"#### {running}")
    return "\n".join(lines) + "\n"


def split_problems(seed: int, n_support: int, n_eval: int) -> tuple[list[Problem], list[Problem]]:
    """Deterministic, disjoint support and eval splits (distinct prompts)."""
    rng = random.Random(f"organism-splits-{seed}")
    seen: set[Problem] = set()
    problems: list[Problem] = []
    while len(problems) < n_support + n_eval:
        p = sample_problem(rng)
        if p not in seen:
            seen.add(p)
            problems.append(p)
    return problems[:n_support], problems[n_support:]


def to_example(problem: Problem) -> dict:
    """The JSONL record of a problem: ``id``, ``prompt``, ``answer`` (string, as users' data has it)."""
    return {"id": problem.id, "prompt": problem.prompt, "answer": str(problem.answer)}
