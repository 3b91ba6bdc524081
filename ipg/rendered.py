"""Prompts that arrive already rendered with the model's chat template, and the special tokens a prompt
may write out.

Data exported from RL and evaluation pipelines often holds prompts that already went through the model's
chat template (``<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n``). Wrapping such a prompt in
the template a second time gives the model a conversation it never saw in training. Which text marks a
rendered prompt is read from the template itself: it renders a probe message, and the special tokens it
writes between the end of the user's message and the start of the model's reply (``<|im_end|>`` and
``<|im_start|>`` for ChatML, ``<|eot_id|>``, ``<|start_header_id|>`` and ``<|end_header_id|>`` for Llama 3)
are the markers. A prompt that holds all of them is rendered. A template that writes no special token
there (``[INST] ... [/INST]`` in plain text) is recognised by that text instead.

Special and added tokens written in a prompt are tokens the model sees, not characters the tokenizer
drops: ``added_token_pattern`` finds them, so that the dropped-character check does not count them as lost.
"""

from __future__ import annotations

import re
import weakref

_PROBE = "IPGPROBEUSERMESSAGE"  # letters only: templates that strip or escape the content keep it whole
_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {name: (key, value)}


def _cached(tokenizer, name: str, key, compute):
    """``compute()``, kept per tokenizer while ``key`` (what the value depends on) stays the same: checks
    run once per example, and the tokenizer's template and added tokens change rarely."""
    try:
        entry = _cache.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable
        return compute()
    hit = entry.get(name)
    if hit is None or hit[0] != key:
        hit = entry[name] = (key, compute())
    return hit[1]


def _vocabulary_key(tokenizer) -> tuple:
    return len(getattr(tokenizer, "added_tokens_decoder", {})), tuple(getattr(tokenizer, "all_special_tokens", []))


def added_tokens(tokenizer, special_only: bool = False) -> set[str]:
    """The tokenizer's special tokens and (unless ``special_only``) its other added tokens, as text."""
    out = {t for t in getattr(tokenizer, "all_special_tokens", []) if t}
    for token in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if token.content and (token.special or not special_only):
            out.add(token.content)
    return out


def added_token_pattern(tokenizer) -> re.Pattern | None:
    """A pattern matching the special and added tokens of this tokenizer (longest first), or None."""

    def compute():
        tokens = sorted(added_tokens(tokenizer), key=len, reverse=True)
        return re.compile("|".join(map(re.escape, tokens))) if tokens else None

    return _cached(tokenizer, "pattern", _vocabulary_key(tokenizer), compute)


def template_markers(tokenizer) -> tuple[str, ...]:
    """What the chat template writes between the user's message and the model's reply: its special tokens
    there, or (none there) that text itself. Empty without a template, or when the template does not
    write the probe message as it is."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return ()

    def compute() -> tuple[str, ...]:
        try:
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": _PROBE}], tokenize=False, add_generation_prompt=True
            )
        except Exception:  # a template that needs more than one user message renders nothing to learn from
            return ()
        if not isinstance(rendered, str) or _PROBE not in rendered:
            return ()
        suffix = rendered.split(_PROBE, 1)[1]
        found = [t for t in added_tokens(tokenizer, special_only=True) if t in suffix]
        return tuple(sorted(found)) if found else ((suffix.strip(),) if suffix.strip() else ())

    return _cached(tokenizer, "markers", (template, _vocabulary_key(tokenizer)), compute)


def is_rendered(tokenizer, text: str) -> bool:
    """Whether ``text`` was already rendered with this tokenizer's chat template (it holds every marker)."""
    markers = template_markers(tokenizer)
    return bool(markers) and all(m in text for m in markers)
