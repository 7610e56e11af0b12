"""How a domain plugs into the core: two declared interfaces, and the registry of domains.

- `Domain` is what the ReST-EM core (core/restem.py) and the inner loop (core/inner_loop.py) ask of a
  domain: what a context is called, the prompt that asks for a self-edit, the score before any update,
  what a self-edit becomes as training examples (`prepare`), and how updated models are scored
  (`score_updated`). Training, with every objective and on both paths, is the core's.
  Optional capabilities are declared as class attributes (`batched`, `checks_self_edits`), never
  probed for.
- `DomainPlugin` is everything else a domain owns: its root configuration, how contexts are loaded,
  its comparison table (rows from a run's records), its report sections and its own commands. The
  command line, the report and the library API reach a domain only through its plugin.

A new domain is a folder with a `plugin.py` whose `PLUGIN` is a `DomainPlugin`, named in
`core/registry.py`'s `DOMAINS`.
Plugin modules import nothing heavy at module level, so that `seal config` and `--help` stay fast.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import typer

    from seal.core.config import LoraTrainConfig, Section
    from seal.core.inner_loop import Update
    from seal.core.models import LoadedModel
    from seal.core.objectives import Objective, TeacherCache
    from seal.core.progress import Progress
    from seal.core.runs import Run
    from seal.core.tables import Table


class Domain(ABC):
    """A domain's inner loop, as core/restem.py uses it. A context is whatever the domain learns from
    (a passage, a task); a self-edit is the text the model writes for it."""

    name: ClassVar[str]
    batched: ClassVar[bool] = False  # implements evaluate_batch (many self-edits in one adapter bank)
    checks_self_edits: ClassVar[bool] = False  # implements self_edit_ok: unusable samples are re-sampled
    # The reward.baseline value (if the domain's configuration allows one) that means "trained on the
    # context alone": ReST-EM then also trains each context with no self-edit, with the samples' seeds,
    # and records it under round{r}/{that name}/{context} (knowledge: "passage").
    context_alone: ClassVar[str | None] = None

    @property
    def prefill(self) -> str:
        """Text that starts every self-edit (after the chat template's assistant turn)."""
        return ""

    @abstractmethod
    def context_id(self, context: Any) -> str: ...

    def context_group(self, context: Any) -> str:
        """The unit that must not be split between training and scoring (an article); default: the context."""
        return self.context_id(context)

    @abstractmethod
    def self_edit_prompt(self, context: Any) -> str: ...

    def source_text(self, context: Any) -> str | None:
        """The context's own text, if it has one (a passage): how much of it self-edits cover is part of
        the learning curve (core/curves.py)."""
        return None

    @abstractmethod
    def pre_update(self, lm: LoadedModel, context: Any) -> dict:
        """The model's score on the context before any update; the result has a "reward"."""

    # --- the inner loop (core/inner_loop.py drives it; a domain supplies what is its own) -------
    teacher_cache: TeacherCache | None = None  # where distillation teachers are cached (set per run)

    @property
    def inner_loop_config(self):
        """The inner-loop section (recipe, objective, batching) of the domain's configuration."""
        return self.config.inner_loop

    @property
    def objective(self) -> Objective:
        """The loss every update trains with (inner_loop.objective and inner_loop.distill)."""
        from seal.core.inner_loop import objective_of

        return objective_of(self.inner_loop_config)

    @abstractmethod
    def prepare(self, lm: LoadedModel, context: Any, self_edit: str | None, seed: int, pre: dict) -> Update:
        """What the self-edit becomes (None: the context alone): its training examples and recipe, or an
        unusable record (a zero reward with the reason). Never raises for bad model output. The record's
        fields are the domain's own: the core adds round, context_id, sample, repeat, seed, self_edit,
        seconds and batch itself (tests/core/test_toy_domain.py is a whole domain in one file)."""

    @abstractmethod
    def score_updated(self, lm: LoadedModel, contexts: list, adapters: list[int] | None) -> list[dict]:
        """Score each updated model on its context: with `adapters`, context i through adapter i of the
        installed adapter bank; None: the one adapter `lm.model` carries now."""

    def finish(self, record: dict, stats, scored: dict, pre: dict) -> dict:
        """The result of a trained update: its record, the training stats and the score."""
        return dict(record, valid=True, train=stats.as_dict(), **scored)

    def teacher_prefix(self, lm: LoadedModel, context: Any) -> list[int]:
        """Token ids the distillation teacher reads before each training item: the context as the model
        sees it in context. Domains without one refuse distilling objectives."""
        raise NotImplementedError(f"the {self.name} domain has no in-context teacher: use inner_loop.objective lm")

    def precision(self, lm: LoadedModel) -> str:
        from seal.core.generation import resolve_precision

        return resolve_precision(self.config.model.precision, lm.device)

    def evaluate(self, lm: LoadedModel, context: Any, self_edit: str | None, seed: int, pre: dict) -> dict:
        """Train a fresh adapter on the self-edit (None: the context alone), score, remove the adapter.
        Never raises for bad model output: an unusable self-edit is a recorded zero reward."""
        from seal.core.inner_loop import train_updates

        return train_updates(lm, self, [(context, self_edit, seed, pre)], batched=False)[0]

    def evaluate_batch(self, lm: LoadedModel, items: list[tuple]) -> list[dict]:
        """`evaluate` for many (context, self_edit, seed, pre) at once, results equal to one at a time:
        their adapters trained together in one adapter bank (`batched` domains)."""
        if not self.batched:
            raise NotImplementedError(f"the {self.name} domain does not declare batched evaluation")
        from seal.core.inner_loop import train_updates

        return train_updates(lm, self, items, batched=True)

    def self_edit_ok(self, text: str) -> bool:
        """Whether a sampled self-edit is usable at all (used when `checks_self_edits` is declared)."""
        return True


class DomainPlugin(ABC):
    """One experiment family as the command line, the report and the library API see it."""

    name: ClassVar[str]  # the `domain` field of its configurations, and its command group
    help: ClassVar[str]  # one line for `seal --help`
    run_prefix: ClassVar[str] = ""  # prefix of its run commands in run directories ("arc-restem")
    contexts_word: ClassVar[str] = "contexts"  # "passages", "tasks": for messages
    group_word: ClassVar[str] = "a group"  # what Domain.context_group is, for messages ("an article")
    input_errors: ClassVar[tuple[type[Exception], ...]] = ()  # its bad-input errors: one line, no traceback
    # Fields that choose the held-out contexts: `evaluate --resume --set` may change them to add contexts
    # to a table, never to drop one the run has results for.
    held_fields: ClassVar[tuple[str, ...]] = ()
    # The commands that farm their work out to `distributed.workers`; every other command refuses a
    # worker count rather than running everything here without a word.
    distributes: ClassVar[tuple[str, ...]] = ("restem", "evaluate")
    # Per command, the configuration sections (or section.field) it never reads: a field set there is
    # named in a warning (core/commands.py, `unread_settings`), never silently ignored.
    unread: ClassVar[dict[str, tuple[str, ...]]] = {}
    # For `restem --reuse-round1`: the domain's own sections (or section.field) that do not change round
    # 1's E-step (`round1_free`), and those that change its evaluations but not its samples
    # (`samples_free`: the self-edits are taken, the evaluations redone). The core adds its own.
    round1_free: ClassVar[tuple[str, ...]] = ()
    samples_free: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def config_class(self) -> type[Section]:
        """The root configuration class (its `domain` field is `name`)."""

    @abstractmethod
    def contexts(self, config) -> tuple[list, list]:
        """(training contexts, held-out contexts) as the configuration chooses them; raises one of
        `input_errors` for bad data."""

    @abstractmethod
    def domain(self, config) -> Domain:
        """The inner loop for this configuration."""

    @abstractmethod
    def evaluate(self, run: Run, domain: Domain, held: list, progress: Progress,
                 policy_runs: list[Path] = (), lm: LoadedModel | None = None) -> Table:
        """Record every row of the comparison table on the held-out contexts (resuming what exists), with
        the rows of each round of each restem run in `policy_runs`."""

    @abstractmethod
    def table(self, run: Run) -> Table:
        """The comparison table of a run, from its records alone."""

    def score_label(self, config) -> str:
        """What the table's score is, for axis labels."""
        return "score"

    def lora_sections(self, config, command: str) -> list[tuple[str, LoraTrainConfig]]:
        """(field, recipe) of every LoRA recipe a command will train, checked against the model's
        layers before the run starts."""
        return [("inner_loop", config.inner_loop), ("restem.sft", config.restem.sft)]

    def check(self, config, command: str, held: list) -> None:
        """Anything else a command needs of the configuration, checked before its run directory exists."""

    def pin(self, config) -> tuple[Section, dict[str, str]]:
        """The configuration a run saves: inputs named by a file that may change later (a task list)
        replaced by what the file holds now, so that --resume and a rerun use the same; with where
        each came from ({field: path}), kept in the run's meta.json. By default as given."""
        return config, {}

    def training_contexts(self, run: Run, lm: LoadedModel, contexts: list, progress: Progress) -> list:
        """The training contexts as ReST-EM rewards them (e.g. with questions of their own instead of
        the data's); by default as loaded."""
        return contexts

    def show(self, run: Run) -> str | None:
        """Markdown for a run that has no comparison table (e.g. a continual run), else None."""
        return None

    def report(self, run: Run, section) -> bool:
        """Add this domain's own report parts for `run` to `section` (report.Section); True if any."""
        return False

    def compare(self, section, found: dict[str, dict]) -> bool:
        """Add side-by-side parts for several runs (`found`: run name -> what its section found)."""
        return False

    def register(self, app: typer.Typer) -> None:
        """Add the domain's own commands (beyond restem, evaluate and table) to its command group."""

