"""Many LoRA adapters over one frozen base model, trained and used in the same batches.

SEAL's inner loop fine-tunes one small adapter per sampled self-edit. Trained one at a time, each
adapter runs its own forward and backward passes over the whole base model with a batch of a few
short rows, which leaves most of the hardware idle. `AdapterBank` instead holds K adapters as stacked
tensors; every row of a batch carries the index of its adapter, and each targeted linear layer adds
that row's low-rank product, computed for all rows in one batched matmul. Because an adapter's
parameters touch only its own rows, the sum of the per-adapter losses gives every adapter exactly the
gradient it would get alone; `BatchedAdamW` keeps separate moments, step counts and learning-rate
schedules, and leaves an adapter whose data is exhausted untouched. `train_bank` therefore gives,
within floating-point tolerance, the adapters that `training.train` gives one by one with the same
seeds (tested), at a fraction of the wall time (benchmarks/inner_loop_speed.py).

The same bank answers questions: `route(rows)` before a forward pass (or a `generate` call with
`adapter_rows`) sends each row through its own adapter, so the K updated models are evaluated in
shared generation batches too.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from seal.core.bank_size import forward_tokens
from seal.core.config import ConfigError, LoraTrainConfig
from seal.core.generation import autocast, half_weights
from seal.core.models import LoadedModel
from seal.core.objectives import LanguageModelling, Objective, Targets, coefficients, target_count
from seal.core.progress import count
from seal.core.training import (
    Example,
    TrainStats,
    check_targets,
    checkpointing,
    epoch_batches,
    init_lora_a,
    lr_factor,
    target_linears,
    warmup_steps,
)


class MultiLoraLinear(torch.nn.Module):
    """A frozen linear layer plus, for each row of the input, the LoRA product of that row's adapter."""

    def __init__(self, base: torch.nn.Linear, bank: AdapterBank, index: int):
        super().__init__()
        self.base, self.bank, self.index = base, [bank], index  # a list: not a registered submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        bank = self.bank[0]
        rows = bank.rows
        if rows is None:  # no routing: the base model alone
            return y
        a, b = bank.weights(self.index)  # (K, r, in), (K, out, r)
        a, b = a[rows], b[rows]  # (B, r, in), (B, out, r): each row's own adapter
        # This module is registered in the model, so model.eval() switches the dropout off here.
        h = F.dropout(x, bank.dropout, self.training) if bank.dropout else x
        flat = h.dim() == 2
        if flat:
            h = h.unsqueeze(1)
        # scaled at rank width (r columns), not at output width: the cheapest place for it
        low = torch.bmm(h.to(a.dtype), a.transpose(1, 2)) * bank.scale
        delta = torch.bmm(low, b.transpose(1, 2))
        # added in the adapter's precision, then rounded once to the layer's (as PEFT's LoRA layers do)
        return (y + (delta.squeeze(1) if flat else delta)).to(y.dtype)


class AdapterBank:
    """K LoRA adapters (rank r on the configured layers). All their weights live in one (K, size) tensor,
    adapter-major, so that each adapter's weights (and gradient, and optimiser moments) are one
    contiguous row for the fused optimiser; each layer's A and B are leaf parameters that view into
    it, and their gradients are views into one (K, size) gradient tensor. (Slicing one big leaf instead
    would make every layer's backward pass fill a zero tensor the size of all K adapters: three times
    slower than no batching at all.)"""

    def __init__(self, layers: list[tuple[str, torch.nn.Linear]], cfg: LoraTrainConfig, seeds: list[int],
                 device: torch.device):
        self.k, self.rank, self.scale = len(seeds), cfg.rank, cfg.alpha / cfg.rank
        self.dropout = cfg.dropout  # applied by each MultiLoraLinear, in training mode only
        self.rows: torch.Tensor | None = None
        self.layer_names = [name for name, _ in layers]
        spans, offset = [], 0
        for _, layer in layers:
            spans.append((offset, layer.in_features, layer.out_features))
            offset += cfg.rank * (layer.in_features + layer.out_features)
        flat = torch.zeros(self.k, offset)
        for i, seed in enumerate(seeds):
            for (name, _layer), (start, fan_in, _) in zip(layers, spans):
                flat[i, start:start + cfg.rank * fan_in] = init_lora_a(seed, name, cfg.rank, fan_in).flatten()
        self.data = flat.to(device)
        self.grad = torch.zeros_like(self.data)
        self.a, self.b = [], []
        for start, fan_in, fan_out in spans:
            mid, end = start + cfg.rank * fan_in, start + cfg.rank * (fan_in + fan_out)
            a = torch.nn.Parameter(self.data[:, start:mid].unflatten(1, (cfg.rank, fan_in)))
            b = torch.nn.Parameter(self.data[:, mid:end].unflatten(1, (fan_out, cfg.rank)))
            a.grad = self.grad[:, start:mid].unflatten(1, (cfg.rank, fan_in))
            b.grad = self.grad[:, mid:end].unflatten(1, (fan_out, cfg.rank))
            self.a.append(a)
            self.b.append(b)

    def weights(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a[index], self.b[index]

    def route(self, rows) -> None:
        """Send row i of the following forward passes through adapter rows[i] (None: no adapter)."""
        self.rows = None if rows is None else torch.as_tensor(rows, dtype=torch.long, device=self.data.device)

    def adapter_state(self, i: int) -> dict[str, torch.Tensor]:
        """Adapter i as PEFT-named tensors (lora_A / lora_B per layer), e.g. for saving or comparing."""
        out = {}
        for index, name in enumerate(self.layer_names):
            a, b = self.weights(index)
            out[f"{name}.lora_A.weight"] = a[i].detach().clone()
            out[f"{name}.lora_B.weight"] = b[i].detach().clone()
        return out


@contextmanager
def adapter_bank(lm: LoadedModel, cfg: LoraTrainConfig, seeds: list[int]):
    """Install K = len(seeds) fresh adapters into `lm.model`; restore the original layers afterwards."""
    check_targets(lm.model, cfg)
    layers = target_linears(lm.model, cfg)
    bank = AdapterBank(layers, cfg, seeds, lm.device)
    modules = dict(lm.model.named_modules())
    parents = []
    for index, (name, layer) in enumerate(layers):
        parent_name, _, attr = name.rpartition(".")
        parent = modules[parent_name] if parent_name else lm.model
        setattr(parent, attr, MultiLoraLinear(layer, bank, index))
        parents.append((parent, attr, layer))
    lm.bank = bank
    try:
        yield bank
    finally:
        for parent, attr, layer in parents:
            setattr(parent, attr, layer)
        lm.bank = None
        lm.model.eval()


class BatchedAdamW:
    """AdamW over a (K, size) parameter with one state per adapter: its own step count, linear-decay
    schedule (to zero over its own total steps) and moments. An adapter not active in a step is left
    exactly as it is: no moment decay, no weight decay. Mirrors torch.optim.AdamW step by step, with
    its fused kernel: 25 ms a step for 24 adapters of 1.8M parameters here, against 426 ms for the
    same update written as whole-tensor operations with per-adapter masks."""

    def __init__(self, param: torch.Tensor, grad: torch.Tensor, lr: float | list[float], totals: list[int],
                 weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8, warmups: list[int] | None = None):
        self.param, self.grad, self.wd, self.eps = param, grad, weight_decay, eps
        self.lr = list(lr) if isinstance(lr, (list, tuple)) else [lr] * len(totals)  # peak rate per adapter
        self.b1, self.b2 = betas
        self.totals, self.steps = list(totals), [0] * len(totals)
        self.warmups = list(warmups) if warmups is not None else [0] * len(totals)
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        # Adapters at the same point of the same schedule share one call of torch's fused AdamW kernel
        # (one pass over their memory); a row of the (K, size) tensors is one adapter's contiguous slice.
        groups: dict[tuple[float, int], list[int]] = {}
        for k in torch.nonzero(active).flatten().tolist():
            rate = self.lr[k] * lr_factor(self.steps[k], self.totals[k], self.warmups[k])  # as training.train's
            self.steps[k] += 1
            groups.setdefault((rate, self.steps[k]), []).append(k)
        for (rate, step), ks in groups.items():
            steps = [torch.tensor(float(step), device=self.param.device) for _ in ks]
            torch._fused_adamw_(
                [self.param[k] for k in ks], [self.grad[k] for k in ks], [self.m[k] for k in ks],
                [self.v[k] for k in ks], [], steps, lr=rate, beta1=self.b1, beta2=self.b2,
                weight_decay=self.wd, eps=self.eps, amsgrad=False, maximize=False)


@dataclass
class PackedRow:
    """One adapter's batch of a step, its examples laid end to end in one row. Positions restart at
    every example, which makes transformers attend within each example only (its packed-sequence
    masking), so the row computes what the examples would as separate rows, without padding."""

    input_ids: list[int]
    labels: list[int]
    positions: list[int]
    adapter: int
    examples: list[Example]  # in the order they are packed (what the objective reads: weights, teachers)
    coefficients: list[float]  # each target token's weight in its adapter's step loss (objectives.coefficients)


def pack(examples: list[Example], adapter: int, objective: Objective | None = None) -> PackedRow:
    ids, labels, positions = [], [], []
    for e in examples:
        ids += e.input_ids
        labels += [-100] + e.labels[1:]  # an example's first token is never a target, as in its own row
        positions += range(len(e.input_ids))
    per_example = objective.per_example if objective is not None else False
    return PackedRow(ids, labels, positions, adapter, list(examples), coefficients(examples, per_example))


def collate_packed(rows: list[PackedRow], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        input_ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        positions[i, :n] = torch.tensor(r.positions)
        positions[i, n:] = torch.arange(width - n)  # padding: one more segment of its own
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions}


MASKED = ("sdpa", "eager")  # attention implementations the bank gives segment boundaries to (a 4D mask)


def check_attention(model) -> str:
    """The model's attention implementation, when the bank can keep packed examples apart under it;
    else one ConfigError line (flash attention and others ignore a 4D mask, and their own detection of
    packed rows from position_ids holds for one row only)."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl not in MASKED:
        raise ConfigError(f"model attention '{impl}': the batched inner loop packs several examples in a row and "
                          f"keeps them apart with a mask that only {' and '.join(MASKED)} read; load the model with "
                          "one of those, or set inner_loop.batched: false")
    return impl


def segment_mask(positions: torch.Tensor, impl: str, dtype: torch.dtype) -> torch.Tensor:
    """The (rows, 1, T, T) attention mask of packed rows: each token sees the tokens before it within its
    own example (a segment starts where its position is 0; padding is a segment of its own). sdpa reads
    True as "attend"; eager adds the mask to its scores, so there it is 0 or the dtype's lowest value."""
    segment = (positions == 0).cumsum(-1)
    same = segment[:, :, None] == segment[:, None, :]
    width = positions.shape[-1]
    allowed = same & torch.ones(width, width, dtype=torch.bool, device=positions.device).tril()
    if impl == "sdpa":
        return allowed[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=positions.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None]


def per_adapter_loss(model, batch: dict[str, torch.Tensor], part: list[PackedRow], objective: Objective,
                     k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ over the pass's target tokens of the objective's token loss times its coefficient (so each
    adapter's share is its step loss, as `training.objective_loss` computes it alone), and the K
    adapters' shares (detached). Logits are computed only where a label is, never for padding, and a
    chunk at a time (`objectives.chunked`): the vocabulary projection is the largest activation of a
    small model."""
    # The segment boundaries as an explicit mask: transformers' own reading of them from position_ids
    # holds for sdpa and eager only, and for flash attention with a single row only.
    impl = check_attention(model)
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    mask = segment_mask(batch["position_ids"], impl, dtype)
    hidden = model.get_decoder()(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                 attention_mask=mask, use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    examples = [e for row in part for e in row.examples]
    # each target token's example, in row-major order: a row's examples are packed one after another
    which = torch.tensor([i for i, e in enumerate(examples) for _ in range(target_count(e))], dtype=torch.long,
                         device=hidden.device)
    t = Targets(hidden[:, :-1][keep], targets[keep], which, examples, model.get_output_embeddings())
    coef = torch.tensor([c for row in part for c in row.coefficients], device=hidden.device)
    owner = torch.tensor([row.adapter for row in part for _ in row.coefficients], device=hidden.device)
    weighted = objective.token_loss(t).float() * coef
    return weighted.sum(), torch.zeros(k, device=hidden.device).index_add_(0, owner, weighted.detach())


def micro_batches(rows: list[PackedRow], max_tokens: int, pass_cost: int = 64) -> list[list[PackedRow]]:
    """Group one step's packed rows into forward passes of at most `max_tokens` tokens, padding
    included, choosing the grouping of the length-sorted rows that computes the fewest tokens, counting
    each pass as `pass_cost` tokens more (its fixed overhead). Which rows share a pass does not change
    the result, only the padding: a 30-token row next to a 300-token one costs 300."""
    rows = sorted(rows, key=lambda r: len(r.input_ids))
    lengths = [len(r.input_ids) for r in rows]
    best = [0] + [math.inf] * len(rows)  # best[j]: cost of grouping rows[:j]
    cut = [0] * (len(rows) + 1)
    for j in range(1, len(rows) + 1):
        for i in range(j - 1, -1, -1):  # rows[i:j] in one pass, padded to lengths[j - 1]
            width = lengths[j - 1] * (j - i)
            if width > max_tokens and i < j - 1:
                break
            if best[i] + width + pass_cost < best[j]:
                best[j], cut[j] = best[i] + width + pass_cost, i
    out, j = [], len(rows)
    while j > 0:
        out.append(rows[cut[j]:j])
        j = cut[j]
    return out[::-1]


def train_bank(lm: LoadedModel, bank: AdapterBank, datasets: list[list[Example]],
               cfg: LoraTrainConfig | list[LoraTrainConfig], *, seeds: list[int], precision: str = "fp32",
               max_tokens: int | None = None, on_step=None, objective: Objective | None = None) -> list[TrainStats]:
    """Train adapter k of the bank on datasets[k], as `training.train` would with seed seeds[k] and the
    same `objective` (default `lm`). `cfg` may be one recipe per adapter (their own lr, epochs, batch
    size, step cap; the adapter shape and weight decay are the bank's and the first recipe's).
    `max_tokens` per forward pass: see `forward_tokens`. `on_step(step, steps)` after each step (default:
    `lm.on_train_step`)."""
    objective = objective or LanguageModelling()
    check_attention(lm.model)  # before any work
    max_tokens = forward_tokens(max_tokens, lm.device)
    on_step = on_step or lm.on_train_step
    cfgs = cfg if isinstance(cfg, list) else [cfg] * len(datasets)
    plans = [epoch_batches(len(d), c, s) for d, c, s in zip(datasets, cfgs, seeds)]
    totals = [max(1, len(p)) for p in plans]
    optimizer = BatchedAdamW(bank.data, bank.grad, [c.lr for c in cfgs], totals,
                             weight_decay=cfgs[0].weight_decay if cfgs else 0.0,
                             warmups=[warmup_steps(c, n) for c, n in zip(cfgs, totals)])
    # each adapter's gradient is clipped by its own norm, as `training.train` clips a lone adapter's
    max_norms = torch.tensor([c.max_grad_norm or math.inf for c in cfgs], device=lm.device)
    model, pad_id = lm.model, lm.tokenizer.pad_token_id
    losses: list[list[float]] = [[] for _ in datasets]
    tokens = [0] * len(datasets)
    n_steps = max((len(p) for p in plans), default=0)
    start = time.perf_counter()
    model.train()
    everywhere = cfgs[0].gradient_checkpointing if cfgs else False
    with checkpointing(model, everywhere), half_weights(model, precision):
        for t in range(n_steps):
            active = [k for k, p in enumerate(plans) if t < len(p)]
            # each adapter's batch of this step in one row, its tokens weighted as when trained alone
            packed = [pack([datasets[k][i] for i in plans[k][t]], k, objective) for k in active]
            for row in packed:
                tokens[row.adapter] += len(row.input_ids)
                count("training tokens", len(row.input_ids))
            step_loss = torch.zeros(bank.k, device=lm.device)
            for part in micro_batches(packed, max_tokens):
                batch = {key: v.to(lm.device) for key, v in collate_packed(part, pad_id).items()}
                bank.route([row.adapter for row in part])
                # a row longer than max_tokens has a pass of its own: checkpointed, so that its activations
                # stay within what max_tokens promises (an ARC row of 20x20 grids can hold 4,000 tokens)
                with checkpointing(model, not everywhere and batch["input_ids"].numel() > max_tokens):
                    with autocast(precision, lm.device):
                        loss, terms = per_adapter_loss(model, batch, part, objective, bank.k)
                    with warnings.catch_warnings():  # gradients land in strided views of bank.grad, on purpose
                        warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
                        loss.backward()
                step_loss += terms
            bank.route(None)
            on = torch.zeros(bank.k, dtype=torch.bool)
            on[active] = True
            norms = bank.grad.norm(dim=1)
            bank.grad.mul_((max_norms / (norms + 1e-6)).clamp(max=1.0).unsqueeze(1))
            optimizer.step(on)
            bank.grad.zero_()
            step_loss = step_loss.tolist()
            for k in active:
                losses[k].append(step_loss[k])
            if on_step:
                on_step(t + 1, n_steps)
    model.eval()
    share = (time.perf_counter() - start) / max(1, len(datasets))  # each adapter's share of the wall time
    return [TrainStats(steps=len(p), tokens=n, first_loss=ls[0] if ls else math.nan,
                       last_loss=ls[-1] if ls else math.nan, seconds=share)
            for p, n, ls in zip(plans, tokens, losses)]
