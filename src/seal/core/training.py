"""LoRA fine-tuning: a fresh adapter per use, a small training loop with dynamic padding, SFT.

The base model is never modified by the inner loop: `fresh_adapter` wraps it with PEFT for one
use and unloads the adapter afterwards, leaving the original modules and weights in place. The
policy update of ReST-EM (`sft_and_merge`) is the one place where weights change on purpose.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from seal.core.config import ConfigError, LoraTrainConfig
from seal.core.examples import Example
from seal.core.faults import crash_point
from seal.core.generation import autocast, half_weights
from seal.core.models import LoadedModel
from seal.core.objectives import Clipped, LanguageModelling, Objective, Targets, coefficients, target_nll
from seal.core.progress import count


@dataclass
class TrainStats:
    steps: int
    tokens: int  # real (non-padding) tokens seen, summed over epochs
    first_loss: float
    last_loss: float
    seconds: float
    extra_loss: float | None = None  # mean of the added loss term (a forgetting remedy's), when there is one
    nonfinite: int = 0  # steps whose loss was NaN or infinite
    problem: str | None = None  # why the update was not applied (see `sft_and_merge`)

    def as_dict(self) -> dict:
        out = dict(steps=self.steps, tokens=self.tokens, first_loss=round(self.first_loss, 4),
                   last_loss=round(self.last_loss, 4), seconds=round(self.seconds, 2))
        if self.extra_loss is not None:
            out["extra_loss"] = round(self.extra_loss, 6)
        if self.nonfinite:
            out["nonfinite_steps"] = self.nonfinite
        if self.problem:
            out["problem"] = self.problem
        return out


def peft_config(cfg: LoraTrainConfig) -> LoraConfig:
    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")


def linear_names(model: torch.nn.Module) -> set[str]:
    """The names (last part) of a model's linear layers: what LoRA `target_modules` may name."""
    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def target_linears(model: torch.nn.Module, cfg: LoraTrainConfig) -> list[tuple[str, torch.nn.Linear]]:
    """The linear layers LoRA targets (`cfg.target_modules`, by the last part of their name)."""
    targets = set(cfg.target_modules)
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in targets]


def check_targets(model: torch.nn.Module | set[str], cfg: LoraTrainConfig, field: str = "target_modules") -> None:
    """Refuse target modules that are not linear layers of `model` (or of these layer names)."""
    names = model if isinstance(model, set) else linear_names(model)
    missing = [t for t in cfg.target_modules if t not in names]
    if missing:
        raise ConfigError(f"{field}: {missing} are not linear layers of this model (it has {sorted(names)})")


@contextmanager
def fresh_adapter(lm: LoadedModel, cfg: LoraTrainConfig, seed: int, start_from=None):
    """Yield the model wrapped with a newly initialised LoRA adapter (or, with `start_from`, a saved
    adapter loaded to go on training); remove it afterwards."""
    torch.manual_seed(seed)  # dropout and anything else PEFT draws
    if start_from is None:
        check_targets(lm.model, cfg)
        wrapped = get_peft_model(lm.model, peft_config(cfg))
        init_like_bank(wrapped, seed)
    else:
        wrapped = PeftModel.from_pretrained(lm.model, str(start_from), is_trainable=True)
    try:
        yield wrapped
    finally:
        wrapped.unload()  # puts the original Linear modules back
        for p in lm.model.parameters():
            p.requires_grad_(False)
        lm.model.eval()


def init_lora_a(seed: int, module_name: str, rank: int, in_features: int) -> torch.Tensor:
    """The initial A matrix of one adapter's layer, from (seed, layer name) alone: uniform in
    ±1/sqrt(in_features), the distribution PEFT draws from (kaiming-uniform with a=sqrt(5)). Both
    inner loops (`fresh_adapter` here, `multi_lora.adapter_bank`) use it, so a batched adapter and a
    lone PEFT adapter start from the same weights."""
    name = module_name.removeprefix("base_model.model.")  # PEFT's prefix, so both paths name layers alike
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{name}".encode()) & 0x7FFFFFFF)
    bound = 1 / math.sqrt(in_features)
    return (torch.rand(rank, in_features, generator=gen) * 2 - 1) * bound


@torch.no_grad()
def init_like_bank(wrapped: torch.nn.Module, seed: int, adapter: str = "default") -> None:
    """Give every lora_A of `adapter` the initial weights that adapter `seed` of a multi_lora.AdapterBank
    gets, so that the one-at-a-time and the batched inner loops start from the same adapter."""
    for name, module in wrapped.named_modules():
        if adapter in getattr(module, "lora_A", {}):
            weight = module.lora_A[adapter].weight
            weight.copy_(init_lora_a(seed, name, weight.shape[0], weight.shape[1]))


def lm_examples(tokenizer, texts: list[str], max_len: int) -> list[Example]:
    """Language-modelling examples: loss on every token. No end token is appended: trained on many
    short lines that each end in one, the embedded model learned to answer a question with nothing
    (16 of 60 answers empty after the inner loop, against 1 of 25 before it)."""
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_len]
        out.append(Example(ids, list(ids)))
    return out


def sft_example(tokenizer, prompt: str, completion: str, max_len: int) -> Example:
    """(prompt -> completion) with the loss on the completion and its end token only. A pair longer
    than `max_len` loses the beginning of its prompt, since the completion is what is learned; a
    completion that would leave the prompt less than half of `max_len` is cut at its end."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    c = c[:max_len - min(len(p), max_len // 2)]
    p = p[len(p) - (max_len - len(c)):] if len(p) + len(c) > max_len else p
    return Example(p + c, [-100] * len(p) + c)


def has_target(example: Example) -> bool:
    """Whether any token is learned (the first token is never a target: nothing comes before it)."""
    return any(label != -100 for label in example.labels[1:])


def lr_factor(step: int, total: int, warmup: int) -> float:
    """The learning-rate multiplier of optimiser step `step` (from 0) of `total`: a linear rise over
    `warmup` steps, then a linear decay to 0 (the Hugging Face linear schedule)."""
    if step < warmup:
        return step / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def warmup_steps(cfg: LoraTrainConfig, total: int) -> int:
    return math.ceil(cfg.warmup_ratio * total)


def clip_gradients(params, cfg: LoraTrainConfig) -> None:
    if cfg.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)


def collate(batch: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest example of this batch only (never a fixed length); no loss on padding."""
    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        input_ids[i, :len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, :len(e.labels)] = torch.tensor(e.labels)
        mask[i, :len(e.input_ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def epoch_batches(n: int, cfg: LoraTrainConfig, seed: int) -> list[list[int]]:
    """Example indices of every optimiser step, in order: a seeded shuffle per epoch, cut into batches.
    Shared by `train` and the batched inner loop (multi_lora), so both visit the same data in the same order."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen).tolist()
        out += [order[b:b + cfg.batch_size] for b in range(0, n, cfg.batch_size)]
    return out[:cfg.max_steps] if cfg.max_steps else out


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a PEFT wrapper (the model itself when it is not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _targets(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    """The decoder's hidden states at positions that predict a label, those labels, their rows, and
    the output layer. Position t predicts token t + 1."""
    inner = _unwrapped(model)
    hidden = inner.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 use_cache=False).last_hidden_state
    labels = batch["labels"][:, 1:]
    rows, cols = (labels != -100).nonzero(as_tuple=True)
    return hidden[rows, cols], labels[rows, cols], rows, inner.get_output_embeddings()


def objective_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], examples: Sequence[Example],
                   objective: Objective) -> torch.Tensor:
    """One step's loss on a padded batch of `examples` (row i = examples[i], `collate`d): the objective's
    per-token losses weighted by `objectives.coefficients`, exactly as the adapter bank weights them; NaN
    for a batch without targets (as Hugging Face's loss is), so that the step is counted as non-finite."""
    hidden, tokens, rows, head = _targets(model, batch)
    if not len(tokens):
        return hidden.sum().float() * math.nan
    t = Targets(hidden, tokens, rows, examples, head)
    coef = torch.tensor(coefficients(examples, objective.per_example), device=hidden.device)
    return (objective.token_loss(t).float() * coef).sum()


def lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mean negative log-likelihood over every target token of the batch: what the model's own
    `.loss` is (Hugging Face's causal-LM loss; NaN for a batch without targets), without the whole
    batch's vocabulary logits."""
    hidden, targets, _, head = _targets(model, batch)
    return target_nll(head, hidden, targets).sum() / len(targets)


@torch.no_grad()
def reference_nll(model: torch.nn.Module, examples: list[Example], pad_id: int, device: torch.device,
                  precision: str = "fp32", batch_size: int = 8) -> None:
    """Record in each example's `reference` its target tokens' NLL under `model` as it is now."""
    with half_weights(model, precision):
        for start in range(0, len(examples), batch_size):
            chosen = examples[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collate(chosen, pad_id).items()}
            with autocast(precision, device):
                hidden, targets, rows, head = _targets(model, batch)
                nll = target_nll(head, hidden, targets).float().cpu()
            rows = rows.cpu()
            for i, example in enumerate(chosen):
                example.reference = nll[rows == i].tolist()


@contextmanager
def checkpointing(model: torch.nn.Module, on: bool):
    """Gradient checkpointing of a Hugging Face model's decoder layers while the context lasts (when `on`)."""
    inner = _unwrapped(model)
    if not on:
        yield
        return
    # non-reentrant: the inputs (token ids) need no gradient, and LoRA routing state is read at recompute
    kwargs = {"use_reentrant": False}
    if hasattr(inner, "activation_checkpointing_enable"):  # transformers >= 5.x's name
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    try:
        yield
    finally:
        (getattr(inner, "activation_checkpointing_disable", None) or inner.gradient_checkpointing_disable)()


def train(model: torch.nn.Module, examples: Sequence[Example], cfg: LoraTrainConfig, *, seed: int,
          pad_id: int, device: torch.device, precision: str = "fp32", on_step=None,
          extra_loss: Callable[[int], torch.Tensor] | None = None,
          objective: Objective | None = None) -> TrainStats:
    """AdamW with an optional linear warmup, then linear decay, over `cfg.epochs` passes (shuffled each
    epoch with a seeded generator), the gradient clipped to `cfg.max_grad_norm`, on the loss of
    `objective` (core/objectives.py; default `lm`). `extra_loss(step)` is added to each step's loss (the
    last loss reported is the objective's alone). `examples` may be any sequence, e.g. a TokenStore on
    disk."""
    objective = objective or LanguageModelling()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    plan = epoch_batches(len(examples), cfg, seed)
    total = len(plan)
    warm = warmup_steps(cfg, total)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warm))
    model.train()
    losses, extras, tokens, start = [], [], 0, time.perf_counter()
    with checkpointing(model, cfg.gradient_checkpointing), half_weights(model, precision):
        for indices in plan:
            chosen = [examples[i] for i in indices]
            batch = {k: v.to(device) for k, v in collate(chosen, pad_id).items()}
            with autocast(precision, device):
                loss = objective_loss(model, batch, chosen, objective)
                extra = extra_loss(len(losses)) if extra_loss is not None else None
            (loss if extra is None else loss + extra).backward()
            clip_gradients(params, cfg)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if extra is not None:
                extras.append(extra.item())
            seen = int(batch["attention_mask"].sum())
            tokens += seen
            count("training tokens", seen)
            if on_step:
                on_step(len(losses), total)
    model.eval()
    return TrainStats(steps=len(losses), tokens=tokens, first_loss=losses[0] if losses else math.nan,
                      last_loss=losses[-1] if losses else math.nan, seconds=time.perf_counter() - start,
                      extra_loss=sum(extras) / len(extras) if extras else None,
                      nonfinite=sum(not math.isfinite(v) for v in losses))


def sft_and_merge(lm: LoadedModel, examples: list[Example], cfg: LoraTrainConfig, *, seed: int,
                  precision: str, save_dir=None, on_step=None, objective: Objective | None = None) -> TrainStats:
    """Fine-tune the policy with a LoRA adapter on `objective`'s loss (default `lm`; the M-step of RLOO
    uses `weighted` or `clipped`, whose reference NLLs are taken here first), save it (optionally), and
    merge it in place. An update whose loss or weights are not finite is neither saved nor merged: the
    model stays as it was, and the returned stats say why (`problem`)."""
    check_targets(lm.model, cfg)
    if isinstance(objective, Clipped):
        reference_nll(lm.model, examples, lm.tokenizer.pad_token_id, lm.device, precision, cfg.batch_size)
    torch.manual_seed(seed)
    wrapped = get_peft_model(lm.model, peft_config(cfg))
    stats = train(wrapped, examples, cfg, seed=seed, pad_id=lm.tokenizer.pad_token_id, device=lm.device,
                  precision=precision, on_step=on_step, objective=objective)
    bad = [n for n, p in wrapped.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if stats.nonfinite or bad:
        stats.problem = (f"not merged: {stats.nonfinite} of {stats.steps} steps had a non-finite loss"
                         if stats.nonfinite else f"not merged: non-finite weights in {len(bad)} tensors, e.g. {bad[0]}")
        lm.model = wrapped.unload()
    else:
        if save_dir is not None:
            save_adapter(wrapped, Path(save_dir))
        lm.model = wrapped.merge_and_unload()
        # the policy a worker can rebuild: the saved adapter merged the same way; an unsaved one it cannot
        lm.policy = [*lm.policy, str(Path(save_dir).resolve())] if save_dir is not None and lm.policy is not None else None
    for p in lm.model.parameters():
        p.requires_grad_(False)
    lm.model.eval()
    return stats


def save_adapter(peft: PeftModel, folder: Path, name: str = "default") -> None:
    """Write adapter `name` to `folder` in PEFT's format (loadable by PeftModel.from_pretrained), complete or
    not at all: written beside it first, then renamed."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    peft.save_pretrained(tmp, selected_adapters=[name])
    crash_point("adapter-save")  # tests: killed with the adapter half in place
    inner = tmp / name if (tmp / name / "adapter_config.json").is_file() else tmp  # PEFT nests non-default names
    if folder.exists():
        shutil.rmtree(folder)
    inner.rename(folder)
    if tmp.exists():
        shutil.rmtree(tmp)


@contextmanager
def stashed(model: torch.nn.Module, names: Sequence[str] | None = None):
    """While the context lasts, the parameters `names` (all of the model's when None) are kept on disk,
    in a safetensors file under the temporary folder (TMPDIR); on exit each is read back into place, one
    tensor at a time. Exact in any dtype, and no second copy of the weights in memory or on the
    accelerator: what full fine-tuning and merged LoRA steps use to undo themselves."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    params = dict(model.named_parameters())
    names = list(params) if names is None else list(names)
    with tempfile.TemporaryDirectory(prefix="seal-stash-") as tmp:
        path = Path(tmp) / "weights.safetensors"
        save_file({n: params[n].detach().to("cpu").contiguous() for n in names}, str(path))
        try:
            yield
        finally:
            params = dict(model.named_parameters())  # the same tensors, unless a wrapper was left in place
            with torch.no_grad(), safe_open(str(path), "pt") as f:
                for n in names:
                    params[n].copy_(f.get_tensor(n))


@contextmanager
def temporary_update(lm: LoadedModel, examples: Sequence[Example], cfg: LoraTrainConfig, *, full: bool, seed: int,
                     precision: str, adapter_dir=None, on_step=None, start_from=None,
                     objective: Objective | None = None):
    """Yield the training stats (None when a saved adapter was loaded) while `lm.model` carries one update
    on `examples` with `objective`'s loss (default lm): a LoRA adapter, or every weight (`full`); the
    model is restored afterwards. A LoRA
    update is saved to `adapter_dir` once trained and loaded from there on a later call (--resume); a
    full update is not saved (a whole model per condition) and is trained again, with the same seed.
    `start_from`: a saved LoRA adapter that goes on training instead of a fresh one."""
    if full:
        with stashed(lm.model):
            torch.manual_seed(seed)
            for p in lm.model.parameters():
                p.requires_grad_(True)
            try:
                stats = train(lm.model, examples, cfg, seed=seed, pad_id=lm.tokenizer.pad_token_id,
                              device=lm.device, precision=precision, on_step=on_step, objective=objective)
                yield stats
            finally:
                for p in lm.model.parameters():
                    p.requires_grad_(False)
                lm.model.eval()
        return
    saved = Path(adapter_dir) if adapter_dir is not None else None
    if saved is not None and (saved / "adapter_config.json").is_file():
        wrapped = PeftModel.from_pretrained(lm.model, str(saved))
        try:
            yield None
        finally:
            wrapped.unload()
            lm.model.eval()
        return
    with fresh_adapter(lm, cfg, seed, start_from) as wrapped:
        stats = train(wrapped, examples, cfg, seed=seed, pad_id=lm.tokenizer.pad_token_id, device=lm.device,
                      precision=precision, on_step=on_step, objective=objective)
        if saved is not None:
            save_adapter(wrapped, saved)
        yield stats
