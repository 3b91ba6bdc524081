import pytest

from ipg.answers import answers_match, extract_answer, is_correct, parse_number

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("12+35=47\n47+8=55\n#### 55\n", "55"),
        ("#### 10\nwait\n#### 11", "11"),  # the last final line wins
        ("steps... \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),  # nested braces
        ("so \\boxed{42} and the answer is 7", "42"),  # #### > boxed > 'answer is'
        ("Therefore, The Answer Is: -7.", "-7."),
        ("#### \n the answer is 3", "3"),  # an empty #### line is no answer
        ("I am not sure", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize(
    "predicted, reference, same",
    [
        ("42.0", "42", True),
        ("42.50", "42.5", True),
        ("+5", "5", True),
        ("1,234", "1234", True),
        ("$1,200", "1200", True),
        ("3/4", "0.75", True),
        ("\\frac{3}{4}", "0.75", True),
        ("-7.", "-7", True),
        ("-7", "7", False),
        ("41", "42", False),
        ("x + 1", "x+1", True),  # non-numeric: whitespace-insensitive text compare
        (None, "1", False),
    ],
)
def test_answers_match(predicted, reference, same):
    assert answers_match(predicted, reference) is same


def test_is_correct_uses_the_final_line():
    assert is_correct("10+20=30\n30+5=35\n#### 35\n", "35")
    assert not is_correct("10+20=30\n30+5=35\n#### 34\n", "35")
    assert parse_number("no digits") is None
