"""Prompt formatting: one setting, the same token ids for every consumer, BOS exactly once."""

import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ipg.errors import InputError
from ipg.generation import SamplingParams, generate
from ipg.prompts import PromptFormat, format_examples, leading_special_ids, prompt_ids

pytestmark = pytest.mark.unit

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant"
    "<|end_header_id|>\n\n{% endif %}"
)


def word_tokenizer(template: str | None = None, bos: bool = False):
    """A word-level fast tokenizer with ChatML / Llama-3 specials; ``bos``: it adds <s> before a text."""
    from tokenizers import processors

    specials = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    words = [
        "[UNK]",
        *specials,
        " ",
        "\n",
        "\n\n",
        "system",
        "user",
        "assistant",
        "What",
        "is",
        "1",
        "+",
        "2",
        "?",
        "Q:",
        "be",
        "brief",
    ]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n+| |[^\s]+"), behavior="isolated")
    tok.add_special_tokens(specials)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>", unk_token="[UNK]"
    )
    fast.chat_template = template
    return fast


EXAMPLE = {"id": "a", "prompt": "What is 1 + 2 ?", "question": "What is 1 + 2 ?", "answer": "3"}


def test_auto_is_chat_with_a_template_and_raw_without():
    assert PromptFormat().resolve(word_tokenizer(CHATML)) == "chat"
    assert PromptFormat().resolve(word_tokenizer(None)) == "raw"
    with pytest.raises(InputError, match=r"prompt.format: 'chat', but this model's tokenizer has no chat template"):
        PromptFormat("chat").resolve(word_tokenizer(None))


def test_chat_renders_the_template_with_the_generation_prompt_and_system_message():
    tok = word_tokenizer(CHATML)
    text = PromptFormat("chat", system="be brief").text(tok, EXAMPLE)
    assert text == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nWhat is 1 + 2 ?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = PromptFormat("chat").encode(tok, EXAMPLE)
    assert tok.convert_ids_to_tokens(ids)[:3] == [
        "<|im_start|>",
        "user",
        "\n",
    ] and "[UNK]" not in tok.convert_ids_to_tokens(ids)
    assert ids == tok(PromptFormat("chat").text(tok, EXAMPLE), add_special_tokens=False)["input_ids"]


def test_bos_exactly_once():
    # a template that writes BOS itself, on a tokenizer that also adds BOS to plain text: one BOS, not two
    tok = word_tokenizer(LLAMA3, bos=True)
    assert leading_special_ids(tok) == [tok.bos_token_id]
    ids = PromptFormat("chat").encode(tok, EXAMPLE)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    # raw text gets the BOS the tokenizer adds, once, even when the text already starts with it
    raw = PromptFormat("raw").encode(tok, EXAMPLE)
    assert raw[0] == tok.bos_token_id and raw.count(tok.bos_token_id) == 1
    again = PromptFormat("raw").encode(tok, {**EXAMPLE, "prompt": "<s>What is 1 + 2 ?"})
    assert again == raw
    # a tokenizer that adds nothing (the organism's) gets nothing
    assert leading_special_ids(word_tokenizer(None)) == []


def test_template_over_fields_and_user_template():
    tok = word_tokenizer(CHATML)
    assert PromptFormat("Q: {question}\n").text(tok, EXAMPLE) == "Q: What is 1 + 2 ?\n"
    assert "user\nQ: What is 1 + 2 ?<|im_end|>" in PromptFormat("chat", user="Q: {question}").text(tok, EXAMPLE)
    with pytest.raises(InputError, match=r"example 'a': prompt.format uses field 'missing'"):
        PromptFormat("Q: {missing}").encode(tok, EXAMPLE)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"format": "{}"}, r"prompt.format: '\{\}' is neither auto, chat, raw nor a template"),
        ({"format": "no fields"}, r"is neither auto, chat, raw nor a template"),
        ({"format": "Q: {a"}, r"not a valid format string"),
        ({"format": "raw", "system": "x"}, r"prompt.system: only the chat format has a system message"),
        ({"format": "Q: {q}", "user": "{q}"}, r"prompt.user: only the chat format"),
    ],
)
def test_bad_formats_name_the_field(kwargs, message):
    with pytest.raises(InputError, match=message):
        PromptFormat(**kwargs)


def test_examples_carry_their_ids_and_keep_given_ones(organism):
    tok = word_tokenizer(CHATML)
    out = format_examples(tok, [EXAMPLE, {"id": "b", "prompt": "x", "prompt_ids": [5, 6]}], "raw")
    assert out[0]["prompt_ids"] == tok(EXAMPLE["prompt"], add_special_tokens=False)["input_ids"]
    assert out[1]["prompt_ids"] == [5, 6] and "prompt_ids" not in EXAMPLE  # copies, inputs untouched
    assert prompt_ids(tok, out[0]) == out[0]["prompt_ids"]
    with pytest.raises(InputError, match=r"example 'c': its prompt encodes to no tokens"):
        format_examples(organism[1], [{"id": "c", "prompt": "\N{SLIGHTLY SMILING FACE}"}])  # not in its alphabet


def test_generation_reads_the_formatted_ids(organism):
    model, tok = organism
    ex = {"id": "g", "prompt": "12+34\n", "answer": "46"}
    plain = generate(model, tok, [ex], SamplingParams(max_new_tokens=8))[0][0]
    assert plain.prompt_ids == tok("12+34\n", add_special_tokens=False)["input_ids"]  # the organism: raw, as before
    templated = format_examples(tok, [ex], "Problem {prompt}")[0]
    out = generate(model, tok, [templated], SamplingParams(max_new_tokens=8))[0][0]
    assert out.prompt_ids == templated["prompt_ids"] == tok("Problem 12+34\n", add_special_tokens=False)["input_ids"]


RENDERED = "<|im_start|>user\nWhat is 1 + 2 ?<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("fmt", ["auto", "chat", "raw"])
def test_a_prompt_already_rendered_with_the_template_is_used_as_it_is(fmt):
    """Exported prompts carry the template's special tokens: they are kept (not "dropped characters"), and
    no second template goes around them, in every format."""
    tok = word_tokenizer(CHATML)
    example = {"id": "r", "prompt": RENDERED, "answer": "3"}
    out = format_examples(tok, [example], fmt)[0]
    assert out["prompt_ids"] == tok(RENDERED, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(out["prompt_ids"]).count("<|im_start|>") == 2
    # the same conversation from a plain prompt gives the same ids under the chat formats
    if fmt != "raw":
        assert format_examples(tok, [EXAMPLE], fmt)[0]["prompt_ids"] == out["prompt_ids"]
    described = PromptFormat(fmt).describe(tok, out, [out, EXAMPLE])
    assert described["already_rendered"] == (1 if fmt != "raw" else 0) and described["n_examples"] == 2
    note = PromptFormat(fmt).note(tok, [out, EXAMPLE])
    assert (
        (note is None)
        if fmt == "raw"
        else note.startswith("prompts: 1 of 2 already rendered with the model's chat template")
    )


def test_rendered_prompts_are_read_from_the_templates_own_markers():
    from ipg.rendered import is_rendered, template_markers

    assert set(template_markers(word_tokenizer(CHATML))) == {"<|im_start|>", "<|im_end|>"}
    llama = word_tokenizer(LLAMA3, bos=True)
    assert set(template_markers(llama)) == {"<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"}
    rendered = PromptFormat("chat").text(llama, EXAMPLE)
    assert is_rendered(llama, rendered) and not is_rendered(llama, RENDERED)  # ChatML is not Llama 3's template
    # BOS once: the rendered text starts with it, and raw does not add a second
    assert (
        format_examples(llama, [{"id": "r", "prompt": rendered}], "raw")[0]["prompt_ids"].count(llama.bos_token_id) == 1
    )
    assert PromptFormat("auto").encode(llama, {"id": "r", "prompt": rendered}) == PromptFormat("chat").encode(
        llama, EXAMPLE
    )
    # a plain-text template (no special token between the turns) is recognised by its text
    inst = word_tokenizer("{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}")
    assert template_markers(inst) == ("[/INST]",) and is_rendered(inst, "[INST] hi [/INST]")
    assert template_markers(word_tokenizer(None)) == () and not is_rendered(word_tokenizer(None), RENDERED)
    # one special token written in a plain prompt (a separator) is kept, and the prompt is templated as usual
    sep = {"id": "s", "prompt": "What is 1 + 2 ?<|im_end|>"}
    assert not is_rendered(word_tokenizer(CHATML), sep["prompt"])
    assert PromptFormat("chat").text(word_tokenizer(CHATML), sep).startswith("<|im_start|>user\nWhat")
    with pytest.raises(
        InputError, match=r"prompt.system: example 'r' is already rendered with the model's chat template"
    ):
        PromptFormat("chat", system="be brief").encode(word_tokenizer(CHATML), {"id": "r", "prompt": RENDERED})


def test_written_special_and_added_tokens_are_not_dropped_characters():
    from ipg.prompts import dropped_characters

    tok = word_tokenizer(CHATML)
    tok.add_tokens(["<think>"])  # an added token that is not special: decoded back either way
    tok.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    for text in (RENDERED, "What is 1 + 2 ?<|im_end|>", "<think>What is 1 + 2 ?<|tool|>"):
        assert dropped_characters(tok, text) == "", text
    assert dropped_characters(tok, "What is 3 ?") == "3"  # an unknown word still counts as lost
