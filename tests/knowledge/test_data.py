import json

import pytest

from seal.knowledge.data import DataError, load_builtin, load_passages, load_seal_json, load_squad_json, split_passages


def write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def test_builtin_corpus_is_well_formed():
    passages = load_builtin()
    assert len(passages) >= 20
    assert len({p.title for p in passages}) == len(passages)
    for p in passages:
        assert len(p.questions) >= 3
        for q in p.questions:  # every gold answer can be learned from the passage itself
            assert q.answers[0] in p.context


def test_seal_json(tmp_path):
    path = write(tmp_path, "p.json", [{"title": "Super_Bowl_50", "context": "Text.",
                                       "questions": [{"question": "Q?", "answer": "A"}]}])
    [p] = load_seal_json(path)
    assert p.title == "Super Bowl 50" and p.questions[0].answers == ("A",)


def test_official_squad_keeps_all_gold_answers(tmp_path):
    squad = {"data": [{"title": "T", "paragraphs": [{"context": "C", "qas": [
        {"question": "Q?", "answers": [{"text": "x"}, {"text": "y"}, {"text": "x"}]},
        {"question": "unanswerable", "answers": []}]}]}]}
    [p] = load_squad_json(write(tmp_path, "dev-v1.1.json", squad))
    assert [q.answers for q in p.questions] == [("x", "y")]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ({"a": 1}, "expected a JSON list"),
    ([{"title": "T", "context": "C", "questions": []}], "at least one question"),
    ([{"title": "T", "questions": [{"question": "q", "answer": "a"}]}], "missing field 'context'"),
    ([{"title": "T", "context": "C", "questions": [{"question": "q"}]}], "questions[0]: missing field 'answer'"),
    ([{"title": "", "context": "C", "questions": [{"question": "q", "answer": "a"}]}], "[0].title"),
])
def test_bad_seal_json_names_the_problem(tmp_path, content, message):
    path = write(tmp_path, "bad.json", content)
    with pytest.raises(DataError) as err:
        load_seal_json(path)
    assert message in str(err.value) and "bad.json" in str(err.value)


def test_missing_file_and_unknown_source(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_passages("seal-json", str(tmp_path / "nope.json"))
    with pytest.raises(DataError, match=r"needs data\.path"):
        load_passages("squad", None)


def test_split_by_article_is_disjoint_seeded_and_spread():
    passages = [p for p in load_builtin()]
    # give several passages the same article title to exercise grouping
    from dataclasses import replace
    passages = [replace(p, title=f"article-{i % 6}") for i, p in enumerate(passages)]
    train, held = split_passages(passages, 5, 5, seed=1)
    assert {p.title for p in train}.isdisjoint({p.title for p in held})
    assert len(train) == 5 and len(held) == 5
    assert len({p.title for p in held}) > 1  # not all from one article
    again = split_passages(passages, 5, 5, seed=1)
    assert [p.id for p in again[0]] == [p.id for p in train]
    assert [p.id for p in split_passages(passages, 5, 5, seed=2)[1]] != [p.id for p in held]


def test_split_asks_for_too_much():
    with pytest.raises(DataError, match="asked for 100 training"):
        split_passages(load_builtin(), 100, 4, seed=0)


def test_hub_rows_are_grouped_into_passages(monkeypatch):
    """The hub loader's grouping, with a stand-in for `datasets` (the real one needs network)."""
    import sys
    import types

    rows = [
        {"title": "Super_Bowl_50", "context": "C1", "question": "Q1", "answers": {"text": ["a", "a", "b"]}},
        {"title": "Super_Bowl_50", "context": "C1", "question": "Q2", "answers": {"text": ["c"]}},
        {"title": "Other", "context": "C2", "question": "Q3", "answers": {"text": []}},
    ]
    fake = types.SimpleNamespace(load_dataset=lambda dataset_id, split: rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    [p] = load_passages("hub", "rajpurkar/squad", "validation")
    assert p.title == "Super Bowl 50" and [q.answers for q in p.questions] == [("a", "b"), ("c",)]
