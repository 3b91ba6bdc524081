import random

import pytest
from transformers import AutoTokenizer

from ipg.models import ORGANISM_PATH
from ipg.organism import task
from ipg.organism.tokenizer import CHARS, build_tokenizer

pytestmark = pytest.mark.unit


def test_round_trip_on_traces_and_all_printable_ascii():
    tok = AutoTokenizer.from_pretrained(str(ORGANISM_PATH))
    rng = random.Random(1)
    texts = [p.prompt + task.teacher_trace(p, rng) for p in (task.sample_problem(rng) for _ in range(200))]
    texts.append("".join(CHARS))
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text)  # one token per character
        assert tok.decode(ids) == text


def test_shipped_tokenizer_equals_the_builder():
    shipped = AutoTokenizer.from_pretrained(str(ORGANISM_PATH))
    built = build_tokenizer()
    assert shipped.get_vocab() == built.get_vocab()
    assert (shipped.pad_token_id, shipped.eos_token_id) == (built.pad_token_id, built.eos_token_id)
    assert shipped.padding_side == "left"
