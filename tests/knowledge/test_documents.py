"""A user's own documents: reading, splitting, and the questions passages write for themselves."""

import json
from pathlib import Path

import pytest

from helpers import EXAMPLES
from seal.knowledge.data import Passage, Question
from seal.knowledge.documents import DocumentError, read_documents, split_passages
from seal.knowledge.grading import normalize_answer
from seal.knowledge.questions import (
    BLANK,
    check_questions,
    cloze_questions,
    model_questions,
    parse_questions,
    salient_span,
    split_questions,
)

words = lambda text: len(text.split())


def test_the_example_folder_reads_markdown_and_pdf_with_titles_and_sections():
    docs, skipped = read_documents([EXAMPLES])
    assert skipped == [] and {Path(d.path).name for d in docs} == {
        "velmora-harbour.md", "brassfield-observatory.md", "quillon-clockworks.pdf"}
    titles = {Path(d.path).name: d.title for d in docs}
    assert titles["velmora-harbour.md"] == "The Harbour of Velmora"
    assert titles["quillon-clockworks.pdf"] == "The Quillon Clockworks Company"  # the PDF's own title
    velmora = next(d for d in docs if d.path.endswith("velmora-harbour.md"))
    passages = list(split_passages(velmora, words, max_tokens=60))
    assert passages[0].title == "The Harbour of Velmora" and passages[1].title == "The Harbour of Velmora — The lighthouse"
    assert all(words(p.context) <= 60 for p in passages)
    assert "Ilse Marrow" in " ".join(p.context for p in passages)
    pdf = next(d for d in docs if d.path.endswith(".pdf"))
    text = " ".join(p.context for p in split_passages(pdf, words, max_tokens=80))
    assert "Halcyon" in text and "Dunmere Museum of Time" in text  # both pages


def test_a_long_paragraph_is_cut_between_sentences_then_words(tmp_path):
    sentence = "The quick brown fox jumps over the lazy dog near the old mill. "
    (tmp_path / "long.txt").write_text(sentence * 30 + "\n\n" + "word " * 100)
    [doc], _ = read_documents([tmp_path / "long.txt"])
    passages = list(split_passages(doc, words, max_tokens=40))
    assert all(words(p.context) <= 40 for p in passages) and len(passages) >= 10
    assert sum(words(p.context) for p in passages) == 30 * 13 + 100  # nothing lost


def test_bad_files_are_skipped_by_name_with_the_reason(tmp_path):
    (tmp_path / "good.txt").write_text("A paragraph about the lighthouse at Gull Rock.")
    (tmp_path / "empty.md").write_text("  \n")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02 not text")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "fake.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "rows.jsonl").write_text('{"body": "no text field here"}\n')
    (tmp_path / "notes.json").write_text('[{"text": "The harbour was dug in 1612.", "title": "Harbour notes"}]')
    docs, skipped = read_documents([tmp_path])
    assert sorted(Path(d.path.split("#")[0]).name for d in docs) == ["good.txt", "notes.json"]
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert reasons["empty.md"] == "empty file" and reasons["binary.txt"].startswith("binary")
    assert reasons["latin1.txt"].startswith("not UTF-8") and "PDF" in reasons["fake.pdf"]
    assert reasons["image.png"].startswith("unsupported type") and "'text'" in reasons["rows.jsonl"]
    assert next(d for d in docs if "notes.json" in d.path).title == "Harbour notes"
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(DocumentError, match="nothing readable"):
        read_documents([only_bad])
    with pytest.raises(DocumentError, match="no such file"):
        read_documents([tmp_path / "missing"])


def test_a_pdf_without_a_text_layer_or_encrypted_is_skipped(tmp_path):
    from pypdf import PdfWriter

    blank = PdfWriter()
    blank.add_blank_page(200, 200)
    blank.write(tmp_path / "scan.pdf")
    locked = PdfWriter(clone_from=EXAMPLES / "quillon-clockworks.pdf")
    locked.encrypt("secret")
    locked.write(tmp_path / "locked.pdf")
    (tmp_path / "ok.md").write_text("# Note\n\nSome text.")
    _, skipped = read_documents([tmp_path])
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert reasons["scan.pdf"].startswith("no text layer") and reasons["locked.pdf"] == "encrypted PDF"


def test_a_cloze_answer_is_always_a_span_of_its_passage():
    docs, _ = read_documents([EXAMPLES])
    total = 0
    for doc in docs:
        for passage in split_passages(doc, words, max_tokens=80):
            written = cloze_questions(passage)
            for q in written.questions:
                assert BLANK in q.question and q.answers[0] in passage.context
                assert normalize_answer(q.answers[0]) in normalize_answer(passage.context)
                total += 1
    assert total >= 15
    assert salient_span("The lamp burned whale oil until 1871, when it was converted.") == "1871"
    assert salient_span("It was lit on March 3, 1788, by the keeper.") == "March 3, 1788"
    assert salient_span("Its harbour was dug by the brothers Oskar Lunn and others.") == "Oskar Lunn"
    assert salient_span("Today the light is automatic and it turns slowly.") is None


def test_model_questions_keep_only_what_the_passage_supports():
    p = Passage("Velmora", "The harbour was dug by hand in 1612 by the brothers Oskar and Teodor Lunn.")
    text = ("Q: When was the harbour dug?\nA: 1612\n"
            "Q: Who dug the harbour?\nA: Napoleon\n"  # not in the passage
            "Q: When was the harbour dug?\nA: in 1612\n"  # a duplicate question
            "Q: What happened in 1612?\nA: 1612\n"  # the answer is in the question
            "Q: The harbour was dug by hand in 1612 by the brothers Oskar and Teodor Lunn?\nA: Oskar\n"  # copied
            "some chatter\nQ: How was it dug?\nA: by hand\n")
    pairs = parse_questions(text)
    assert len(pairs) == 6
    written = check_questions(p, pairs)
    assert [q.question for q in written.questions] == ["When was the harbour dug?", "How was it dug?"]
    assert written.dropped == {"unsupported": 1, "duplicate": 1, "trivial": 1, "copied": 1}
    [again] = model_questions([p], lambda prompts: [text])
    assert again.questions == written.questions


def test_the_selection_and_held_out_split_is_disjoint_and_seeded():
    qs = [Question(f"q{i}?", (f"a{i}",)) for i in range(7)]
    sel, held = split_questions(qs, 0.5, seed=0, key="p1")
    assert len(sel) + len(held) == 7 and not set(sel) & set(held) and sel and held
    assert split_questions(qs, 0.5, seed=0, key="p1") == (sel, held)
    assert split_questions(qs, 0.5, seed=1, key="p1") != (sel, held)
    assert split_questions(qs[:1], 0.5, 0, "p") == (qs[:1], [])
    assert [len(x) for x in split_questions(qs[:2], 0.9, 0, "p")] == [1, 1]


def test_the_gold_file_asks_about_the_examples():
    gold = json.loads((EXAMPLES.parent / "documents-gold.json").read_text())
    docs, _ = read_documents([EXAMPLES])
    text = {Path(d.path).name: " ".join(p.context for p in split_passages(d, words, 200)) for d in docs}
    for q in gold["questions"]:
        assert any(normalize_answer(a) in normalize_answer(text[q["document"]]) for a in q["answers"]), q


def test_learn_then_ask_on_the_tiny_model(tiny_config, tmp_path):
    """The whole `seal learn` pipeline on the example documents, resumable, then `seal ask`."""
    from peft import PeftModel
    from typer.testing import CliRunner

    from helpers import overrides
    from seal.cli import app
    from seal.core.models import load_model
    from seal.core.runs import Run

    runner = CliRunner()
    args = overrides(tiny_config) + ["--set", "learn.k=2", "--set", "learn.epochs=1", "--set", "learn.rank=4",
                                     "--set", "learn.alpha=8", "--set", "learn.max_passage_tokens=120"]
    out = tmp_path / "learned"
    result = runner.invoke(app, ["learn", str(EXAMPLES), "--out", str(out), "--quiet", *args])
    assert result.exit_code == 0, result.output
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json", "report.md"} <= {p.name for p in out.iterdir()}
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["documents"]) == 3 and all(len(d["sha256"]) == 64 for d in manifest["documents"])
    passages = manifest["passages"]
    assert passages and all(p["self_edit"] for p in passages)
    for p in passages:  # held-out questions are never selection questions
        assert not {q["question"] for q in p["selection"]} & {q["question"] for q in p["held_out"]}
    report = (out / "report.md").read_text()
    assert "| all documents |" in report and "velmora-harbour.md" in report
    lm = load_model(tiny_config.model.name, "cpu")
    PeftModel.from_pretrained(lm.model, str(out))  # a standard PEFT adapter

    [run_dir] = [p for p in Path(tiny_config.runs_dir).iterdir() if p.name.startswith("learn-")]
    n = len(Run.resume(run_dir).records())
    again = runner.invoke(app, ["learn", str(EXAMPLES), "--out", str(out), "--quiet", *args])
    assert again.exit_code == 2 and "exists" in again.output  # never overwritten
    resumed = runner.invoke(app, ["learn", str(EXAMPLES), "--out", str(tmp_path / "again"), "--resume", str(run_dir), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert len(Run.resume(run_dir).records()) == n  # nothing redone

    answer = runner.invoke(app, ["ask", str(out), "Who was the first keeper of the Velmora lighthouse?", "--compare"])
    assert answer.exit_code == 0, answer.output
    assert "[from " in answer.output and "velmora-harbour.md" in answer.output and "base model:" in answer.output


def test_self_written_questions_reward_restem(tiny_config):
    """reward.questions self: training passages are rewarded on the selection half of cloze questions
    they wrote themselves, recorded once; the held-out table still asks the gold questions."""
    from typer.testing import CliRunner

    from helpers import overrides
    from seal.cli import app
    from seal.core.runs import Run

    result = CliRunner().invoke(app, ["knowledge", "restem", "--quiet", *overrides(tiny_config),
                                      "--set", "reward.questions=self", "--set", "restem.evaluate_policy=false"])
    assert result.exit_code == 0, result.output
    [run_dir] = list(Path(tiny_config.runs_dir).iterdir())
    run = Run.resume(run_dir)
    written = {r["context_id"]: r for r in run.records("questions")}
    assert len(written) == tiny_config.data.train_passages
    own = [r for r in run.records("pre_update") if r["key"].startswith("round1/") and not written[r["context_id"]]["gold_kept"]]
    assert own
    n_own = sum(not r["gold_kept"] for r in written.values())
    assert f"questions (cloze): {n_own} of {len(written)} passages have selection questions" in (run_dir / "progress.log").read_text()
    for r in own:  # the passage's own selection questions were asked (answer.max_questions=2 at most)
        assert len(r["answers"]) == min(2, len(written[r["context_id"]]["selection"]))
    held = [r for r in run.records() if r["key"].startswith("eval/pre/")]
    assert held and all(r["context_id"] not in written for r in held)
    assert not any("watched" in r for r in run.records())


def test_a_self_rewarded_run_whose_writer_writes_nothing_usable_stops_with_one_line(tiny_config):
    """The tiny random model as its own question writer supports no question in its passages: rather than
    a run rewarded on gold questions throughout while it says "self", one line that names the cause."""
    from typer.testing import CliRunner

    from helpers import overrides
    from seal.cli import app
    from seal.core.runs import Run

    result = CliRunner().invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *overrides(tiny_config),
                                      "--set", "reward.questions=self", "--set", "questions.writer=model"])
    line = " ".join(result.output.split())  # the console wraps long lines
    assert result.exit_code == 2 and "no usable selection question for any of the 2 training passages" in line
    [run_dir] = list(Path(tiny_config.runs_dir).iterdir())  # kept: the written questions are records
    written = Run.resume(run_dir).records("questions")
    assert len(written) == tiny_config.data.train_passages and all(r["gold_kept"] for r in written)
    assert not Run.resume(run_dir).records("self_edit_eval")


def test_watched_gold_questions_are_scored_beside_the_reward_and_never_change_it(tiny, tiny_config):
    """A passage's watched questions are asked with its own in one batch and graded apart: its reward is
    what it is without them, and the watched reward is what the watched questions alone would give."""
    import dataclasses

    from seal.knowledge.data import load_builtin
    from seal.knowledge.domain import KnowledgeDomain

    tiny_config.reward.metric = "loglik"
    domain = KnowledgeDomain(tiny_config)
    a, b = load_builtin()[:2]
    own = (Question("Who wrote it?", ("the keeper",)),)
    plain = [dataclasses.replace(a, questions=own), b]
    watching = [dataclasses.replace(a, questions=own, watched=a.questions), b]
    alone = domain.score_many(tiny, [a, b])
    before, after = domain.score_many(tiny, plain), domain.score_many(tiny, watching)
    assert after[0]["reward"] == pytest.approx(before[0]["reward"], rel=1e-4)
    assert after[0]["watched"]["reward"] == pytest.approx(alone[0]["reward"], rel=1e-4)
    assert after[0]["watched"]["reward"] != pytest.approx(after[0]["reward"], rel=1e-3)
    assert "watched" not in after[1] and after[1]["reward"] == pytest.approx(alone[1]["reward"], rel=1e-4)
    assert watching[0] == plain[0] and hash(watching[0]) == hash(plain[0])  # the same passage to every cache


def test_watched_gold_rewards_are_recorded_by_a_self_rewarded_run_and_tabled(tiny_config):
    from typer.testing import CliRunner

    from helpers import overrides
    from seal.cli import app
    from seal.core.noise import watched_rows
    from seal.core.runs import Run

    runner = CliRunner()
    bad = runner.invoke(app, ["knowledge", "restem", "--quiet", *overrides(tiny_config), "--set", "reward.watch_gold=true"])
    assert bad.exit_code == 2 and "reward.watch_gold" in bad.output
    result = runner.invoke(app, ["knowledge", "restem", "--quiet", "--no-eval", *overrides(tiny_config),
                                 "--set", "reward.questions=self", "--set", "reward.watch_gold=true",
                                 "--set", "restem.evaluate_policy=false", "--set", "restem.k=2"])
    assert result.exit_code == 0, result.output
    [run_dir] = list(Path(tiny_config.runs_dir).iterdir())
    run = Run.resume(run_dir)
    written = {r["context_id"]: r for r in run.records("questions")}
    own = {cid for cid, r in written.items() if not r["gold_kept"]}
    evals = [r for r in run.records("self_edit_eval") if r["key"].startswith("round1/eval/")]
    assert own and evals
    for r in evals:
        assert ("watched" in r) == (r["context_id"] in own)
        assert r["watched"]["reward"] >= 0 if "watched" in r else True
    [row] = watched_rows(run)
    assert row["contexts"] == len(own) and row["self-edits"] == 2 * len(own) and row["chance"] == 0.5
    listed = runner.invoke(app, ["knowledge", "noise", str(run_dir)])
    assert listed.exit_code == 0 and "chosen by the reward" in listed.output
    assert runner.invoke(app, ["report", str(run_dir)]).exit_code == 0
    assert "against the watched reward" in (run_dir / "report" / "report.md").read_text()


@pytest.mark.parametrize("mode", ["pooled", "per-document"])
def test_learning_more_later_skips_known_documents_and_keeps_the_earlier_ones(tiny_config, tmp_path, mode):
    import shutil

    from typer.testing import CliRunner

    from helpers import overrides
    from seal.cli import app

    runner = CliRunner()
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    shutil.copy(EXAMPLES / "velmora-harbour.md", first)
    shutil.copy(EXAMPLES / "velmora-harbour.md", second)  # known: skipped by its content hash
    shutil.copy(EXAMPLES / "brassfield-observatory.md", second)
    args = overrides(tiny_config) + ["--set", "learn.k=1", "--set", "learn.epochs=1", "--set", "learn.rank=4",
                                     "--set", "learn.alpha=8", "--set", f"learn.mode={mode}"]
    out = tmp_path / "learned"
    assert runner.invoke(app, ["learn", str(first), "--out", str(out), "--quiet", *args]).exit_code == 0
    before = json.loads((out / "manifest.json").read_text())
    if mode == "per-document":
        kept_adapter = (out / before["documents"][0]["adapter"] / "adapter_model.safetensors").read_bytes()
    more = runner.invoke(app, ["learn", str(second), "--out", str(out), "--add", "--quiet",
                               "--set", f"runs_dir={tiny_config.runs_dir}"])
    assert more.exit_code == 0, more.output
    assert "already learned" in more.output
    after = json.loads((out / "manifest.json").read_text())
    assert [Path(d["path"]).name for d in after["documents"]] == ["velmora-harbour.md", "brassfield-observatory.md"]
    assert len(after["runs"]) == 2 and after["mode"] == mode
    old = [p for p in after["passages"] if p["document"].endswith("velmora-harbour.md")]
    assert old and all(p["scores"]["when_learned"] is not None for p in old if p["held_out"])
    report = (out / "report.md").read_text()
    assert "after, when learned" in report and "brassfield-observatory.md" in report
    if mode == "per-document":  # nothing learned before is touched
        assert (out / before["documents"][0]["adapter"] / "adapter_model.safetensors").read_bytes() == kept_adapter
        assert (out / after["documents"][1]["adapter"] / "adapter_config.json").is_file()
    else:
        assert (out / "adapter_config.json").is_file()
    asked = runner.invoke(app, ["ask", str(out), "Who founded Brassfield Observatory?"])
    assert asked.exit_code == 0 and "brassfield-observatory.md" in asked.output
    again = runner.invoke(app, ["learn", str(second), "--out", str(out), "--add", "--quiet",
                                "--set", f"runs_dir={tiny_config.runs_dir}"])
    assert again.exit_code == 0 and "nothing new to learn" in again.output


def test_untrusted_files_are_skipped_with_their_reason_and_never_read(tmp_path, monkeypatch):
    import seal.knowledge.documents as documents

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("A secret kept outside the folder.")
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "good.txt").write_text("The harbour was dug in 1612 by the Velmora guild.")
    (folder / "link-out.txt").symlink_to(outside / "secret.txt")
    (folder / "link-in.txt").symlink_to(folder / "good.txt")  # a link that stays inside the folder is a document
    (folder / "linked-folder").symlink_to(outside, target_is_directory=True)  # never walked
    (folder / "bad\x07name.txt").write_text("A bell rang.")
    (folder / "big.txt").write_text("word " * 800)
    (folder / "many.json").write_text(json.dumps([{"text": f"Record {i} says something."} for i in range(30)]))
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Pages /Kids [2 0 R] >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF")
    monkeypatch.setattr(documents, "MAX_FILE_BYTES", 2000)
    monkeypatch.setattr(documents, "MAX_RECORDS", 20)
    docs, skipped = read_documents([folder])
    assert sorted(Path(d.path).name for d in docs) == ["good.txt", "link-in.txt"]
    assert not any("secret" in d.path for d in docs)
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in skipped}
    assert "outside the folder" in reasons["link-out.txt"]
    assert reasons["bad\\x07name.txt"] == "control characters in the file name"  # shown escaped
    assert reasons["big.txt"] == "4000 bytes, over the 2000 bytes a document may have"
    assert "30 records, over the 20" in reasons["many.json"]
    assert "PDF" in reasons["broken.pdf"]
    assert len(reasons) == 5


def test_an_output_folder_must_hold_exactly_what_its_manifest_lists(tmp_path):
    from seal.knowledge.learned import LearnError, folder_files, verify_folder

    def folder(name):
        f = tmp_path / name
        (f / "documents" / "d0").mkdir(parents=True)
        (f / "adapter_model.safetensors").write_bytes(b"weights")
        (f / "documents" / "d0" / "adapter_config.json").write_text("{}")
        (f / "report.md").write_text("# report")
        return f, dict(files=folder_files(f), documents=[dict(adapter="documents/d0")])

    good, manifest = folder("good")
    assert "report.md" not in manifest["files"] and "documents/d0/adapter_config.json" in manifest["files"]
    verify_folder(good, manifest)
    cases = {
        "pickle": (lambda f, m: (f / "adapter_model.bin").write_bytes(b"pickle"), "pickle-format file"),
        "unlisted": (lambda f, m: (f / "extra.json").write_text("{}"), "extra.json is not in its manifest.json"),
        "changed": (lambda f, m: (f / "adapter_model.safetensors").write_bytes(b"other"), "differs from what seal learn wrote"),
        "missing": (lambda f, m: (f / "adapter_model.safetensors").unlink(), "adapter_model.safetensors is missing"),
        "escape": (lambda f, m: m["files"].update({"../good/adapter_model.safetensors": "0"}), "outside the folder"),
        "adapter": (lambda f, m: m["documents"].append(dict(adapter="../good/documents/d0")),
                    "the adapter '../good/documents/d0', outside"),
        "symlink": (lambda f, m: (f / "link.json").symlink_to(good / "report.md"), "symbolic link"),
        "old": (lambda f, m: m.pop("files"), "lists no files"),
    }
    for name, (spoil, message) in cases.items():
        f, m = folder(name)
        spoil(f, m)
        with pytest.raises(LearnError, match=message):
            verify_folder(f, m)


def test_learn_refuses_documents_that_give_nothing_to_choose_by(tiny_config, tmp_path):
    from typer.testing import CliRunner

    from helpers import overrides
    from seal.cli import app

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "short.txt").write_text("ok ok.")
    result = CliRunner().invoke(app, ["learn", str(docs), "--out", str(tmp_path / "out"), "--quiet",
                                      *overrides(tiny_config), "--set", "learn.k=2"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "nothing can choose between the learn.k=2 self-edits; set learn.k: 1" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()
