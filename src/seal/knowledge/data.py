"""Passages with questions, and the loaders for every source we read.

Sources: the built-in fictional corpus, SEAL's per-passage JSON (a list of {title, context,
questions: [{question, answer}]}), the official SQuAD v1.1 JSON (all gold answers kept), and a
`datasets` hub id for users with network. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


class DataError(ValueError):
    """A data file or field that cannot be used, named in the message."""


@dataclass(frozen=True)
class Question:
    question: str
    answers: tuple[str, ...]  # every gold answer; grading takes the max over them


@dataclass(frozen=True)
class Passage:
    title: str
    context: str
    questions: tuple[Question, ...] = field(default=())
    # asked after every update beside `questions` and recorded as `watched`, never rewarded: the gold
    # questions of a passage rewarded on self-written ones (reward.watch_gold)
    watched: tuple[Question, ...] = field(default=(), compare=False)
    # reward.metric teacher: the closed-book and open-book rewards of the passage's questions before any
    # update, between which a reward is the share of the gap closed (label_free.py)
    anchor: tuple[float, float] | None = field(default=None, compare=False)

    @property
    def id(self) -> str:
        """Stable across runs and machines: a hash of title and text."""
        return hashlib.sha1(f"{self.title}\n{self.context}".encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        return {
            "title": self.title,
            "context": self.context,
            "questions": [{"question": q.question, "answers": list(q.answers)} for q in self.questions],
        }


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: expected a non-empty string, got {value!r}")
    return value.strip()


def _passage_from_seal(item, where: str) -> Passage:
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected an object with title, context, questions; got {type(item).__name__}")
    for key in ("title", "context", "questions"):
        if key not in item:
            raise DataError(f"{where}: missing field '{key}'")
    if not isinstance(item["questions"], list) or not item["questions"]:
        raise DataError(f"{where}.questions: a passage needs at least one question")
    questions = []
    for j, q in enumerate(item["questions"]):
        qwhere = f"{where}.questions[{j}]"
        if not isinstance(q, dict) or "question" not in q:
            raise DataError(f"{qwhere}: expected an object with 'question' and 'answer' (or 'answers')")
        raw = q.get("answers", q.get("answer"))
        answers = raw if isinstance(raw, list) else [raw]
        if raw is None or not answers:
            raise DataError(f"{qwhere}: missing field 'answer'")
        questions.append(Question(_text(q["question"], f"{qwhere}.question"),
                                  tuple(_text(a, f"{qwhere}.answer") for a in answers)))
    return Passage(_text(item["title"], f"{where}.title").replace("_", " "),
                   _text(item["context"], f"{where}.context"), tuple(questions))


def _read_json(path: Path):
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from err


def load_seal_json(path: Path) -> list[Passage]:
    data = _read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of passages, got {type(data).__name__}")
    return [_passage_from_seal(item, f"{path}[{i}]") for i, item in enumerate(data)]


def load_squad_json(path: Path) -> list[Passage]:
    """The official SQuAD v1.1 layout: data[].paragraphs[].qas[].answers[].text."""
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: expected the official SQuAD layout with a top-level 'data' list")
    passages = []
    for a, article in enumerate(data["data"]):
        title = _text(article.get("title"), f"{path}:data[{a}].title").replace("_", " ")
        for p, para in enumerate(article.get("paragraphs", [])):
            where = f"{path}:data[{a}].paragraphs[{p}]"
            questions = []
            for q, qa in enumerate(para.get("qas", [])):
                golds = tuple(dict.fromkeys(_text(x.get("text"), f"{where}.qas[{q}].answers")
                                            for x in qa.get("answers", [])))
                if golds:  # unanswerable questions (SQuAD 2.0 files) are skipped
                    questions.append(Question(_text(qa.get("question"), f"{where}.qas[{q}].question"), golds))
            if questions:
                passages.append(Passage(title, _text(para.get("context"), f"{where}.context"), tuple(questions)))
    return passages


def load_hub(dataset_id: str, split: str) -> list[Passage]:
    """A SQuAD-style dataset on the Hugging Face hub (needs `datasets` and network)."""
    try:
        import datasets
    except ImportError as err:
        raise DataError("data.source 'hub' needs the package `datasets`: pip install datasets") from err
    rows = datasets.load_dataset(dataset_id, split=split)
    grouped: dict[tuple[str, str], list[Question]] = {}
    for row in rows:
        golds = tuple(dict.fromkeys(row["answers"]["text"]))
        if golds:
            grouped.setdefault((row["title"].replace("_", " "), row["context"]), []).append(
                Question(row["question"], golds))
    return [Passage(t, c, tuple(qs)) for (t, c), qs in grouped.items()]


def load_builtin() -> list[Passage]:
    """Passages about invented people, places and things: no model can know them beforehand."""
    text = resources.files("seal.knowledge").joinpath("corpus.json").read_text(encoding="utf-8")
    return [_passage_from_seal(item, f"built-in corpus[{i}]") for i, item in enumerate(json.loads(text))]


def load_passages(source: str, path: str | None = None, hub_split: str = "validation") -> list[Passage]:
    if source == "builtin":
        return load_builtin()
    if source == "hub":
        if not path:
            raise DataError("data.source 'hub' needs data.path set to a dataset id, e.g. rajpurkar/squad")
        return load_hub(path, hub_split)
    if not path:
        raise DataError(f"data.source '{source}' needs data.path set to a JSON file")
    file = Path(path).expanduser()
    if source == "seal-json":
        return load_seal_json(file)
    if source == "squad":
        return load_squad_json(file)
    raise DataError(f"unknown data.source '{source}' (choose builtin, seal-json, squad, hub)")


def split_passages(passages: list[Passage], n_train: int, n_eval: int, seed: int,
                   by_article: bool = True) -> tuple[list[Passage], list[Passage]]:
    """Seeded selection of disjoint training and held-out passages.

    With `by_article`, whole articles (titles) go to one side, so that the policy is never trained
    on a passage from an article it is later scored on.
    """
    rng = random.Random(seed)
    if not by_article:
        order = passages[:]
        rng.shuffle(order)
        train, held = order[:n_train], order[n_train:n_train + n_eval]
    else:
        titles = sorted({p.title for p in passages})
        rng.shuffle(titles)
        # Each article goes wholly to the side with the fewest articles per requested passage, so
        # both sides draw on many articles and no passage's article appears on both sides.
        wanted = {"held": n_eval, "train": n_train}
        articles: dict[str, list[str]] = {"held": [], "train": []}
        for title in titles:
            open_sides = [s for s in wanted if wanted[s] > 0]
            if not open_sides:
                break
            side = min(open_sides, key=lambda s: len(articles[s]) / wanted[s])
            articles[side].append(title)
        held = _round_robin(passages, articles["held"], n_eval, rng)
        train = _round_robin(passages, articles["train"], n_train, rng)
    if len(train) < n_train or len(held) < n_eval:
        raise DataError(
            f"asked for {n_train} training and {n_eval} held-out passages but the data "
            f"{'split by article ' if by_article else ''}gives {len(train)} and {len(held)}")
    return train, held


def _round_robin(passages: list[Passage], titles: list[str], n: int, rng: random.Random) -> list[Passage]:
    """Up to n passages taken one article at a time, each article's passages in seeded order."""
    groups = []
    for title in titles:
        group = [p for p in passages if p.title == title]
        rng.shuffle(group)
        groups.append(group)
    picked: list[Passage] = []
    while len(picked) < n and any(groups):
        for group in groups:
            if group and len(picked) < n:
                picked.append(group.pop(0))
    return picked
