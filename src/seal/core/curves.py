"""Learning curves of the outer loop, read from a restem run's records.

Round r's E-step samples k self-edits per training context from policy r-1 (policy 0 is the base
model) and evaluates them; with restem.evaluate_policy the last policy is evaluated the same way after
its M-step. So every policy has one row, on the same training contexts, and a row can be compared
with the one before it context by context ("vs previous", a paired bootstrap over contexts).

Per policy: the mean, median and best-of-k self-edit reward (a self-edit's reward is the mean of its
repeats); the score before any update and after training on the context alone (reward.baseline
passage) and the share of self-edits that beat it; and what the self-edits look like: their length,
the share that are degenerate, how varied a context's samples are, and how much of the context they
cover (see `text_stats`), since RL on self-edits can collapse them into one short pattern.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from typing import TYPE_CHECKING

from seal.core.stats import bootstrap_ci, mean, paired_difference
from seal.core.tables import Column, Table

if TYPE_CHECKING:
    from seal.core.runs import Run

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def degenerate(text: str, valid: bool = True) -> bool:
    """A self-edit that teaches nothing: unusable for its domain (`valid` false), fewer than 5 words, or
    looping (more than half of its word 3-grams are repeats of another)."""
    tokens = words(text)
    if not valid or len(tokens) < 5:
        return True
    grams = ngrams(tokens, 3)
    return len(grams) >= 10 and len(set(grams)) < 0.5 * len(grams)


def distinct_2(texts: list[str]) -> float | None:
    """Distinct word bigrams over all bigrams of a context's self-edits together: 1 when no two bigrams
    repeat, near 1/k when the k samples are copies of one text."""
    grams = [g for t in texts for g in ngrams(words(t), 2)]
    return len(set(grams)) / len(grams) if grams else None


def coverage(texts: list[str], source: str) -> float | None:
    """Share of the context's content words (distinct words of 4 or more characters, which leaves out
    most function words) that appear in at least one of its self-edits."""
    content = {w for w in words(source) if len(w) >= 4}
    if not content:
        return None
    said = {w for t in texts for w in words(t)}
    return len(content & said) / len(content)


def sources(domain, contexts: list) -> dict[str, str] | None:
    """{context id: its own text} for the coverage column, when the domain's contexts have one."""
    if domain is None:
        return None
    found = {domain.context_id(c): t for c in contexts if (t := domain.source_text(c)) is not None}
    return found or None


def by_round(run: Run) -> dict[int, dict]:
    """{E-step round: {"samples": {cid: record}, "evals": {cid: {sample: {repeat: reward}}},
    "valid": {cid: {sample: bool}}, "pre": {cid: reward}, "alone": {cid: [rewards]} (trained on the context
    alone, recorded under the domain's Domain.context_alone name, e.g. round1/passage/...),
    "watched": {cid: {sample: {repeat: the evaluation's watched reward}}}, and the watched reward of "pre" and
    "alone" as "watched pre" and "watched alone"}."""
    rounds: dict[int, dict] = defaultdict(lambda: {"samples": {}, "evals": defaultdict(lambda: defaultdict(dict)),
                                                   "valid": defaultdict(dict), "pre": {}, "alone": defaultdict(list),
                                                   "watched": defaultdict(lambda: defaultdict(dict)),
                                                   "watched pre": {}, "watched alone": defaultdict(list)})
    for rec in run.records():
        m = re.match(r"^round(\d+)/(samples|eval|pre|[a-z_]+)/", rec["key"])
        if not m:
            continue
        r, part, cid = int(m.group(1)), m.group(2), rec.get("context_id")
        watched = (rec.get("watched") or {}).get("reward")
        if part == "samples" and not rec.get("error"):
            rounds[r]["samples"][cid] = rec
        elif part == "pre":
            rounds[r]["pre"][cid] = rec.get("reward")
            if watched is not None:
                rounds[r]["watched pre"][cid] = watched
        elif rec.get("reward") is not None:
            if part == "eval":
                rounds[r]["evals"][cid][rec["sample"]][rec.get("repeat", 0)] = rec["reward"]
                rounds[r]["valid"][cid][rec["sample"]] = rec.get("valid", True)
                if watched is not None:
                    rounds[r]["watched"][cid][rec["sample"]][rec.get("repeat", 0)] = watched
            elif rec.get("baseline") == part:
                rounds[r]["alone"][cid].append(rec["reward"])
                if watched is not None:
                    rounds[r]["watched alone"][cid].append(watched)
    return dict(sorted(rounds.items()))


def per_context(data: dict) -> dict[str, list[float]]:
    """{context: [each sample's mean reward over its repeats]} for the contexts with an evaluated sample."""
    return {cid: [statistics.fmean(v.values()) for _, v in sorted(samples.items()) if v]
            for cid, samples in data["evals"].items() if any(samples.values())}


def watched_columns(alone: str = "context") -> list[Column]:
    """The curve's columns for a run that records a watched reward beside its reward (`reward.watch_gold`):
    the same policies' self-edits scored by the reward they were not selected by."""
    return [
        Column("watched", "watched reward"),
        Column("watched vs previous", "watched: vs previous policy (paired, 95% CI)", kind="diff"),
        Column("watched vs base", "watched: vs base model (paired, 95% CI)", kind="diff"),
        Column("watched pre", "watched: no update"), Column("watched alone", f"watched: {alone} only"),
        Column("watched vs alone", f"watched: self-edit minus {alone} only (paired, 95% CI)", kind="diff"),
    ]


def columns(alone: str = "context") -> list[Column]:
    """The curve's columns; `alone` names the context in the context-alone ones ("passage only")."""
    return [
        Column("policy", kind="text"), Column("contexts", kind="int"), Column("self-edits", kind="int"),
        Column("mean", "mean reward"), Column("95% CI", kind="ci"), Column("median"), Column("best", "best of k"),
        Column("vs previous", "vs previous policy (paired, 95% CI)", kind="diff"),
        Column("vs base", "vs base model (paired, 95% CI)", kind="diff"),
        Column("kept", "M-step examples", kind="int"), Column("pre", "no update"), Column("alone", f"{alone} only"),
        Column("vs alone", f"self-edit minus {alone} only (paired, 95% CI)", kind="diff"),
        Column("beat", f"beat {alone} only", digits=2),
        Column("tokens", "mean length (tokens)", digits=0), Column("degenerate", digits=2),
        Column("distinct-2", digits=2), Column("coverage", f"{alone} coverage", digits=2),
    ]


def learning_curve(run: Run, sources: dict[str, str] | None = None, bootstrap: int = 2000) -> Table:
    """One row per policy (the E-step of round r is policy r-1's), from the run's records. `sources`
    ({context id: its text}) adds the coverage column."""
    rows, previous, base = [], None, None
    watched_previous = watched_base = None
    last_round = run.config.restem.rounds
    alone_name = next((r["baseline"] for r in run.records() if r.get("baseline") and r["key"].startswith("round")), "context")
    for r, data in by_round(run).items():
        means = per_context(data)
        if not means:
            continue
        ctx_mean = {cid: statistics.fmean(v) for cid, v in means.items()}
        flat = [x for v in means.values() for x in v]
        alone = {cid: statistics.fmean(v) for cid, v in data["alone"].items() if v}
        beat = [x > alone[cid] for cid, v in means.items() if cid in alone for x in v]
        texts = {cid: s["self_edits"] for cid, s in data["samples"].items()}
        tokens = [n for s in data["samples"].values() for n in s.get("n_tokens", [])]
        degenerate_flags = [degenerate(t, data["valid"].get(cid, {}).get(i, True))
                            for cid, ts in texts.items() for i, t in enumerate(ts)]
        policy = r - 1
        name = "base model" if policy == 0 else f"round {policy}" + (" (after its M-step)" if policy == last_round else "")
        rows.append({
            "policy": name, "kind": "self-edits", "round": policy, "contexts": len(means), "self-edits": len(flat),
            "mean": statistics.fmean(flat), "95% CI": bootstrap_ci(list(ctx_mean.values()), bootstrap, run.config.seed),
            "median": statistics.median(flat), "best": statistics.fmean(max(v) for v in means.values()),
            "vs previous": paired_difference(ctx_mean, previous, bootstrap, run.config.seed) if previous else None,
            "vs base": paired_difference(ctx_mean, base, bootstrap, run.config.seed) if base and base is not previous else None,
            "kept": len(done["kept"]) if (done := run.get(f"round{r}/done")) else None,
            "pre": mean(data["pre"].values()), "alone": mean(alone.values()) if alone else None,
            "vs alone": paired_difference(ctx_mean, alone, bootstrap, run.config.seed) if alone else None,
            "beat": mean(beat) if beat else None, "tokens": mean(tokens),
            "degenerate": mean(degenerate_flags), "distinct-2": mean(distinct_2(t) for t in texts.values()),
            "coverage": mean(coverage(t, sources[cid]) for cid, t in texts.items() if cid in sources) if sources else None,
        })
        previous = ctx_mean
        base = base or ctx_mean
        watched = {cid: statistics.fmean(statistics.fmean(v.values()) for v in samples.values() if v)
                   for cid, samples in data["watched"].items() if any(samples.values())}
        if watched:
            seed = run.config.seed
            watched_alone = {cid: statistics.fmean(v) for cid, v in data["watched alone"].items() if v}
            rows[-1].update({
                "watched": mean(watched.values()),
                "watched vs previous": paired_difference(watched, watched_previous, bootstrap, seed) if watched_previous else None,
                "watched vs base": paired_difference(watched, watched_base, bootstrap, seed)
                if watched_base and watched_base is not watched_previous else None,
                "watched pre": mean(data["watched pre"].values()),
                "watched alone": mean(watched_alone.values()) if watched_alone else None,
                "watched vs alone": paired_difference(watched, watched_alone, bootstrap, seed) if watched_alone else None})
            watched_previous, watched_base = watched, watched_base or watched
    shown = columns(alone_name) + (watched_columns(alone_name) if any("watched" in r for r in rows) else [])
    return Table(shown, rows, "mean", "self-edit reward on the training contexts")
