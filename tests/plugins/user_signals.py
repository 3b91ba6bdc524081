"""Signals a user writes in their own module, for the import-path tests (``user_signals:close``)."""

from ipg.signals import Signal


def close(completion: str, example: dict, tolerance: float = 0.0) -> float:
    """1 when the last number in the completion is within ``tolerance`` of the reference."""
    import re

    numbers = re.findall(r"-?\d+", completion)
    return float(bool(numbers) and abs(int(numbers[-1]) - int(example["answer"])) <= tolerance)


def words(completion: str, example: dict) -> str:
    return completion.split()[0] if completion.split() else ""  # a string, not a number: an error


class Digits(Signal):
    name = "digits"

    def __init__(self, weight: float = 1.0):
        self.weight = weight

    def __call__(self, completions, examples, n_tokens):
        return [self.weight * sum(ch.isdigit() for ch in c) for c in completions]
