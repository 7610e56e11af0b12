"""Judge and teacher through an OpenAI-compatible endpoint, served on loopback by the test itself."""

import json
import pickle
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from seal.core.endpoint import ChatEndpoint, EndpointError, Judge
from seal.knowledge.data import load_builtin
from seal.knowledge.domain import KnowledgeDomain


def serve(reply):
    """A fake /v1/chat/completions answering reply(prompt) -> (status, text)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, text = reply(body["messages"][-1]["content"])
            payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}]}
            data = json.dumps(payload if status == 200 else {"error": {"message": text}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/v1"


def test_judge_grades_yes_and_no():
    server, url = serve(lambda prompt: (200, "Yes." if "Predicted answer: 1873" in prompt else "no"))
    try:
        judge = Judge(ChatEndpoint(url, "judge", retries=0))
        assert judge.grade("When?", ["1873"], "1873") == (1.0, None)
        assert judge.grade("When?", ["1873"], "1901") == (0.0, None)
        # a distributed worker gets a copy that makes its own client
        copy = pickle.loads(pickle.dumps(judge))
        assert copy.endpoint.client is not judge.endpoint.client and copy.grade("When?", ["1873"], "1873") == (1.0, None)
    finally:
        server.shutdown()


def test_failing_judge_leaves_answers_ungraded_not_wrong(tiny, tiny_config):
    calls = []
    server, url = serve(lambda prompt: (calls.append(1), (500, "boom"))[1])
    try:
        judge = Judge(ChatEndpoint(url, "judge", retries=1, timeout_s=5))
        cfg = tiny_config.model_copy(deep=True)
        cfg.reward.metric = "judge"
        scored = KnowledgeDomain(cfg, judge).score(tiny, load_builtin()[0])
    finally:
        server.shutdown()
    assert scored["grades"]["judge"] == [None, None]  # ungraded, never 0
    assert scored["reward"] is None and scored["means"]["judge"] is None
    assert len(scored["judge_errors"]) == 2 and len(calls) == 4  # one retry per question


def test_endpoint_error_is_raised_with_the_model_name():
    server, url = serve(lambda prompt: (404, "no such model"))
    try:
        with pytest.raises(EndpointError, match="teacher"):
            ChatEndpoint(url, "teacher", retries=0).complete("hi")
    finally:
        server.shutdown()


def test_teacher_row_from_an_endpoint(tiny_config, tmp_path):
    from seal.core.progress import Progress
    from seal.core.runs import Run
    from seal.knowledge.evaluate import evaluate

    server, url = serve(lambda prompt: (200, "The first fact is here.\nThe second fact is there."))
    try:
        cfg = tiny_config.model_copy(deep=True)
        cfg.teacher.base_url = url
        cfg.eval.base_self_edits = cfg.eval.passage_sentences = False
        run = Run.create(cfg, "evaluate")
        with Progress(enabled=False) as progress:
            rows = evaluate(run, KnowledgeDomain(cfg), load_builtin()[:2], progress).rows
    finally:
        server.shutdown()
    assert [r["condition"] for r in rows] == ["base model, no update", "open book (passage in the prompt), no update",
                                              "passage only", "passage + teacher self-edits"]
    teacher_evals = [r for r in run.records("self_edit_eval") if r["condition"] == "passage + teacher self-edits"]
    assert len(teacher_evals) == 2 and all(r["n_lines"] == 2 for r in teacher_evals)


def teacher_failing_on_one(tiny_config):
    """Two passages, a teacher endpoint that fails on the second, and a configuration with the teacher
    row only."""
    passages = load_builtin()[:2]
    failing = passages[1].title
    server, url = serve(lambda prompt: (500, "down") if failing in prompt else (200, "A fact is here.\nAnother one."))
    cfg = tiny_config.model_copy(deep=True)
    cfg.teacher.base_url, cfg.teacher.retries = url, 0
    cfg.eval.base_self_edits = cfg.eval.passage_only = cfg.eval.passage_sentences = False
    return passages, server, cfg


def test_a_failed_teacher_call_is_missing_not_a_zero_and_is_retried(tiny_config):
    from seal.core.progress import Progress
    from seal.core.runs import Run
    from seal.knowledge.evaluate import evaluate

    passages, server, cfg = teacher_failing_on_one(tiny_config)
    try:
        run = Run.create(cfg, "evaluate")
        with Progress(enabled=False) as progress:
            rows = evaluate(run, KnowledgeDomain(cfg), passages, progress).rows
    finally:
        server.shutdown()
    teacher = rows[-1]
    assert teacher["condition"] == "passage + teacher self-edits" and teacher["missing"] == 1
    evals = [r for r in run.records("self_edit_eval") if r["condition"] == teacher["condition"]]
    assert [r["context_id"] for r in evals] == [passages[0].id]  # the failed one is left out, not scored 0

    server, url = serve(lambda prompt: (200, "A fact is here.\nAnother one."))  # the endpoint is back
    try:
        resumed = Run.resume(run.path)
        resumed.config.teacher.base_url = url
        with Progress(enabled=False) as progress:
            rows = evaluate(resumed, KnowledgeDomain(resumed.config), passages, progress).rows
    finally:
        server.shutdown()
    assert rows[-1]["missing"] == 0
    assert len([r for r in resumed.records("self_edit_eval") if r["condition"] == teacher["condition"]]) == 2


def test_cpt_waits_for_every_teacher_self_edit(tiny_config):
    """CPT trains one update on every passage: with a teacher self-edit missing, the row is left out
    (and tried again on --resume), never trained on a pool with a hole in it."""
    from seal.core.progress import Progress
    from seal.core.runs import Run
    from seal.knowledge.cpt import cpt

    passages, server, cfg = teacher_failing_on_one(tiny_config)
    try:
        cfg.cpt.epochs, cfg.cpt.rank, cfg.cpt.alpha = 1, 4, 8
        run = Run.create(cfg, "cpt")
        with Progress(enabled=False) as progress:
            rows = cpt(run, KnowledgeDomain(cfg), passages, progress).rows
    finally:
        server.shutdown()
    teacher = rows[-1]  # listed, with its missing self-edit counted, and nothing scored
    assert teacher["condition"] == "passage + teacher self-edits" and teacher["missing"] == 1
    assert teacher["questions"] == 0 and teacher["reward"] is None
    assert not run.records("cpt_train") and run.get(f"eval/samples/passage + teacher self-edits/{passages[1].id}")["error"]
