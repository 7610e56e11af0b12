"""Shared fixtures: a tiny randomly initialised Llama with the embedded model's real tokenizer."""

from __future__ import annotations

import gc

import pytest
import torch
from transformers import LlamaConfig

from seal.core.config import load_config
from seal.core.models import load_model, load_tokenizer, model_from_config

# Tiny models gain nothing from threads, and a second process (a demo run) would fight over them.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """The modules marked slow (the embedded model, the kill-anywhere chains, Ray clusters: minutes each)
    first, every other test after them in its order. `make test` hands whole modules to its workers in
    this order (`--dist loadscope --no-loadscope-reorder`), so each worker starts on a long module and
    the short ones fill in behind, instead of a long module starting last and running alone at the end."""
    items[:] = sorted(items, key=lambda item: item.get_closest_marker("slow") is None)  # stable


@pytest.fixture(scope="session", autouse=True)
def _imports_out_of_the_collector():
    """Every module the tests imported is loaded by now (collection is over): move their objects (torch's,
    transformers', the tests' own) out of the garbage collector's reach. A run calls gc.collect() after
    each phase of work (models.release_memory), and each call otherwise walks these ~400k objects that
    live as long as the process: 0.25-0.4 s, a third of a tiny-model restem test. Objects made later are
    still collected as before."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="session", autouse=True)
def _one_tokenizer_per_checkpoint():
    """Within a test process, each checkpoint's tokenizer is read once and then shared. The tiny models
    carry the embedded model's tokenizer, and reading it (tokenizer.json, parsed by transformers and
    again by the tokenizers library) takes 0.15-0.3 s, which nearly every test paid again. Sharing
    holds because nothing in the project changes a tokenizer after `load_tokenizer` set its pad token
    and padding side; the end of the session checks that no test changed them."""
    from seal.core import models

    read, shared, first = models.load_tokenizer, {}, {}

    def state(tok):
        return tok.pad_token, tok.padding_side, len(tok), tok.chat_template

    def load_tokenizer(name):
        if name not in shared:
            shared[name] = read(name)
            first[name] = state(shared[name])
        return shared[name]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "load_tokenizer", load_tokenizer)
        yield
    changed = [name for name, tok in shared.items() if state(tok) != first[name]]
    assert not changed, f"a test changed the shared tokenizer of {changed}: copy it before changing it"


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer("embedded")  # converts the packaged GGUF once into the cache


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer):
    """A saved tiny model directory, loadable by name like any local checkpoint."""
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    lm = model_from_config(config, tokenizer, seed=0)
    path = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny(tiny_dir):
    torch.manual_seed(0)
    return load_model(str(tiny_dir), "cpu")


@pytest.fixture
def tiny_config(tiny_dir, tmp_path):
    """A configuration sized for the tiny model: a few short passages, short generations."""
    return tiny_config_at(tiny_dir, tmp_path / "runs")


def tiny_config_at(tiny_dir, runs_dir):
    return load_config(None, [
        f"model.name={tiny_dir}", f"runs_dir={runs_dir}", "model.precision=fp32",
        "data.train_passages=2", "data.eval_passages=2",
        "self_edit.max_new_tokens=12", "answer.max_new_tokens=6", "answer.max_questions=2",
        "inner_loop.epochs=1", "inner_loop.rank=4", "inner_loop.alpha=8",
        "restem.k=2", "restem.sft.epochs=1", "restem.sft.rank=4", "restem.sft.alpha=8",
        "eval.bootstrap=200",
    ])
