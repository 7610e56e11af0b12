"""The `seal` command line: one command group per domain (core/domain.py), plus report and config.

Every domain gets `restem`, `evaluate` and `table` (core/commands.py) and adds its own commands. Every
command that runs work writes a new run directory; `--resume` continues one.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from seal.core.commands import ConfigOpt, SetOpt, domain_commands, guard
from seal.core.config import dump_config, load_config
from seal.core.progress import console
from seal.core.registry import DOMAINS, plugin
from seal.knowledge.cli import register_learning

# peft calls a transformers method that transformers 5 marks as deprecated; not ours to fix.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")

app = typer.Typer(help="SEAL: self-adapting language models.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
for _name in DOMAINS:
    app.add_typer(domain_commands(plugin(_name)), name=_name, help=plugin(_name).help)
register_learning(app, plugin("knowledge"))


@app.command("report")
@guard
def report_cmd(run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
               out: Annotated[Optional[Path], typer.Option(help="Folder for report.md and the figures (default: RUN_DIR/report for one run, a new reports/report-TIME for several).")] = None):
    """Markdown tables and PNG plots (with their data as CSV/JSON) for recorded runs, side by side."""
    from seal.report import write_report

    if out is None:
        if len(run_dirs) == 1:
            out = run_dirs[0] / "report"
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = next(p for n in range(1, 1000)
                       if not (p := Path("reports") / (f"report-{stamp}" + (f"-{n}" if n > 1 else ""))).exists())
    path = write_report(run_dirs, out)
    print(path.read_text(encoding="utf-8"))
    console.print(f"[dim]report written to {path} (figures and their data next to it)[/dim]")


@app.command("config")
@guard
def show_config(config: ConfigOpt = None, set: SetOpt = None,
                schema: Annotated[bool, typer.Option(help="List every field with its type and meaning instead.")] = False,
                domain: Annotated[Optional[str], typer.Option(help=f"{' or '.join(DOMAINS)} (default: the file's, else knowledge)")] = None):
    """Print the resolved configuration (defaults + file + overrides) as YAML."""
    cfg = load_config(config, set or [], domain=domain)
    if not schema:
        print(dump_config(cfg), end="")
        return
    for line in _schema_lines(type(cfg)):
        print(line)


def _schema_lines(model, prefix: str = ""):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _schema_lines(ann, f"{prefix}{name}.")
        else:
            default = field.get_default(call_default_factory=True)
            yield f"{prefix}{name} = {default!r}: {field.description or ''}"


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
