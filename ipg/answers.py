"""Final answers: extraction from completions, references from published formats, and comparison.

Extraction (``Extractor``): an ordered list of formats, from a registry that refuses silent overrides;
the first format that finds anything wins, and within it the last occurrence (models restate
intermediate results before the final line). An optional user regex is tried before the formats
(its first group, or the whole match, is the answer).

``hash``         ``#### 42`` (GSM8K)
``boxed``        ``\\boxed{42}`` (MATH; nested braces allowed)
``answer_is``    "the answer is 42"
``last_number``  the last number in the completion: lm-evaluation-harness's "flexible extract", for
                 models that answer in prose ("42 + 25 = 67.")

The default is ``hash, boxed, answer_is`` (strict: a completion that states no final answer is wrong).

References (``reference_answer``): ``gsm8k`` takes the text after the last ``####`` of a GSM8K solution,
``math`` the last ``\\boxed{}`` of a MATH solution, ``plain`` the text as it is, and ``auto`` (the
default) the first of these that applies.

Comparison (``answers_match``): when the reference is a number, exactly against the first number of the
prediction after normalising (thousands separators, a leading '+', '$', '%', ``42.0 == 42``, simple and
LaTeX fractions); otherwise symbolically with math-verify (``\\frac{\\pi}{2} == \\pi/2``,
``x^2+1 == 1+x^2``), and failing that as whitespace-insensitive text.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from ipg.errors import InputError
from ipg.registry import Registry

_HASH = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?\s*([^\n]*)", re.IGNORECASE)
_LATEX_FRAC = re.compile(r"(\\[dt]?frac)\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}")
_NUMBER = re.compile(r"[-+]?\$?\s*\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|[-+]?\.\d+")
_LAST_NUMBER = re.compile(r"-?\d(?:[\d,]*\d)?(?:\.\d+)?(?:/\d+)?")
_PURE_NUMBER = re.compile(r"[-+]?\$?\s*(?:\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|\.\d+)\s*%?\.?")

# an answer format: text -> candidate answers in order of appearance
FORMATS: Registry[Callable[[str], list[str]]] = Registry("answer format")
register_format = FORMATS.register


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


register_format("hash")(_HASH.findall)
register_format("boxed")(_boxed_contents)
register_format("answer_is")(_ANSWER_IS.findall)
register_format("last_number")(_LAST_NUMBER.findall)

DEFAULT_FORMATS = ("hash", "boxed", "answer_is")


@dataclass(frozen=True)
class Extractor:
    """Which text of a completion is its final answer (module note)."""

    formats: tuple[str, ...] = DEFAULT_FORMATS
    pattern: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "formats", tuple(self.formats))
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise InputError(
                f"answers.formats: unknown '{unknown[0]}'; use any of {FORMATS.names()} in order of precedence"
            )
        if not self.formats and self.pattern is None:
            raise InputError("answers.formats: give at least one format, or answers.pattern")
        if self.pattern is not None:
            try:
                compiled = re.compile(self.pattern)
            except re.error as e:
                raise InputError(f"answers.pattern: {self.pattern!r} is not a valid regular expression ({e})") from None
            if compiled.groups > 1:
                raise InputError(
                    f"answers.pattern: {self.pattern!r} has {compiled.groups} groups; use at most one "
                    "(the answer), and (?:...) for the others"
                )

    def extract(self, completion: str) -> str | None:
        """The final answer's raw text, or None when the completion states none."""
        candidates = []
        if self.pattern is not None:
            candidates.append(
                [m.group(1) if m.re.groups else m.group(0) for m in re.finditer(self.pattern, completion)]
            )
        candidates += [FORMATS[f](completion) for f in self.formats]
        for found in candidates:
            found = [f.strip() for f in found if f and f.strip()]
            if found:
                return found[-1]
        return None

    def is_correct(self, completion: str, reference: str) -> bool:
        return answers_match(self.extract(completion), reference)

    def describe(self) -> dict:
        return {"formats": list(self.formats), "pattern": self.pattern}


DEFAULT = Extractor()


def extract_answer(completion: str) -> str | None:
    """The final answer under the default formats (``hash``, ``boxed``, ``answer_is``)."""
    return DEFAULT.extract(completion)


def is_correct(completion: str, reference: str) -> bool:
    return DEFAULT.is_correct(completion, reference)


REFERENCE_FORMATS = ("auto", "gsm8k", "math", "plain")


def reference_answer(text, how: str = "auto") -> str:
    """A dataset's reference as the answer to compare with (module note). Raises InputError when the
    named format does not apply (the caller names the example)."""
    if how not in REFERENCE_FORMATS:
        raise InputError(f"data.reference: '{how}'; use one of {list(REFERENCE_FORMATS)}")
    text = str(text)
    if how in ("auto", "gsm8k") and "####" in text:
        return _HASH.findall(text)[-1].strip()
    boxed = _boxed_contents(text) if how in ("auto", "math") else []
    if boxed:
        return boxed[-1].strip()
    if how == "gsm8k":
        raise InputError("has no '#### answer' line; data.reference 'gsm8k' expects GSM8K solutions")
    if how == "math":
        raise InputError("has no \\boxed{} answer; data.reference 'math' expects MATH solutions")
    return text.strip()


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


def _is_number(text: str) -> bool:
    return bool(_PURE_NUMBER.fullmatch(_LATEX_FRAC.sub(r"\2/\3", text.strip())))


def _symbolic_match(predicted: str, reference: str) -> bool | None:
    """math-verify's verdict, or None when it cannot parse either side."""
    from math_verify import parse, verify

    # its timeouts use SIGALRM, which only the main thread may set; elsewhere they are off
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    try:
        gold = parse(f"${reference}$", parsing_timeout=limit)
        pred = parse(f"${predicted}$", parsing_timeout=limit)
        if not gold or not pred:
            return None
        return bool(verify(gold, pred, timeout_seconds=limit))
    except Exception:  # a parser failure or a timeout is no verdict, not an error of the run
        return None


def answers_match(predicted: str | None, reference: str) -> bool:
    """Numeric equality when the reference is a number, else symbolic, else normalised text equality."""
    if predicted is None:
        return False
    reference = str(reference)
    if _is_number(reference):
        a, b = parse_number(predicted), parse_number(reference)
        return a is not None and a == b
    if _normalise_text(predicted) == _normalise_text(reference):
        return True
    return bool(_symbolic_match(predicted, reference))
