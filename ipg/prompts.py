"""How an example becomes the model's input: one setting, applied once, where examples enter.

Formats:

``auto``      ``chat`` when the tokenizer has a chat template, else ``raw`` (the default)
``chat``      the tokenizer's chat template over one user message, with the generation prompt (the
              assistant's turn opened), after an optional system message. The user message is the
              example's ``prompt``, or ``user``: a template over its fields, for an instruction the
              model card asks for ("{prompt}\\nPlease reason step by step, and put your final answer
              within \\boxed{{}}.")
``raw``       the example's ``prompt`` as it is
a template   a Python format string over the example's fields, ``"Question: {question}\\nAnswer:"``
              (``{{`` and ``}}`` for literal braces)

A prompt already rendered with the model's chat template (special tokens written out, as data exported
from RL and evaluation pipelines often holds it; see ``ipg.rendered``) is used as it is under ``auto`` and
``chat``: the template is never applied twice. ``describe`` counts such prompts for the log and run.json.

Token ids, and BOS exactly once: a chat template writes its own special tokens (Llama 3's
``<|begin_of_text|>``, ChatML's ``<|im_start|>``), so the rendered text is tokenized without adding any;
raw and template text get the tokens the tokenizer puts before a text (BOS, for the models that want
one) unless the text already starts with them, and never the ones it puts after (an EOS would end the
prompt). The result is stored on the example as ``prompt_ids``: HF generation, the vLLM engine (fed
token ids, never text), the gradient pass, steering evaluation and the baselines all read those ids.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from ipg.errors import InputError
from ipg.rendered import added_token_pattern, is_rendered

FORMATS = ("auto", "chat", "raw")


def _fields(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise InputError(
            f"prompt.format: template {template!r} is not a valid format string ({e}); "
            "write fields as {question} and literal braces as {{ }}"
        ) from None


@dataclass(frozen=True)
class PromptFormat:
    """``format``: auto | chat | raw | a template string; ``system``: the chat format's system message;
    ``user``: the chat format's user message as a template over the example's fields (default: its prompt)."""

    format: str = "auto"
    system: str | None = None
    user: str | None = None

    def __post_init__(self):
        if not isinstance(self.format, str) or not self.format:
            raise InputError(
                f"prompt.format: got {self.format!r}; use auto, chat, raw or a template such as "
                "'Question: {question}\\nAnswer:'"
            )
        if self.format not in FORMATS:
            fields = _fields(self.format)
            if not fields or any(not f or not f.isidentifier() for f in fields):
                raise InputError(
                    f"prompt.format: '{self.format}' is neither auto, chat, raw nor a template naming "
                    "the example's fields ('Question: {question}\\nAnswer:')"
                )
        for name in ("system", "user"):
            if getattr(self, name) is not None and self.format not in ("auto", "chat"):
                raise InputError(
                    f"prompt.{name}: only the chat format has a {name} message; with a raw or template "
                    "format write it into the template"
                )
        if self.user is not None and any(not f or not f.isidentifier() for f in _fields(self.user)):
            raise InputError(f"prompt.user: {self.user!r} must name the example's fields as {{prompt}} or {{question}}")

    def resolve(self, tokenizer) -> str:
        """The format this tokenizer gets: 'chat', 'raw' or 'template'."""
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.format == "auto":
            return "chat" if has_template else "raw"
        if self.format == "chat" and not has_template:
            raise InputError(
                "prompt.format: 'chat', but this model's tokenizer has no chat template; use raw or a template string"
            )
        return self.format if self.format in FORMATS else "template"

    def user_message(self, example: dict) -> str:
        """The chat format's user message: the example's prompt, or ``user`` rendered over its fields."""
        return example["prompt"] if self.user is None else _render(self.user, example, "prompt.user")

    def kind(self, tokenizer, example: dict) -> str:
        """How this example becomes text: 'chat', 'raw', 'template', or 'rendered' (a chat or auto format
        whose prompt the model's chat template already rendered: used as it is)."""
        kind = self.resolve(tokenizer)
        if kind != "chat" or not is_rendered(tokenizer, self.user_message(example)):
            return kind
        if self.system is not None:
            raise InputError(
                f"prompt.system: example '{example.get('id', '?')}' is already rendered with the model's chat "
                "template, so no system message can be added to it; drop prompt.system, or give the prompt "
                "unrendered"
            )
        return "rendered"

    def text(self, tokenizer, example: dict, kind: str | None = None) -> str:
        """The model input of ``example`` as text (special tokens written out); ``kind``: its ``kind``, when
        the caller has it already."""
        kind = kind or self.kind(tokenizer, example)
        if kind == "raw":
            return example["prompt"]
        if kind == "template":
            return _render(self.format, example, "prompt.format")
        user = self.user_message(example)
        if kind == "rendered":
            return user
        messages = ([{"role": "system", "content": self.system}] if self.system is not None else []) + [
            {"role": "user", "content": user}
        ]
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # jinja's TemplateError: e.g. a template that refuses a system message
            what = "prompt.system" if self.system is not None else "prompt.format"
            raise InputError(
                f"{what}: this model's chat template failed on example '{example.get('id', '?')}' "
                f"({type(e).__name__}: {e})"
            ) from None

    def encode(self, tokenizer, example: dict) -> list[int]:
        """The model input of ``example`` as token ids (BOS once; see the module note)."""
        kind = self.kind(tokenizer, example)
        ids = tokenizer(self.text(tokenizer, example, kind), add_special_tokens=False)["input_ids"]
        if kind in ("chat", "rendered"):
            return list(ids)
        lead = leading_special_ids(tokenizer)
        return list(ids) if ids[: len(lead)] == lead else lead + list(ids)

    def describe(self, tokenizer, example: dict | None = None, examples: list[dict] = ()) -> dict:
        """What run.json and the report say about the formatting (with one rendered input, if given, and
        how many of ``examples`` were already rendered with the chat template and used as they are)."""
        out = {"format": self.format, "resolved": self.resolve(tokenizer), "system": self.system, "user": self.user}
        if examples:
            out["already_rendered"], out["n_examples"] = self.rendered_count(tokenizer, examples), len(examples)
        if example is not None:
            out["example"] = self.text(tokenizer, example)
        return out

    def rendered_count(self, tokenizer, examples: list[dict]) -> int:
        """How many of ``examples`` (those with a text prompt) the chat template already rendered."""
        return sum(isinstance(ex.get("prompt"), str) and self.kind(tokenizer, ex) == "rendered" for ex in examples)

    def note(self, tokenizer, examples: list[dict]) -> str | None:
        """A log line when some ``examples`` were already rendered with the chat template, else None."""
        n = self.rendered_count(tokenizer, examples)
        if not n:
            return None
        return (
            f"prompts: {n} of {len(examples)} already rendered with the model's chat template (its markers are in "
            f"them): used as they are, not templated again"
        )


def _render(template: str, example: dict, key: str) -> str:
    try:
        return template.format_map(example)
    except KeyError as e:
        raise InputError(
            f"example '{example.get('id', '?')}': {key} uses field {e}, which the example lacks "
            f"(it has {sorted(k for k in example if k != 'prompt_ids')})"
        ) from None


def leading_special_ids(tokenizer) -> list[int]:
    """The ids the tokenizer puts before a text when asked to add special tokens (BOS, or nothing)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for k in range(len(full) - len(plain) + 1):
        if full[k : k + len(plain)] == plain:
            return list(full[:k])
    return []


def format_examples(
    tokenizer,
    examples: list[dict],
    fmt: PromptFormat | str = "auto",
    *,
    context: int | None = None,
    max_new_tokens: int = 0,
    on_error: str = "fail",
    skipped: dict | None = None,
) -> list[dict]:
    """Copies of ``examples`` with ``prompt_ids`` (an example that already has them keeps them), each checked
    against the model before anything is sampled (``check_prompt``): a prompt that encodes to nothing, one
    whose characters the tokenizer drops, or one that with ``max_new_tokens`` does not fit the model's
    ``context`` is refused, naming the example; with ``on_error`` 'skip' it is left out instead and
    recorded in ``skipped`` (example id -> why), as a failing signal is."""
    fmt = fmt if isinstance(fmt, PromptFormat) else PromptFormat(fmt)
    out = []
    for ex in examples:
        ids = ex.get("prompt_ids")
        if ids is None:
            ids = fmt.encode(tokenizer, ex)
        elif not isinstance(ids, (list, tuple)) or not all(isinstance(t, int) for t in ids):
            raise InputError(f"example '{ex.get('id', '?')}': field 'prompt_ids' must be a list of token ids")
        problem = check_prompt(tokenizer, ex, list(ids), context, max_new_tokens)
        if problem is not None:
            if on_error != "skip" or skipped is None:
                raise InputError(problem)
            skipped[str(ex.get("id", "?"))] = problem
            continue
        out.append({**ex, "prompt_ids": list(ids)})
    if not out and examples:
        raise InputError(
            f"examples: every example was refused (on_error 'skip'); first: {next(iter(skipped.values()))}"
        )
    return out


def check_prompt(tokenizer, example: dict, ids: list[int], context: int | None, max_new_tokens: int) -> str | None:
    """Why this prompt cannot be used (one line naming the example and the fix), or None."""
    name = f"example '{example.get('id', '?')}'"
    if not ids:
        return (
            f"{name}: its prompt encodes to no tokens under this model's tokenizer (characters it does not know?); "
            "check the prompt and prompt.format"
        )
    if context and len(ids) + max_new_tokens > context:
        return (
            f"{name}: its prompt is {len(ids)} tokens, and with max_new_tokens {max_new_tokens} that is beyond the "
            f"model's context of {context} tokens; shorten the prompt or lower max_new_tokens"
        )
    text = example.get("prompt")
    if isinstance(text, str) and "prompt_ids" not in example:
        lost = dropped_characters(tokenizer, text)
        if lost:
            return (
                f"{name}: this model's tokenizer drops characters of its prompt ({lost}), so the model would not "
                "see them; remove them or use a model whose tokenizer knows them"
            )
    return None


def dropped_characters(tokenizer, text: str) -> str:
    """The characters of ``text`` (spaces aside, Unicode NFKC) that an encode/decode round trip loses:
    unknown to the tokenizer, mapped to nothing or to its unknown token. '' when none are. The special
    and added tokens the text writes out (``<|im_start|>``, a thinking marker) are tokens the model sees,
    not lost characters."""
    import unicodedata
    from collections import Counter

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    back = tokenizer.decode(ids, skip_special_tokens=True)
    written = added_token_pattern(tokenizer)  # special and added tokens written in the prompt are kept, as tokens
    kept = written.sub("", text) if written is not None else text

    def chars(s):
        return Counter(c for c in unicodedata.normalize("NFKC", s) if not c.isspace())

    lost = chars(kept) - chars(back)
    return "".join(sorted(lost))[:20]


def prompt_ids(tokenizer, example: dict) -> list[int]:
    """The example's model input ids: its ``prompt_ids``, or the default format's encoding."""
    ids = example.get("prompt_ids")
    return list(ids) if ids is not None else PromptFormat().encode(tokenizer, example)


def longest_prompt(tokenizer, examples: list[dict]) -> int:
    """The most prompt tokens among ``examples`` (engines size their context from it)."""
    return max((len(prompt_ids(tokenizer, ex)) for ex in examples), default=0)
