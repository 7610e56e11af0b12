"""Comparison tables, whichever domain they come from: one writer for markdown and CSV.

A domain builds a `Table` from a run's records: its columns, one dict per row (a condition), and which
column is the score. Every row also carries `kind` (what was trained before scoring: "no-update",
"passage", "self-edits", "teacher", "oracle") and `round` (0 for the base model, r for the round-r
policy, None for rows that belong to no round), taken from the records, so that reports never parse
condition names.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, replace
from pathlib import Path


@dataclass
class Column:
    key: str
    header: str | None = None  # shown instead of the key
    kind: str = "float"  # text | int | float | ci (a (low, high) pair; two CSV columns) | diff ((mean, low, high); three)
    digits: int = 3
    hidden: bool = False  # left out of the table and its files; printed when --columns names it

    def format(self, value) -> str:
        if value is None:
            return "-"
        if self.kind == "ci":
            return "-" if math.isnan(value[0]) else f"[{value[0]:.{self.digits}f}, {value[1]:.{self.digits}f}]"
        if self.kind == "diff":
            mean, low, high = value
            ci = "" if math.isnan(low) else f" [{low:+.{self.digits}f}, {high:+.{self.digits}f}]"
            return f"{mean:+.{self.digits}f}{ci}"
        if self.kind in ("text", "int"):
            return str(value)
        return f"{value:.{self.digits}f}"


@dataclass
class Table:
    columns: list[Column]
    rows: list[dict]
    score: str  # the key of the score column, drawn by reports
    score_label: str  # what that score is, for axis labels
    extra: str = ""  # markdown written after the table (e.g. a per-task breakdown)
    notes: list[str] = field(default_factory=list)  # lines printed under the table

    def select(self, spec: str | None) -> Table:
        """The table with only the columns `spec` names, in its order ("condition | F1 | 95% CI": headers
        or keys, separated by |, as a markdown header reads); None: the table as it is."""
        if not spec:
            return self
        by_name = {name: replace(c, hidden=False) for c in self.columns for name in (c.key, c.header) if name}
        chosen = []
        for name in (n.strip() for n in spec.split("|")):
            if not name:
                continue
            if name not in by_name:
                from seal.core.errors import ConfigError

                raise ConfigError(f"--columns: no column {name!r}; this table has: "
                                  + " | ".join(c.header or c.key for c in self.columns))
            chosen.append(by_name[name])
        return Table(chosen, self.rows, self.score, self.score_label, self.extra, self.notes)

    @property
    def shown(self) -> list[Column]:
        return [c for c in self.columns if not c.hidden]

    def markdown(self) -> str:
        cols = self.shown
        lines = ["| " + " | ".join(c.header or c.key for c in cols) + " |",
                 "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(c.format(row.get(c.key)) for c in cols) + " |" for row in self.rows]
        return "\n".join(lines)

    def csv(self) -> str:
        header = []
        for c in self.shown:
            if c.kind == "ci":
                header += ["ci_low", "ci_high"]
            elif c.kind == "diff":
                header += [c.key, f"{c.key} ci_low", f"{c.key} ci_high"]
            else:
                header.append(c.key)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header + ["kind", "round"])
        for row in self.rows:
            cells = []
            for c in self.shown:
                if c.kind in ("ci", "diff"):
                    cells += list(row.get(c.key) or (None,) * (2 if c.kind == "ci" else 3))
                else:
                    cells.append(row.get(c.key))
            writer.writerow(cells + [row.get("kind"), row.get("round")])
        return buf.getvalue()

    def write(self, folder: Path, name: str = "table") -> str:
        """Write NAME.md (the table, then `extra`) and NAME.csv into `folder`; returns the markdown."""
        md = self.markdown()
        (folder / f"{name}.md").write_text(md + ("\n\n" + self.extra if self.extra else "") + "\n", encoding="utf-8")
        (folder / f"{name}.csv").write_text(self.csv(), encoding="utf-8")
        return md
