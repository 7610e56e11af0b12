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
