"""Every table on a results page (docs/results/) is one that a project command prints: its header is
a selection of the columns one of the commands has (`--columns` picks and orders them), so that a
reader can regenerate it from a run directory. The commands themselves are run on tiny recorded runs
in the other tests; here, on such a run, `--columns` gives exactly the header asked for.

Tables that no command prints yet are listed in NOT_A_COMMAND_S with the reason; the list must match
the pages exactly, so a new hand-made table fails here, and so does one that has become a command's.
"""

from __future__ import annotations

import ast
import functools

import pytest
from typer.testing import CliRunner

from helpers import ROOT, overrides
from seal.cli import app

PAGES = sorted((ROOT / "docs" / "results").glob("*.md"))

# (page, first header cell, why no command prints it yet)
NOT_A_COMMAND_S: dict[tuple[str, str], str] = {}  # none today: every table is a command's


def tables(page) -> list[tuple[int, list[str]]]:
    """(line, header cells) of every markdown table on a page, outside code blocks."""
    out, fence = [], False
    lines = [line.strip() for line in page.read_text().splitlines()]  # tables inside list items are indented
    for i, line in enumerate(lines[:-1]):
        if line.startswith("```"):
            fence = not fence
        if not fence and line.startswith("|") and lines[i + 1].startswith("|---") and not lines[i - 1].startswith("|"):
            out.append((i + 1, [c.strip() for c in line.strip().strip("|").split("|")]))
    return out


@functools.cache
def producers() -> dict[str, set[str]]:
    """The column headers each command can print, by the command."""
    from typing import get_args

    from seal.arc.choices import by_choice, by_task
    from seal.arc.evaluate import COLUMNS as ARC
    from seal.core.curves import columns as curve_columns
    from seal.core.curves import watched_columns
    from seal.core.noise import COLUMNS as NOISE
    from seal.core.noise import WATCHED_COLUMNS
    from seal.knowledge.config import RewardConfig
    from seal.knowledge.evaluate import columns as knowledge_columns
    from seal.knowledge.learned import COLUMNS as LEARN

    header = lambda cols: {c.header or c.key for c in cols}
    metrics = get_args(RewardConfig.model_fields["metric"].annotation)
    return {
        "seal knowledge table": set().union(*(header(knowledge_columns(m)) for m in metrics)),
        "seal arc table": header(ARC),
        "seal arc choices": header(by_task([]).columns) | header(by_choice([]).columns),
        "seal knowledge curve": header(curve_columns("passage")) | header(watched_columns("passage")),
        "seal knowledge noise": header(NOISE) | header(WATCHED_COLUMNS),
        "seal learn (learned.md)": header(LEARN),
    }


@functools.cache
def benchmark_headers() -> list[set[str]]:
    """The headers the benchmark scripts print (`print("| a | b |")` in benchmarks/, a literal string)."""
    out = []
    for script in (ROOT / "benchmarks").glob("*.py"):
        for node in ast.walk(ast.parse(script.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print" and node.args
                    and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("| ")):
                out.append({c.strip() for c in node.args[0].value.strip().strip("|").split("|")})
    return out


def made_by(cells: list[str], page_tables: list[list[str]]) -> str | None:
    """Which command prints a table with these header cells, or None."""
    for name, known in producers().items():
        if set(cells) <= known:
            return name
    if cells[0] == "task":  # ARC's per-task table: one column per condition of the page's ARC table
        conditions = set()
        for page_cells in page_tables:
            if page_cells[0] == "condition":
                conditions |= set(page_cells)
        if conditions and len(cells) > 1:
            return "seal arc table (per task)"
    if cells[0] == "remedy" or cells[0] == "after step":
        return "seal knowledge table (continual)"
    if any(set(cells) <= known for known in benchmark_headers()):
        return "benchmarks/"
    return None


def test_every_results_table_is_one_a_command_prints():
    unexplained, hand_made = [], set()
    for page in PAGES:
        found = tables(page)
        for line, cells in found:
            key = (page.name, "| " + " | ".join(cells) + " |")
            if key in NOT_A_COMMAND_S:
                hand_made.add(key)
                continue
            if made_by(cells, [c for _, c in found]) is None:
                unexplained.append(f"{page.name}:{line} {key[1]}")
    assert not unexplained, "tables no command prints:\n" + "\n".join(unexplained)
    assert hand_made == set(NOT_A_COMMAND_S), f"listed but not on the pages: {set(NOT_A_COMMAND_S) - hand_made}"


@pytest.fixture(scope="module")
def recorded(tiny_dir, tmp_path_factory):
    """A tiny knowledge restem run with its comparison table."""
    from conftest import tiny_config_at

    runs = tmp_path_factory.mktemp("runs")
    cfg = tiny_config_at(tiny_dir, runs)
    result = CliRunner().invoke(app, ["knowledge", "restem", "--quiet", *overrides(cfg), "--set", "restem.rounds=1",
                                      "--set", "inner_loop.eval_times=2"])
    assert result.exit_code == 0, result.output
    [path] = list(runs.iterdir())
    return path


def header_of(output: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith("| "))
    return [c.strip() for c in line.strip().strip("|").split("|")]


@pytest.mark.parametrize("command, columns", [
    ("table", ["condition", "reward (f1)", "95% CI", "vs passage only (paired, 95% CI)", "F1"]),
    ("curve", ["policy", "mean reward", "vs previous policy (paired, 95% CI)", "passage only"]),
])
def test_columns_picks_and_orders_what_a_page_shows(recorded, command, columns):
    result = CliRunner().invoke(app, ["knowledge", command, str(recorded), "--columns", " | ".join(columns)])
    assert result.exit_code == 0, result.output
    assert header_of(result.output) == columns


def test_an_unknown_column_is_named_with_the_ones_there_are(recorded):
    result = CliRunner().invoke(app, ["knowledge", "table", str(recorded), "--columns", "condition | rewrd"])
    assert result.exit_code == 2
    assert "--columns: no column 'rewrd'" in " ".join(result.output.split())


def test_a_pages_columns_command_names_the_table_under_it():
    """Where a page gives the command with --columns, the first table after it has exactly those columns,
    in that order: the table is what the command prints, not an edited copy."""
    import re

    checked = 0
    for page in PAGES:
        text = page.read_text()
        for m in re.finditer(r'--columns "([^"]+)"', text):
            asked = [c.strip() for c in " ".join(m.group(1).split()).split("|")]
            after = text[m.end():].splitlines()
            header = next(line for line in after if line.startswith("| "))
            assert [c.strip() for c in header.strip().strip("|").split("|")] == asked, f"{page.name}: {m.group(0)[:80]}"
            checked += 1
    assert checked >= 3
