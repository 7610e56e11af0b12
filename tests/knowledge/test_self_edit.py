import pytest

from seal.knowledge.data import DataError, Passage, Question
from seal.knowledge.prompts import SELF_EDIT_TEMPLATES, load_template, self_edit_prompt
from seal.knowledge.self_edit import is_repetitive, training_set

P = Passage("Varnholt Observatory", "The observatory was founded in 1873.", (Question("When?", ("1873",)),))


@pytest.mark.parametrize("style", list(SELF_EDIT_TEMPLATES))
def test_every_style_shows_title_and_passage(style):
    text = self_edit_prompt(load_template(style), P)
    assert "Varnholt Observatory" in text and "founded in 1873" in text


def test_user_template_file(tmp_path):
    good = tmp_path / "t.txt"
    good.write_text("About {title}: {passage}\nList facts:")
    assert self_edit_prompt(load_template(str(good)), P).startswith("About Varnholt Observatory: The")
    bad = tmp_path / "bad.txt"
    bad.write_text("About {title} {topic}")
    with pytest.raises(DataError, match=r"missing \['passage'\].*unknown \['topic'\]"):
        load_template(str(bad))
    with pytest.raises(DataError, match="neither a built-in style"):
        load_template("implication")


def test_lines_become_titled_sequences_plus_passage():
    ts = training_set(P, "1. It opened in 1873.\n\n- It is an observatory in Varnholt.\n")
    assert ts.sequences == ["Varnholt Observatory\nIt opened in 1873.",
                            "Varnholt Observatory\nIt is an observatory in Varnholt.",
                            "Varnholt Observatory\nThe observatory was founded in 1873."]
    assert ts.n_lines == 2 and ts.problem is None


def test_no_split_and_passage_only():
    ts = training_set(P, "line one is here\nline two is here", split_lines=False)
    assert ts.sequences[0] == "Varnholt Observatory\nline one is here\nline two is here" and len(ts.sequences) == 2
    assert training_set(P, None).sequences == ["Varnholt Observatory\nThe observatory was founded in 1873."]


def test_degenerate_self_edits_are_dropped_and_recorded():
    loop = " ".join(["observatory"] * 97)
    ts = training_set(P, f"{loop}\nIt opened in 1873.\nIt opened in 1873.\nok")
    assert ts.dropped == {"repetitive": 1, "duplicate": 1, "too short": 1}
    assert ts.n_lines == 1
    assert training_set(P, "   \n").problem == "empty self-edit"
    assert "no usable line" in training_set(P, loop).problem
    capped = training_set(P, "\n".join(f"fact number {i} is true" for i in range(10)), max_lines=3)
    assert capped.n_lines == 3 and capped.dropped == {"over max_lines": 7}


def test_is_repetitive():
    assert is_repetitive("the the the the the the the the cat")
    assert not is_repetitive("the cat sat on the mat with a hat")
