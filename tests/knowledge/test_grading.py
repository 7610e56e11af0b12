import pytest

from seal.knowledge.grading import contains_answer, exact_match, normalize_answer, token_f1


@pytest.mark.parametrize("raw, normal", [
    ("The Denver Broncos", "denver broncos"),
    ("  an   Apple, a day!  ", "apple day"),
    ("\"golden anniversary\"", "golden anniversary"),
    ("Santa Clara, California.", "santa clara california"),
    ("theatre", "theatre"),          # 'the' inside a word is kept
    ("A.D. 1066", "ad 1066"),
    ("24–10", "24–10"),              # only ASCII punctuation is stripped, as in the official script
    ("", ""),
])
def test_normalize_matches_official_squad(raw, normal):
    assert normalize_answer(raw) == normal


def test_exact_match_takes_max_over_golds():
    assert exact_match("the Broncos", ["Denver Broncos", "Broncos"]) == 1.0
    assert exact_match("Broncos!", ["Denver Broncos"]) == 0.0


def test_token_f1_hand_checked():
    # prediction 3 tokens, gold 2, overlap 2: P=2/3, R=1 -> F1=0.8
    assert token_f1("Denver Broncos team", ["Denver Broncos"]) == pytest.approx(0.8)
    assert token_f1("Carolina", ["Denver Broncos"]) == 0.0
    assert token_f1("Broncos", ["Carolina Panthers", "Denver Broncos"]) == pytest.approx(2 / 3)
    assert token_f1("", ["x"]) == 0.0


def test_contains_answer_whole_words_only():
    assert contains_answer("It was the Denver Broncos, I think", ["Denver Broncos"]) == 1.0
    assert contains_answer("Denverite", ["Denver"]) == 0.0
    assert contains_answer("anything", [""]) == 0.0
