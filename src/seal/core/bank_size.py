"""How wide an adapter bank's batches are: K adapters a batch and the tokens of one forward pass,
sized by the device's throughput, by memory (what K adapters with their gradients and optimiser state,
and one pass's activations, take) and by time (a batch holds about inner_loop.max_batch_seconds of
work, so that a kill loses at most that). The figures behind the defaults are in docs/performance.md.
"""

from __future__ import annotations

import os

import torch

from seal.core import objectives
from seal.core.config import ConfigError, LoraTrainConfig
from seal.core.models import LoadedModel
from seal.core.training import target_linears


def bytes_per_token(model, checkpointed: bool = False) -> int:
    """A generous estimate of the training memory one (padded) token of a forward pass costs until its
    backward pass, from the model's shape: the activations every layer keeps (with gradient
    checkpointing, only each layer's input, plus one layer's activations while it is recomputed).
    Measured on the embedded model under bf16 autocast: about 1.5 MB a token, against 1.6 MB here."""
    c = model.config
    layers, hidden = c.num_hidden_layers, c.hidden_size
    inter = getattr(c, "intermediate_size", 4 * hidden)
    one_layer = 4 * (12 * hidden + 4 * inter)
    return 4 * layers * hidden + one_layer if checkpointed else layers * one_layer


def logit_bytes(model) -> int:
    """The vocabulary logits alive at one time in training (one chunk of `objectives.chunked`: the
    logits, their fp32 copy and the softmax), whatever the number of tokens."""
    return objectives.LOGIT_CHUNK * model.config.vocab_size * 12


# Tokens per forward pass of the batched inner loop (`tokens_per_forward` unset). On a CPU longer
# passes were no faster and held more memory (docs/performance.md); a GPU needs long passes to stay busy
# (4096, not measured yet).
CPU_TOKENS = 512
GPU_TOKENS = 4096


def forward_tokens(setting: int | None, device) -> int:
    """`tokens_per_forward` as set, else the device's default."""
    return setting or (CPU_TOKENS if torch.device(device).type == "cpu" else GPU_TOKENS)


def activation_bytes(model, cfg, device=None) -> int:
    """The activation memory of one forward and backward pass of `tokens_per_forward` tokens (on
    `device`, default the model's)."""
    tokens = forward_tokens(cfg.tokens_per_forward, device or model.device)
    return tokens * bytes_per_token(model, cfg.gradient_checkpointing) + logit_bytes(model)


def choose_adapters(bank_size: int, activations: int, n_jobs: int, cap: int, budget: int | None = None) -> int:
    """K from memory: each adapter costs its parameters four times over (weights, gradient, two moments,
    all fp32), the shared forward passes cost `activations`; all of it within `budget` bytes (default:
    half of what is free). Never more than the work at hand or `cap`."""
    budget = available_memory() // 2 if budget is None else budget
    return max(1, min(n_jobs, cap, (budget - activations) // (16 * bank_size)))


# Adapters per batch (K) where the batched inner loop evaluates the most self-edits per minute. On this
# project's 2-core CPU evaluations/min rose to K = 4 and fell past it, while memory kept growing with
# K (benchmarks/inner_loop_speed.py --k-sweep; the table is in the README). On a GPU a wide batch is
# what keeps it busy: as many as the memory allows, up to GPU_K (not measured by this project yet).
CPU_K = 4
GPU_K = 64
FIRST_BATCH = 4  # adapters in a batch before the time of one evaluation is known


def throughput_k(lm: LoadedModel) -> int:
    return CPU_K if lm.device.type == "cpu" else GPU_K


def memory_budget(cfg) -> int | None:
    """inner_loop.memory_budget in bytes, when set."""
    return int(cfg.memory_budget * 2**30) if cfg.memory_budget else None


def check_memory_budget(model, cfg, field: str = "inner_loop", device="cpu") -> None:
    """Refuse a memory budget that one forward pass and one adapter do not fit in (`model` may be on
    the meta device: only its shape is read; `device` is where it will run)."""
    budget = memory_budget(cfg)
    need = activation_bytes(model, cfg, device) + 16 * lora_size(model, cfg)
    if budget is not None and need > budget:
        raise ConfigError(
            f"{field}.memory_budget {cfg.memory_budget} GiB: one batch of {field}.tokens_per_forward="
            f"{forward_tokens(cfg.tokens_per_forward, device)} tokens needs about {need / 2**30:.2f} GiB; lower tokens_per_forward"
            + ("" if cfg.gradient_checkpointing else " or turn on gradient_checkpointing"))


def memory_adapters(lm: LoadedModel, cfg, n_jobs: int) -> int:
    """K for an inner-loop configuration from memory alone: `memory_budget`, else half of what is free."""
    return choose_adapters(lora_size(lm.model, cfg), activation_bytes(lm.model, cfg), n_jobs, cap=1024,
                           budget=memory_budget(cfg))


def widest_batch(lm: LoadedModel, cfg, n_jobs: int) -> int:
    """The most adapters a batch of an inner-loop configuration may hold on `lm`'s device: its throughput
    K (`throughput_k`) within what the memory allows (`memory_adapters`); `adapters_per_batch` when set."""
    if cfg.adapters_per_batch:
        return cfg.adapters_per_batch
    return min(throughput_k(lm), memory_adapters(lm, cfg, n_jobs))


def adapters_per_batch(cfg, n_jobs: int, widest: int, seconds_per_eval: float | None = None,
                       previous: tuple[int, float] | None = None) -> int:
    """K for the next batch of an inner-loop configuration: `adapters_per_batch` when set; else `widest`
    (`widest_batch`: the device's throughput K within its memory), but, so that a kill loses little, no
    more than fit in `max_batch_seconds` at `seconds_per_eval` (FIRST_BATCH while that is not known),
    though never below FIRST_BATCH for time. `previous` (K, seconds) of the last batch: K does not fall
    below it unless that batch ran over `max_batch_seconds`, so that the slower evaluations of a narrow
    batch do not make every later batch narrow too."""
    if cfg.adapters_per_batch:
        return cfg.adapters_per_batch
    by_time = FIRST_BATCH if not seconds_per_eval else int(cfg.max_batch_seconds // seconds_per_eval)
    if previous is not None and previous[1] <= cfg.max_batch_seconds:
        by_time = max(by_time, previous[0])
    # Time only ever narrows a batch down to FIRST_BATCH: below that, throughput falls (K = 1 evaluates
    # 26% fewer self-edits a minute than K = 4 here) and a slow machine would stay slow.
    return max(1, min(widest, max(by_time, FIRST_BATCH), n_jobs))


def lora_size(model, cfg: LoraTrainConfig) -> int:
    """Parameters of one adapter of this shape."""
    return sum(cfg.rank * (m.in_features + m.out_features) for _, m in target_linears(model, cfg))


def available_memory() -> int:
    """Bytes free for new allocations: on a GPU, what CUDA reports; on a CPU, MemAvailable."""
    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")) if hasattr(os, "sysconf") else 8 << 30
