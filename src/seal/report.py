"""Reports: markdown tables and PNG plots from recorded run directories, each plot's data beside it.

`seal report RUN_DIR [RUN_DIR ...]` reads only the run directories (config.yaml, meta.json,
records.jsonl), so it works on finished, interrupted or copied runs alike. For any domain:

- a comparison table (the domain's `table`): the table, every condition's score with its 95%
  interval, and the score per ReST-EM round for the rows that exist for each round (the policy with
  no update, and with its own self-edits), read from the rows' `kind` and `round`;
- ReST-EM rounds: the distribution of self-edit rewards per round, the learning curve of the outer
  loop (core/curves.py) and, with eval_times >= 2, the reward noise (core/noise.py).

A domain adds its own parts (`DomainPlugin.report`, e.g. the knowledge domain's continual runs).

With several runs, each gets its section and the runs are also compared side by side.
Every figure `X.png` comes with `X.csv` or `X.json` holding the numbers it shows.
"""

from __future__ import annotations

import csv
import math
import statistics
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt

from seal.core.config import ConfigError
from seal.core.registry import DOMAINS, plugin
from seal.core.runs import Run


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


class Section:
    """The markdown and the files of one part of a report."""

    def __init__(self, out: Path, prefix: str):
        self.out, self.prefix, self.lines = out, prefix, []
        self.found: dict = {}  # what later sections (runs side by side) use

    def path(self, name: str) -> Path:
        return self.out / f"{self.prefix}{name}"

    def figure(self, name: str, caption: str, data_name: str) -> None:
        self.lines += [f"![{caption}]({self.prefix}{name})", "", f"*{caption}* (data: `{self.prefix}{data_name}`)", ""]


# --- comparison tables (every domain) ----------------------------------------------------------------
def score_label(run: Run) -> str:
    return plugin(run.config.domain).score_label(run.config)


def conditions_plot(sec: Section, run: Run, rows: list[dict], score: str, label: str) -> None:
    names = [r["condition"] for r in rows]
    values = [r[score] if r[score] is not None else math.nan for r in rows]
    lows = [r["95% CI"][0] for r in rows]
    highs = [r["95% CI"][1] for r in rows]
    _write_csv(sec.path("conditions.csv"), ["condition", score, "ci_low", "ci_high"],
               [[n, v, lo, hi] for n, v, lo, hi in zip(names, values, lows, highs)])
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.5))
    err = [[max(0.0, v - lo) if not math.isnan(lo) else 0 for v, lo in zip(values, lows)],
           [max(0.0, hi - v) if not math.isnan(hi) else 0 for v, hi in zip(values, highs)]]
    ax.barh(range(len(rows)), values, xerr=err, color="#4c72b0", capsize=3)
    ax.set_yticks(range(len(rows)), [_short(n, 40) for n in names])
    ax.invert_yaxis()
    ax.set_xlabel(label)
    ax.set_title(f"{run.path.name}\nscore per condition (95% bootstrap CI over contexts)", fontsize=10)
    _save(fig, sec.path("conditions.png"))
    sec.figure("conditions.png", "Score per condition, with 95% bootstrap intervals", "conditions.csv")


SERIES = {"no-update": "no update", "passage": "on the passage alone", "self-edits": "with its self-edits"}


def round_series(rows: list[dict], score: str) -> dict[str, dict[int, float]]:
    """{"no update": {round: score}, "with its self-edits": {round: score}} from the rows' kind and round
    (round 0: the base model), and "on the passage alone" where the policies have such rows (the base
    model's "passage only" row is its round 0); with several policies, one set of series each
    ("... (rloo)"), each starting from the base model's rows."""
    series: dict[str, dict[int, float]] = {}
    policies = sorted({row.get("policy") or "" for row in rows if row.get("round")})
    for row in rows:
        name, r = SERIES.get(row.get("kind")), row_round(row, rows)
        if name is not None and r == 0 and len(policies) > 1:
            for label in policies:
                series.setdefault(f"{name} ({label})", {})[0] = row[score]
            continue
        if name is not None and row.get("policy"):
            name = f"{name} ({row['policy']})"
        if name is not None and r is not None:
            series.setdefault(name, {})[r] = row[score]
    return series


def row_round(row: dict, rows: list[dict]) -> int | None:
    """A row's round; the base model's passage-only row counts as round 0 when a policy has one too."""
    if row.get("kind") == "passage" and row.get("round") is None:
        return 0 if any(other.get("kind") == "passage" and other.get("round") for other in rows) else None
    return row.get("round")


def rounds_plot(sec: Section, run: Run, rows: list[dict], score: str, label: str) -> None:
    series = round_series(rows, score)
    if not any(r > 0 for s in series.values() for r in s):
        return
    others = [r for r in rows if row_round(r, rows) is None or r.get("kind") not in SERIES]
    data = [[name, r, v] for name, s in series.items() for r, v in sorted(s.items())]
    data += [[o["condition"], "", o[score]] for o in others]
    _write_csv(sec.path("rounds.csv"), ["series", "round", score], data)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, s in series.items():
        xs = sorted(s)
        ax.plot(xs, [s[x] for x in xs], marker="o", label=f"policy of the round, {name}")
    for i, o in enumerate(others):
        if o[score] is not None:
            ax.axhline(o[score], ls="--", lw=1, color=f"C{i + 2}", label=_short(o["condition"], 40))
    ax.set_xlabel("ReST-EM round (0 = base model)")
    ax.set_ylabel(label)
    ax.set_xticks(sorted({r for s in series.values() for r in s}))
    ax.set_title(f"{run.path.name}\nheld-out score per ReST-EM round", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, sec.path("rounds.png"))
    sec.figure("rounds.png", "Held-out score per ReST-EM round (dashed: conditions without a round)", "rounds.csv")


def reward_distributions(sec: Section, run: Run) -> None:
    """Self-edit rewards per ReST-EM round (training contexts), and the pre-update level."""
    from seal.core.curves import by_round

    rounds_data = {r: d for r, d in by_round(run).items() if d["evals"]}
    rewards = {r: [(cid, s, t, x) for cid, samples in d["evals"].items() for s, repeats in samples.items()
                   for t, x in repeats.items()] for r, d in rounds_data.items()}
    pre = {r: [x for x in d["pre"].values() if x is not None] for r, d in rounds_data.items()}
    if not rewards:
        return
    rounds = sorted(rewards)
    _write_csv(sec.path("rewards.csv"), ["round", "context", "sample", "repeat", "reward"],
               [[r, *row] for r in rounds for row in rewards[r]])
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(rounds) + 2), 4.2))
    values = [[row[-1] for row in rewards[r]] for r in rounds]
    ax.boxplot(values, positions=range(len(rounds)), widths=0.5, showfliers=False)
    for i, v in enumerate(values):
        jitter = [i + 0.18 * ((j * 0.618) % 1 - 0.5) for j in range(len(v))]
        ax.scatter(jitter, v, s=10, alpha=0.6, color="#4c72b0", label="self-edit" if i == 0 else None)
        if pre.get(rounds[i]):
            ax.scatter([i + 0.32], [statistics.fmean(pre[rounds[i]])], marker="D", s=40, color="#c44e52",
                       label="policy before any update (mean)" if i == 0 else None)
    ax.set_xticks(range(len(rounds)), ["base model" if r == 1 else f"round-{r - 1} policy" for r in rounds])
    ax.set_ylabel(f"reward: {score_label(run)}", fontsize=9)
    ax.set_title(f"{run.path.name}\nrewards of each policy's sampled self-edits", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, sec.path("rewards.png"))
    sec.figure("rewards.png", "Reward of every sampled self-edit, per policy (training contexts; the CSV's round is "
               "the E-step's: policy round - 1)", "rewards.csv")


def curve_section(sec: Section, run: Run) -> None:
    """The outer loop's learning curve (core/curves.py): its table, and the mean and best-of-k reward of
    each policy's own self-edits with 95% intervals, beside the no-update and passage-only levels."""
    from seal.core.commands import run_contexts
    from seal.core.curves import learning_curve, sources

    curve = learning_curve(run, sources(*run_contexts(run)))
    if not curve.rows:
        return
    rows = curve.rows
    sec.found["curve"] = rows
    sec.lines += ["### Learning curve (training contexts)", "", curve.markdown(), ""]
    keys = ["mean", "best", "pre", "alone"]
    alone = next(c.header for c in curve.columns if c.key == "alone")  # "passage only"
    _write_csv(sec.path("curve.csv"), ["policy", "mean", "best", "pre", alone.removesuffix(" only"), "ci_low", "ci_high"],
               [[r["round"], *[r[k] for k in keys], *r["95% CI"]] for r in rows])
    xs = [r["round"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    value = lambda r, k: math.nan if r[k] is None else r[k]
    means = [value(r, "mean") for r in rows]
    err = [[max(0.0, m - r["95% CI"][0]) if not math.isnan(r["95% CI"][0]) else 0 for m, r in zip(means, rows)],
           [max(0.0, r["95% CI"][1] - m) if not math.isnan(r["95% CI"][1]) else 0 for m, r in zip(means, rows)]]
    ax.errorbar(xs, means, yerr=err, marker="o", capsize=3, label="mean self-edit reward (95% CI)")
    ax.plot(xs, [value(r, "best") for r in rows], marker="^", ls=":", label="best of k")
    for k, label, style in (("alone", alone, "--"), ("pre", "no update", "-.")):
        if any(r[k] is not None for r in rows):
            ax.plot(xs, [value(r, k) for r in rows], ls=style, marker=".", label=label)
    ax.set_xticks(xs)
    ax.set_xlabel("policy (0 = base model; r = after round r's M-step)")
    ax.set_ylabel(textwrap.fill(f"reward: {score_label(run)}", 40), fontsize=8)
    ax.set_title(f"{run.path.name}\nlearning curve: each policy's self-edits on the training contexts", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, sec.path("curve.png"))
    sec.figure("curve.png", "Learning curve of the outer loop (training contexts)", "curve.csv")


def noise_section(sec: Section, run: Run) -> None:
    """How noisy the rewards were (core/noise.py), when self-edits were trained more than once, and how
    they rank self-edits by a watched reward, when one was recorded."""
    from seal.core.noise import noise_table, watched_table

    for title, table in [("Reward noise (training contexts)", noise_table([run])),
                         ("The reward against the watched reward (training contexts)", watched_table([run]))]:
        if table.rows:
            sec.lines += [f"### {title}", "", table.markdown(), "", *[f"*{n}*" for n in table.notes], ""]


# --- the report ---------------------------------------------------------------------------------------
def open_run(path: Path) -> Run:
    if not (path / "meta.json").is_file():
        raise ConfigError(f"{path}: not a run directory (no meta.json)")
    return Run.resume(path)


def run_section(out: Path, run: Run, prefix: str) -> tuple[list[str], dict]:
    sec = Section(out, prefix)
    sec.found["command"] = run.command
    sec.lines += [f"## {run.path.name} ({run.command})", ""]
    heading = len(sec.lines)
    p = plugin(run.config.domain)
    if not p.report(run, sec):  # the domain's own report for this run, or the comparison table
        table = p.table(run)
        if table.rows:
            sec.lines += [table.markdown(), ""]
            conditions_plot(sec, run, table.rows, table.score, table.score_label)
            rounds_plot(sec, run, table.rows, table.score, table.score_label)
            sec.found.update(rows=table.rows, score=table.score)
        reward_distributions(sec, run)
        curve_section(sec, run)
        noise_section(sec, run)
    if len(sec.lines) == heading:
        sec.lines.append(f"Nothing to report in this '{run.command}' run yet (its records are in records.jsonl).\n")
    return sec.lines, sec.found


def compare_section(out: Path, found: dict[str, dict]) -> list[str]:
    sec = Section(out, "compare_")
    tables = {name: f for name, f in found.items() if "rows" in f}
    lines = []
    if len(tables) > 1:
        conditions = list(dict.fromkeys(r["condition"] for f in tables.values() for r in f["rows"]))
        value = {(name, r["condition"]): r[f["score"]] for name, f in tables.items() for r in f["rows"]}
        fmt = lambda v: "-" if v is None else f"{v:.3f}"
        lines += ["| condition | " + " | ".join(tables) + " |", "|---|" + "---|" * len(tables)]
        lines += [f"| {c} | " + " | ".join(fmt(value.get((n, c))) for n in tables) + " |" for c in conditions]
        lines.append("")
        _write_csv(sec.path("conditions.csv"), ["condition", *tables],
                   [[c, *[value.get((n, c)) for n in tables]] for c in conditions])
        fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(conditions) * max(1, len(tables) / 2) + 1.5))
        height = 0.8 / len(tables)
        for k, name in enumerate(tables):
            ys = [i + (k - (len(tables) - 1) / 2) * height for i in range(len(conditions))]
            vals = [value.get((name, c)) for c in conditions]
            ax.barh(ys, [math.nan if v is None else v for v in vals], height=height, label=name)
        ax.set_yticks(range(len(conditions)), [_short(c, 40) for c in conditions])
        ax.invert_yaxis()
        ax.set_xlabel("score (each run's own metric)")
        ax.set_title("Runs side by side: score per condition", fontsize=10)
        ax.legend(fontsize=8)
        _save(fig, sec.path("conditions.png"))
        sec.figure("conditions.png", "Runs side by side, score per condition", "conditions.csv")
    for name in DOMAINS:
        plugin(name).compare(sec, found)
    return (["## Side by side", ""] + lines + sec.lines) if (lines or sec.lines) else []


def write_report(run_dirs: list[Path], out: Path) -> Path:
    """Write report.md and its figures into `out`; returns the path of report.md."""
    runs = [open_run(Path(p)) for p in run_dirs]
    out.mkdir(parents=True, exist_ok=True)
    names = [r.path.name for r in runs]
    if len(set(names)) < len(names):  # the same name from two places: number them
        names = [f"{i + 1}-{n}" for i, n in enumerate(names)]
    lines = ["# Report", "", "Runs: " + ", ".join(f"`{r.path}`" for r in runs), ""]
    found = {}
    for name, run in zip(names, runs):
        section, found[name] = run_section(out, run, "" if len(runs) == 1 else f"{name}_")
        lines += section
    if len(runs) > 1:
        lines += compare_section(out, found)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
