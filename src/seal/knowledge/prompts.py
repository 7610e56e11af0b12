"""Self-edit prompts (what the model is asked to write about a passage) and the answering prompt.

Each self-edit style is one template with `{title}` and `{passage}` placeholders; a user's own
template file works the same way. The wording is ours; the styles follow the SEAL specification.
"""

from __future__ import annotations

import string
from pathlib import Path

from seal.knowledge.data import DataError, Passage

SELF_EDIT_TEMPLATES: dict[str, str] = {
    "implications": (
        "Read the passage below.\n\nTitle: {title}\n{passage}\n\n"
        "List the implications of this passage: facts it states or that follow from it, "
        "one per line."
    ),
    "implications-long": (
        "Read the passage below.\n\nTitle: {title}\n{passage}\n\n"
        "Write a long list of implications of this passage: every fact it states and every "
        "conclusion that follows from it, one per line, each a complete sentence that names its subject."
    ),
    "implications-very-long": (
        "Read the passage below.\n\nTitle: {title}\n{passage}\n\n"
        "Write a very long and thorough list of implications of this passage, covering every "
        "name, number, date and relation in it, and what each one implies. One complete sentence per "
        "line, each naming its subject."
    ),
    "rewrite": (
        "Read the passage below.\n\nTitle: {title}\n{passage}\n\n"
        "Rewrite this passage in several different ways, keeping every fact. Put each "
        "version on its own line."
    ),
    "probes": (
        "Read the passage below.\n\nTitle: {title}\n{passage}\n\n"
        "Write short questions that this passage answers, one per line, each about one of its facts "
        "and naming its subject."
    ),
    "self-qa": (
        "Read the passage below.\n\nTitle: {title}\n{passage}\n\n"
        "Turn this passage into question-answer pairs that cover all of its facts. Write each pair "
        "on one line as: Question: ... Answer: ..."
    ),
}

# Answering without the passage. "completion" is a plain continuation prompt: measured on the
# embedded 135M model, chat-formatted answering produced long sentences that never matched a short gold
# answer, while the plain form answers in a few words.
ANSWER_TEMPLATES: dict[str, str] = {
    "completion": "Topic: {title}\nQuestion: {question}\nAnswer:",
    "chat": "Answer the question directly and concisely, in a few words.\nTopic: {title}\nQuestion: {question}",
}
# The same questions asked with the passage in the prompt (the open-book ceiling).
OPEN_BOOK_TEMPLATES: dict[str, str] = {
    "completion": "Topic: {title}\n{passage}\nQuestion: {question}\nAnswer:",
    "chat": "Answer the question directly and concisely, in a few words.\nTopic: {title}\nText: {passage}\nQuestion: {question}",
}


def load_template(style: str) -> str:
    """A built-in style name, or the path of a text file with {title} and {passage} placeholders."""
    if style in SELF_EDIT_TEMPLATES:
        return SELF_EDIT_TEMPLATES[style]
    path = Path(style).expanduser()
    if not path.is_file():
        raise DataError(
            f"self_edit.prompt '{style}' is neither a built-in style ({', '.join(SELF_EDIT_TEMPLATES)}) "
            "nor an existing template file")
    template = path.read_text(encoding="utf-8")
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    missing = {"title", "passage"} - fields
    unknown = fields - {"title", "passage"}
    if missing or unknown:
        raise DataError(f"template {path}: needs the placeholders {{title}} and {{passage}}"
                        + (f"; missing {sorted(missing)}" if missing else "")
                        + (f"; unknown {sorted(unknown)} (write {{{{ and }}}} for literal braces)" if unknown else ""))
    return template


def self_edit_prompt(template: str, passage: Passage) -> str:
    return template.format(title=passage.title, passage=passage.context)


def answer_prompt(style: str, title: str, question: str, passage: str | None = None) -> str:
    """The prompt a question is answered from: closed-book, or with `passage` in it (open book)."""
    if style not in ANSWER_TEMPLATES:
        raise DataError(f"answer.prompt_style '{style}' is unknown (choose {', '.join(ANSWER_TEMPLATES)})")
    if passage is not None:
        return OPEN_BOOK_TEMPLATES[style].format(title=title, question=question, passage=passage)
    return ANSWER_TEMPLATES[style].format(title=title, question=question)
