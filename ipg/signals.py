"""Outcome signals J(x, tau): what attribution explains.

A signal scores a batch of completions: ``signal(completions, examples, n_tokens) -> list[float]``.
Built-ins, by name in a registry that refuses silent overrides:

``accuracy``      1.0 when the extracted final answer equals the example's ``answer``, else 0.0
                  (params: ``formats`` and ``pattern`` of the answer extractor, ``ipg.answers``)
``length``        sign * (a L^2 + b L + c) of the generated token count L (monotone: a, b >= 0)
``reflection``    count of reflective keywords ("wait", "check", ...) in the completion
``reward_model``  the score of a Hugging Face sequence-classification reward model

Any Python callable ``(completion: str, example: dict) -> float`` is a signal too, and so is an import
path ``package.module:name`` (in configs and on the command line): a function called as
``fn(completion, example, **params)``, or a ``Signal`` subclass constructed with the params. On Ray the
module is imported in every worker; one that is not installed there is shipped with the actors
(``signal_source``).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Callable

from ipg.answers import DEFAULT_FORMATS, Extractor
from ipg.errors import InputError
from ipg.registry import Registry

_REGISTRY: Registry[Callable[..., "Signal"]] = Registry("signal")


class Signal:
    """Base class: ``name``, ``required_fields`` of each example, and batch scoring."""

    name = "signal"
    required_fields: tuple[str, ...] = ()

    def __call__(self, completions: list[str], examples: list[dict], n_tokens: list[int]) -> list[float]:
        raise NotImplementedError

    def check(self, examples: list[dict]) -> None:
        """Raise InputError before any sampling if an example lacks a field this signal needs."""
        for ex in examples:
            for field in self.required_fields:
                if field not in ex or ex[field] is None:
                    raise InputError(
                        f"example '{ex.get('id', '?')}': field '{field}' is missing; signal '{self.name}' needs it"
                    )


def register_signal(name: str, *, replace: bool = False):
    """Decorator registering a signal factory under ``name``; re-registering needs ``replace=True``."""
    return _REGISTRY.register(name, replace=replace)


def signal_names() -> list[str]:
    return _REGISTRY.names()


def example_fields(spec, params: dict | None = None) -> tuple[str, ...]:
    """The fields every example needs for this signal: the prompt and the signal's ``required_fields``.
    A built-in's come from its class without constructing it (a reward model would load its weights);
    accuracy's answer field is its ``answer_field`` parameter."""
    params = params or {}
    if spec == "accuracy":
        extra = (params.get("answer_field", "answer"),)
    elif isinstance(spec, str) and spec in _REGISTRY:
        extra = tuple(getattr(_REGISTRY[spec], "required_fields", ()))
    else:
        extra = tuple(make_signal(spec, **params).required_fields)
    return ("prompt", *[f for f in extra if f != "prompt"])


def make_signal(spec, **params) -> Signal:
    """A Signal from a registered name or an import path (with its parameters), a Signal, or a plain
    callable."""
    if isinstance(spec, Signal):
        return spec
    if isinstance(spec, str):
        if spec in _REGISTRY:
            try:
                return _REGISTRY[spec](**params)
            except TypeError as e:
                raise InputError(f"signal.params: {e}; see the '{spec}' signal's parameters") from None
        if ":" in spec:
            return _imported(spec, params)
        raise InputError(
            f"signal: unknown '{spec}'; use one of {signal_names()}, an import path "
            "'package.module:function', or pass a callable"
        )
    if callable(spec):
        return CallableSignal(spec, params)
    raise InputError(f"signal: expected a name or a callable, got {type(spec).__name__}")


def _split_path(spec: str) -> tuple[str, str]:
    module, _, attr = spec.partition(":")
    if not module or not all(p.isidentifier() for p in module.split(".")) or not attr.isidentifier():
        raise InputError(f"signal: '{spec}' is not an import path; write 'package.module:function'")
    return module, attr


def _imported(spec: str, params: dict) -> Signal:
    module_name, attr = _split_path(spec)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the module failing while it is imported
        raise InputError(
            f"signal: cannot import '{module_name}' for '{spec}' ({type(e).__name__}: {e}); install "
            "the module or put its folder on PYTHONPATH where the run starts"
        ) from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise InputError(f"signal: module '{module_name}' has no '{attr}' (from '{spec}')")
    if isinstance(obj, type) and issubclass(obj, Signal):
        try:
            sig = obj(**params)
        except TypeError as e:
            raise InputError(f"signal.params: {e}; see the parameters of '{spec}'") from None
    elif callable(obj):
        sig = CallableSignal(obj, params)
    else:
        raise InputError(f"signal: '{spec}' is a {type(obj).__name__}, not a function or Signal class")
    sig.name = spec
    return sig


def signal_source(spec) -> Path | None:
    """Where an import-path signal's top-level module lives when no installed distribution provides it
    (a package folder or a single .py file): what Ray must ship to its workers. None for built-in
    names, callables and installed modules."""
    import sys
    from importlib import metadata

    if not isinstance(spec, str) or spec in _REGISTRY or ":" not in spec:
        return None
    top = _split_path(spec)[0].split(".")[0]
    if top in sys.stdlib_module_names or top in metadata.packages_distributions() or top == "ipg":
        return None
    module = importlib.import_module(top)
    paths = sorted(
        {str(Path(p).resolve()) for p in getattr(module, "__path__", [])}
    )  # sys.path may name a folder twice
    if len(paths) > 1:
        raise InputError(
            f"signal: '{top}' is a namespace package spread over {len(paths)} folders; install it "
            "on the cluster's nodes (the image), so the workers can import it"
        )
    return Path(paths[0] if paths else module.__file__).resolve()


class CallableSignal(Signal):
    """``fn(completion, example, **params) -> number`` per completion."""

    def __init__(self, fn: Callable[..., float], params: dict | None = None):
        self.fn, self.params = fn, dict(params or {})
        self.name = getattr(fn, "__name__", "callable")

    def __call__(self, completions, examples, n_tokens):
        out = []
        for c, ex in zip(completions, examples):
            r = self.fn(c, ex, **self.params)
            if isinstance(r, (str, bytes)) or not hasattr(r, "__float__"):
                raise TypeError(f"returned {type(r).__name__} {r!r}, not a number")
            out.append(float(r))
        return out


@register_signal("accuracy")
class Accuracy(Signal):
    name = "accuracy"

    def __init__(
        self,
        answer_field: str = "answer",
        formats: tuple[str, ...] | list[str] = DEFAULT_FORMATS,
        pattern: str | None = None,
    ):
        self.answer_field = answer_field
        self.required_fields = (answer_field,)
        self.extractor = Extractor(tuple(formats), pattern)

    def __call__(self, completions, examples, n_tokens):
        return [float(self.extractor.is_correct(c, str(ex[self.answer_field]))) for c, ex in zip(completions, examples)]


@register_signal("length")
class Length(Signal):
    """``sign * (a L^2 + b L + c)``: sign +1 favours long reasoning, -1 concise."""

    name = "length"

    def __init__(self, a: float = 0.0, b: float = 1.0, c: float = 0.0, sign: int = 1):
        if a < 0 or b < 0 or (a == 0 and b == 0):
            raise InputError(
                "signal.params: length needs a >= 0, b >= 0, not both 0 (monotone in L); use sign=-1 to favour concise"
            )
        if sign not in (1, -1):
            raise InputError(f"signal.params.sign: must be 1 or -1, got {sign}")
        self.a, self.b, self.c, self.sign = a, b, c, sign

    def __call__(self, completions, examples, n_tokens):
        return [self.sign * (self.a * n * n + self.b * n + self.c) for n in n_tokens]


@register_signal("reflection")
class Reflection(Signal):
    name = "reflection"

    def __init__(self, keywords: tuple[str, ...] | list[str] = ("wait", "but", "double check", "check")):
        if not keywords:
            raise InputError("signal.params.keywords: give at least one reflection keyword")
        # longest first so "double check" is counted once, not also as "check"
        alternatives = "|".join(re.escape(k) for k in sorted(keywords, key=len, reverse=True))
        self.pattern = re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)
        self.keywords = tuple(keywords)

    def __call__(self, completions, examples, n_tokens):
        return [float(len(self.pattern.findall(c))) for c in completions]


@register_signal("reward_model")
class RewardModel(Signal):
    """Scalar score of a sequence-classification reward model on (prompt, completion).

    Uses the reward model's chat template when it has one (as Skywork-Reward-V2 does), else the plain
    concatenation prompt + completion.
    """

    name = "reward_model"

    def __init__(
        self,
        model: str,
        batch_size: int = 16,
        device: str = "cpu",
        dtype: str = "float32",
        max_length: int = 4096,
        trust_remote_code: bool = False,
    ):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ipg.models import DTYPES, resolve_model_path

        try:
            path = resolve_model_path(model)
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.model = (
                AutoModelForSequenceClassification.from_pretrained(
                    path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
                )
                .to(device)
                .eval()
            )
        except (OSError, ValueError, KeyError) as e:  # InputError is a ValueError: one message for all causes
            raise InputError(
                f"signal.params.model: could not load reward model '{model}' ({str(e).splitlines()[0]})"
            ) from e
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.batch_size, self.device, self.max_length, self._torch = batch_size, device, max_length, torch

    def _text(self, prompt: str, completion: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
            return self.tokenizer.apply_chat_template(chat, tokenize=False)
        return prompt + completion

    def __call__(self, completions, examples, n_tokens):
        texts = [self._text(ex["prompt"], c) for c, ex in zip(completions, examples)]
        scores: list[float] = []
        with self._torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    texts[i : i + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    add_special_tokens=False,
                )
                logits = self.model(**enc.to(self.device)).logits  # (B, num_labels)
                scores.extend(logits[:, 0].float().tolist())
        return scores
