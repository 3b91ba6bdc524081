"""Final-answer extraction and comparison for chain-of-thought completions.

Formats, in order of precedence (the last occurrence of the first format found wins, since models
often restate intermediate results before the final line):
``#### 42`` (GSM8K), ``\\boxed{42}`` (MATH, nested braces allowed), and "the answer is 42".
Numbers are compared exactly after normalising: thousands separators, a leading '+', '$' and '%',
trailing zeros after the decimal point (``42.0 == 42``), simple fractions (``3/4 == 0.75``).
"""

from __future__ import annotations

import re
from fractions import Fraction

_HASH = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?\s*([^\n]*)", re.IGNORECASE)
_LATEX_FRAC = re.compile(r"(\\[dt]?frac)\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}")
_NUMBER = re.compile(r"[-+]?\$?\s*\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|[-+]?\.\d+")


def _boxed_contents(text: str) -> list[str]:
    out = []
    for m in re.finditer(r"\\boxed\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def extract_answer(completion: str) -> str | None:
    """The final answer's raw text, or None when the completion states no answer."""
    for found in (_HASH.findall(completion), _boxed_contents(completion), _ANSWER_IS.findall(completion)):
        found = [f.strip() for f in found if f.strip()]
        if found:
            return found[-1]
    return None


def parse_number(text: str) -> Fraction | None:
    """The first number in ``text`` as an exact Fraction, or None. '1,234.50' -> 2469/2."""
    text = _LATEX_FRAC.sub(r"\2/\3", text).replace("\\left", "").replace("\\right", "")
    m = _NUMBER.search(text)
    if m is None:
        return None
    s = re.sub(r"[\s$,+]", "", m.group(0))
    try:
        if "/" in s:
            num, den = s.split("/")
            return Fraction(int(num), int(den)) if int(den) else None
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _normalise_text(text: str) -> str:
    return re.sub(r"\s+|\$|\\text\{|\}|\.$", "", text).lower()


def answers_match(predicted: str | None, reference: str) -> bool:
    """Numeric equality when both sides parse as numbers, else normalised string equality."""
    if predicted is None:
        return False
    a, b = parse_number(predicted), parse_number(str(reference))
    if a is not None and b is not None:
        return a == b
    return _normalise_text(predicted) == _normalise_text(str(reference))


def is_correct(completion: str, reference: str) -> bool:
    return answers_match(extract_answer(completion), reference)
