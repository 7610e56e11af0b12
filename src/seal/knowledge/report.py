"""The knowledge domain's report parts: continual self-edits (forgetting heatmaps, retention and
plasticity per remedy), and continual runs side by side."""

from __future__ import annotations

import json
import math
import statistics

from seal.core.runs import Run
from seal.report import Section, _save, _short, _write_csv, plt, score_label


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




def compare_continual(sec: Section, found: dict[str, dict]) -> bool:
    """Retention and plasticity of the remedies of several continual runs, side by side."""
    cont = {f"{name}: {remedy}": s for name, f in found.items() for remedy, s in (f.get("continual") or {}).items()}
    if len({name for name, f in found.items() if f.get("continual")}) < 2:
        return False
    retention_plasticity_plot(sec, cont, "score", "Runs side by side: retention and plasticity",
                              name="retention_plasticity")
    return True
