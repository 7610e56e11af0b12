"""Reports: markdown tables and PNG plots from recorded run directories, each plot's data beside it.

`seal report RUN_DIR [RUN_DIR ...]` reads only the run directories (config.yaml, meta.json,
records.jsonl), so it works on finished, interrupted or copied runs alike. What it draws depends on
the run:

- a comparison table (knowledge restem / evaluate / cpt, ARC restem / evaluate): the table, every
  condition's score with its 95% interval, and the score per ReST-EM round for the rows that exist
  for each round (the policy with no update, and with its own self-edits);
- ReST-EM rounds: the distribution of self-edit rewards per round;
- continual self-edits: the forgetting heatmap (mean over sequences) per remedy, and retention and
  plasticity per remedy with their spread over sequences.

With several runs, each gets its section and the runs are also compared side by side.
Every figure `X.png` comes with `X.csv` or `X.json` holding the numbers it shows.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from seal.config import ConfigError  # noqa: E402
from seal.core.runs import Run  # noqa: E402

TABLE_COMMANDS = {"restem", "evaluate", "cpt", "arc-restem", "arc-evaluate"}


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

    def path(self, name: str) -> Path:
        return self.out / f"{self.prefix}{name}"

    def figure(self, name: str, caption: str, data_name: str) -> None:
        self.lines += [f"![{caption}]({self.prefix}{name})", "", f"*{caption}* (data: `{self.prefix}{data_name}`)", ""]


# --- comparison tables (both domains) ----------------------------------------------------------------
def table_of(run: Run) -> tuple[list[dict], str, str]:
    """(rows, markdown, score column) of a run's comparison table, whichever domain it is."""
    if run.command.startswith("arc-"):
        from seal.arc.evaluate import markdown_table, table_rows
        rows = table_rows(run, run.config)
        return rows, markdown_table(rows), "success"
    from seal.knowledge.evaluate import markdown_table, table_rows
    rows = table_rows(run, run.config)
    return rows, markdown_table(rows, run.config), "reward"


def score_label(run: Run) -> str:
    if run.command.startswith("arc-"):
        return "success rate (solved pairs)"
    metric = run.config.reward.metric
    return "mean gold-answer token probability" if metric == "loglik" else f"{metric} (0-1)"


def conditions_plot(sec: Section, run: Run, rows: list[dict], score: str) -> None:
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
    ax.set_xlabel(score_label(run))
    ax.set_title(f"{run.path.name}\nscore per condition (95% bootstrap CI over contexts)", fontsize=10)
    _save(fig, sec.path("conditions.png"))
    sec.figure("conditions.png", "Score per condition, with 95% bootstrap intervals", "conditions.csv")


# Which rows belong to which round: the base model is round 0.
_ROUND_PATTERNS = [
    (re.compile(r"^(base model, no update|ICL, no TTT)$"), "no update", 0),
    (re.compile(r"^(passage \+ base self-edits|TTT \+ base self-edits \(no RL\))$"), "with its self-edits", 0),
    (re.compile(r"^SEAL round (\d+), (no update|ICL no TTT)$"), "no update", None),
    (re.compile(r"^(?:passage|TTT) \+ SEAL round (\d+) self-edits$"), "with its self-edits", None),
]


def round_series(rows: list[dict], score: str) -> dict[str, dict[int, float]]:
    """{"no update": {round: score}, "with its self-edits": {round: score}} from the condition names."""
    series: dict[str, dict[int, float]] = {}
    for row in rows:
        for pattern, series_name, fixed in _ROUND_PATTERNS:
            m = pattern.match(row["condition"])
            if m:
                r = fixed if fixed is not None else int(m.group(1))
                series.setdefault(series_name, {})[r] = row[score]
    return series


def rounds_plot(sec: Section, run: Run, rows: list[dict], score: str) -> None:
    series = round_series(rows, score)
    if not any(r > 0 for s in series.values() for r in s):
        return
    others = [r for r in rows if not any(p.match(r["condition"]) for p, _, _ in _ROUND_PATTERNS)]
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
    ax.set_ylabel(score_label(run))
    ax.set_xticks(sorted({r for s in series.values() for r in s}))
    ax.set_title(f"{run.path.name}\nheld-out score per ReST-EM round", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, sec.path("rounds.png"))
    sec.figure("rounds.png", "Held-out score per ReST-EM round (dashed: conditions without a round)", "rounds.csv")


def reward_distributions(sec: Section, run: Run) -> None:
    """Self-edit rewards per ReST-EM round (training contexts), and the pre-update level."""
    rewards: dict[int, list[tuple]] = {}
    pre: dict[int, list[float]] = {}
    for rec in run.records():
        m = re.match(r"^round(\d+)/(eval|pre)/", rec["key"])
        if not m or rec.get("reward") is None:
            continue
        r = int(m.group(1))
        if m.group(2) == "eval":
            rewards.setdefault(r, []).append((rec["context_id"], rec.get("sample"), rec.get("repeat"), rec["reward"]))
        else:
            pre.setdefault(r, []).append(rec["reward"])
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
    ax.set_xticks(range(len(rounds)), [f"round {r}" for r in rounds])
    ax.set_ylabel(f"reward: {score_label(run)}", fontsize=9)
    ax.set_title(f"{run.path.name}\nrewards of the sampled self-edits per round", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, sec.path("rewards.png"))
    sec.figure("rewards.png", "Reward of every sampled self-edit per ReST-EM round (training contexts)", "rewards.csv")


# --- continual self-edits -----------------------------------------------------------------------------
def continual_section(sec: Section, run: Run) -> dict:
    from seal.knowledge.continual import matrix_table, summary, summary_table

    summ = summary(run)
    if not summ:
        sec.lines.append("No continual steps recorded yet.\n")
        return summ
    metric = run.config.reward.metric
    sec.lines += [summary_table(summ, metric), ""]
    sec.path("forgetting.json").write_text(json.dumps(
        {r: dict(mean=s["mean"], sd=s["sd"], before=s["start_by_position"]) for r, s in summ.items()}, indent=1),
        encoding="utf-8")
    remedies = list(summ)
    T = len(next(iter(summ.values()))["mean"])
    values = [v for s in summ.values() for row in s["mean"] + [[m for m, _ in s["start_by_position"]]]
              for v in row if v is not None]
    vmin, vmax = (min(values), max(values)) if values else (0, 1)
    fig, axes = plt.subplots(1, len(remedies), figsize=(3.3 * len(remedies) + 1, 3.4), squeeze=False)
    for k, (ax, remedy) in enumerate(zip(axes[0], remedies)):
        # row 0: the starting model on each passage; row t: after step t
        before = [m if m is not None else math.nan for m, _ in summ[remedy]["start_by_position"]]
        mean = [before] + [[math.nan if v is None else v for v in row] for row in summ[remedy]["mean"]]
        im = ax.imshow(mean, vmin=vmin, vmax=vmax, cmap="viridis")
        for t in range(T + 1):
            for j in range(T if t == 0 else t):
                if not math.isnan(mean[t][j]):
                    ax.text(j, t, f"{mean[t][j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if mean[t][j] < (vmin + vmax) / 2 else "black")
        ax.axhline(0.5, color="white", lw=2)
        ax.set_xticks(range(T), [str(j + 1) for j in range(T)])
        ax.set_yticks(range(T + 1), ["before"] + [str(t + 1) for t in range(T)] if k == 0 else [])
        ax.set_xlabel("passage (order of its edit)")
        if k == 0:
            ax.set_ylabel("after step")
        ax.set_title(remedy)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=score_label(run))
    fig.suptitle(f"{run.path.name}: score on each passage after each step (mean over sequences)", fontsize=10)
    fig.savefig(sec.path("forgetting.png"), dpi=120, bbox_inches="tight")
    plt.close(fig)
    sec.figure("forgetting.png", "Forgetting heatmap per remedy: row t = after step t, column j = passage j; "
               "top row: the starting model",
               "forgetting.json")
    for remedy in remedies:
        sec.lines += [f"**{remedy}** (mean ± sd over sequences):", "", matrix_table(summ[remedy]), ""]
    retention_plasticity_plot(sec, {remedy: summ[remedy] for remedy in remedies}, score_label(run),
                              f"{run.path.name}\nretention and plasticity per remedy")
    return summ


def retention_plasticity_plot(sec: Section, summaries: dict[str, dict], ylabel: str, title: str,
                              name: str = "retention_plasticity") -> None:
    labels = list(summaries)
    rows = [[label, *summaries[label]["retention"], *summaries[label]["plasticity"], *summaries[label]["start"]]
            for label in labels]
    _write_csv(sec.path(f"{name}.csv"), ["remedy", "retention", "retention_sd", "plasticity", "plasticity_sd",
                                         "starting_model", "starting_model_sd"], rows)
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(labels) + 2), 4))
    x = range(len(labels))
    for k, (key, colour) in enumerate((("retention", "#4c72b0"), ("plasticity", "#dd8452"))):
        vals = [summaries[lb][key][0] if summaries[lb][key][0] is not None else math.nan for lb in labels]
        sds = [summaries[lb][key][1] or 0 for lb in labels]
        ax.bar([i + (k - 0.5) * 0.38 for i in x], vals, width=0.38, yerr=sds, capsize=3, color=colour, label=key)
    starts = [summaries[lb]["start"][0] for lb in labels if summaries[lb]["start"][0] is not None]
    if starts:
        ax.axhline(statistics.fmean(starts), ls="--", color="gray", lw=1, label="starting model, same passages")
    # "run: remedy" labels (runs side by side) show the remedy over the run's time stamp
    ticks = [f"{lb.split(': ', 1)[1]}\n{lb.split(': ', 1)[0][-15:]}" if ": " in lb else _short(lb, 24) for lb in labels]
    ax.set_xticks(list(x), ticks, fontsize=8 if len(labels) > 6 else 10)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, sec.path(f"{name}.png"))
    sec.figure(f"{name}.png", "Retention (earlier passages after the last step) and plasticity (each passage "
               "right after its own step); bars: mean over sequences, whiskers: sd", f"{name}.csv")


# --- the report ---------------------------------------------------------------------------------------
def open_run(path: Path) -> Run:
    if not (path / "meta.json").is_file():
        raise ConfigError(f"{path}: not a run directory (no meta.json)")
    return Run.resume(path)


def run_section(out: Path, run: Run, prefix: str) -> tuple[list[str], dict]:
    sec = Section(out, prefix)
    found: dict = {"command": run.command}
    sec.lines += [f"## {run.path.name} ({run.command})", ""]
    if run.command in TABLE_COMMANDS:
        heading = len(sec.lines)
        rows, md, score = table_of(run)
        if rows:
            sec.lines += [md, ""]
            conditions_plot(sec, run, rows, score)
            rounds_plot(sec, run, rows, score)
            found.update(rows=rows, score=score)
        reward_distributions(sec, run)
        if len(sec.lines) == heading:
            sec.lines.append("Nothing recorded yet.\n")
    elif run.command == "continual":
        found["continual"] = continual_section(sec, run)
    else:
        sec.lines.append(f"No report for '{run.command}' runs (their records are in records.jsonl).\n")
    return sec.lines, found


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
    cont = {f"{name}: {remedy}": s for name, f in found.items() for remedy, s in (f.get("continual") or {}).items()}
    if len({name for name, f in found.items() if f.get("continual")}) > 1:
        retention_plasticity_plot(sec, cont, "score", "Runs side by side: retention and plasticity",
                                  name="retention_plasticity")
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
