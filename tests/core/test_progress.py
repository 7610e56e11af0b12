"""Progress shows on a terminal as bars, elsewhere as plain lines at a bounded rate, and in a log file."""

from seal.core.progress import Progress


def test_plain_lines_when_stderr_is_not_a_terminal(capsys, tmp_path):
    log = tmp_path / "progress.log"
    with Progress(enabled=True, log=log, interval=3600) as progress:
        assert progress.plain  # pytest's captured stderr is no terminal
        progress.start("evals", "round 1: self-edit evaluations", 100)
        for _ in range(100):
            progress.advance("evals")
        progress.log("round 1: done")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3  # started, completed, the message: nothing in between within the interval
    assert "round 1: self-edit evaluations: 0/100" in lines[0] and "100/100" in lines[1] and "eta" in lines[1]
    assert log.read_text().splitlines() == lines


def test_the_rate_is_bounded_by_the_interval(capsys):
    with Progress(enabled=True, interval=0) as progress:
        progress.start("x", "steps", 5)
        for _ in range(5):
            progress.advance("x")
    assert len(capsys.readouterr().err.strip().splitlines()) == 6
    with Progress(enabled=False) as progress:  # --quiet: nothing
        progress.start("x", "steps", 5)
        progress.advance("x", 5)
    assert capsys.readouterr().err == ""


def test_work_found_done_fills_the_bar_but_not_the_rate(capsys, monkeypatch):
    """A resumed run skips what it finds done: the eta comes from the work this process does."""
    import seal.core.progress as module

    now = [0.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    with Progress(enabled=True, interval=3600) as progress:
        progress.start("x", "evals", 10)
        progress.skip("x", 6)  # found done: logged once, with no eta yet
        now[0] = 100.0
        progress.advance("x")  # one item in 100 s
        progress.skip("x", 0)
        now[0] = 400.0
        progress.advance("x", 3)  # ... and 4 in 400 s: done, eta 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    assert "evals: 6/10 (6 found done), 0:00:00 elapsed, eta ?" in lines[1]
    assert "evals: 10/10 (6 found done), 0:06:40 elapsed, eta 0:00:00" in lines[2]
    with Progress(enabled=True, interval=0) as progress:
        progress.start("y", "steps", 4)
        progress.skip("y", 2)
        now[0] = 500.0
        progress.advance("y")  # 1 item in 100 s, 1 to go: eta 100 s, not 33 s as if all 3 were this run's
    assert "steps: 3/4 (2 found done), 0:01:40 elapsed, eta 0:01:40" in capsys.readouterr().err


def test_resumed_sampling_counts_every_recorded_context_as_found_done(capsys, tmp_path):
    """A call whose part is partly recorded samples the whole part again (same seed, same samples) but
    records only the missing contexts; the bar counts the recorded ones as found done, not as new work."""
    from seal.core.config import load_config
    from seal.core.restem import record_samples
    from seal.core.runs import Run

    run = Run.create(load_config(None, [f"runs_dir={tmp_path}"]), "restem")
    for key in ("s/0", "s/1", "s/2"):  # the first part done, the second half done
        run.append("samples", key, samples=["old"])
    calls = []

    def write(contexts, seed):
        calls.append(list(contexts))
        return [dict(samples=[f"new {c}"]) for c in contexts]

    jobs = [(f"s/{i}", i, {}) for i in range(4)]
    with Progress(enabled=True, interval=0) as progress:
        record_samples(run, jobs, write, per_call=2, seed_parts=("x",), progress=progress)
    assert calls == [[2, 3]]  # the finished part is not sampled again; the partial one is, whole
    assert run.get("s/2")["samples"] == ["old"] and run.get("s/3")["samples"] == ["new 3"]
    lines = capsys.readouterr().err.strip().splitlines()
    assert "writing self-edits: 3/4 (3 found done)" in lines[-2]
    assert "writing self-edits: 4/4 (3 found done)" in lines[-1]


def test_the_line_shows_tokens_per_second_beside_the_eta(capsys, monkeypatch):
    import seal.core.progress as module

    now = {"t": 0.0}
    monkeypatch.setattr(module.time, "monotonic", lambda: now["t"])
    with Progress(enabled=True, interval=0) as progress:
        progress.start("sampling", "writing self-edits", 2)
        now["t"] = 10.0
        progress.advance("sampling", 1, tokens=300, unit="generated tokens")
        now["t"] = 20.0
        progress.advance("sampling", 1, tokens=100, unit="generated tokens")
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[1].endswith("1/2, 0:00:10 elapsed, eta 0:00:10, 30 generated tokens/s"), lines
    assert lines[2].endswith("2/2, 0:00:20 elapsed, eta 0:00:00, 20 generated tokens/s"), lines  # 400 in 20 s
    assert "tokens/s" not in lines[0]  # nothing generated yet


def test_a_bar_shows_the_rate_of_the_generation_and_training_it_waits_on(capsys, monkeypatch, tiny):
    """A bar whose items report no tokens (writing questions, answering, an update) shows the tokens
    this process generated or trained on while it was open, by kind."""
    import seal.core.progress as module
    from seal.core.config import LoraTrainConfig
    from seal.core.generation import generate
    from seal.core.training import Example, fresh_adapter, train

    capsys.readouterr()  # the fixture's loading bars
    now = {"t": 0.0}
    monkeypatch.setattr(module.time, "monotonic", lambda: now["t"])
    module.count("generated tokens", 1000)  # before the bar: not its work
    with Progress(enabled=True, interval=0) as progress:
        progress.start("answers", "answering", 2)
        out = generate(tiny, ["Question: what is it? Answer:"] * 2, max_new_tokens=5)
        made = sum(g.n_tokens for g in out)
        now["t"] = 2.0
        progress.advance("answers")
        progress.start("update", "update", 1)
        example = Example(input_ids=list(range(5, 15)), labels=list(range(5, 15)))
        cfg = LoraTrainConfig(epochs=1, batch_size=1)
        with fresh_adapter(tiny, cfg, seed=0) as wrapped:
            stats = train(wrapped, [example], cfg, seed=0, pad_id=tiny.tokenizer.pad_token_id, device=tiny.device)
        now["t"] = 6.0
        progress.advance("update")
    lines = capsys.readouterr().err.strip().splitlines()
    assert made > 0 and lines[1].endswith(f"eta 0:00:02, {made / 2:.0f} generated tokens/s"), lines
    assert lines[-1].endswith(f"eta 0:00:00, {stats.tokens / 4:.0f} training tokens/s"), lines
