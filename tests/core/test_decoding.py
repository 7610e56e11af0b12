"""Decoding with rows that come and go gives what decoding each row alone gives; sampling draws from the
top-p distribution; generated text equals Hugging Face's `generate` where the batch layout is the same."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from seal.core.config import LoraTrainConfig
from seal.core.decoding import Nucleus, decode
from seal.core.generation import generate, hf_generate
from seal.core.models import model_from_config
from seal.core.multi_lora import adapter_bank

PROMPTS = ["Question: when was the lighthouse of Varn lit? Answer:", "Hi", "x",
           "The observatory on the hill was built by a man whose name nobody in the valley remembers", "A B C D E F G"]


@pytest.fixture
def untied(tokenizer):
    """A tiny model with its own output layer and sharp attention: its greedy rows differ from each other
    and depend on positions (the tied one repeats its prompt's last token), so a misplaced row shows."""
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    lm = model_from_config(config, tokenizer, seed=0)
    with torch.no_grad():  # sharp attention (at initialisation it is nearly uniform, blind to positions)
        for layer in lm.model.model.layers:
            layer.self_attn.q_proj.weight *= 30
            layer.self_attn.k_proj.weight *= 30
    return lm


@pytest.fixture
def exact(untied):
    """The untied model in float64, where a row's numbers do not depend on the rows beside it, so that
    'the same as alone' can be asserted exactly."""
    untied.model.double()
    return untied


def _ids(lm, prompts):
    return [lm.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def _decode(lm, prompts, slots, lengths=None, **kw):
    """Greedy decode; with `lengths`, row r ends after lengths[r] tokens (rows leave at different steps)."""
    done = (lambda r, tokens: len(tokens) >= lengths[r]) if lengths else None
    return decode(lm.model, _ids(lm, prompts), max_new_tokens=12, slots=slots, pick=Nucleus(0.0, 1.0, [], lm.device),
                  pad_id=lm.tokenizer.pad_token_id, end_ids={lm.tokenizer.eos_token_id}, done=done, **kw)


def test_rows_that_leave_and_join_decode_what_they_decode_alone(exact):
    prompts = PROMPTS * 2  # ten rows of five lengths
    lengths = [1, 7, 3, 12, 5, 2, 9, 4, 12, 6]
    alone = [_decode(exact, [p], 1, [n]) for p, n in zip(prompts, lengths)]
    for slots in (1, 2, 3, 8):
        together = _decode(exact, prompts, slots, lengths)
        assert together == [a[0] for a in alone], slots
        assert [len(t) for t, _ in together] == lengths


def test_each_row_keeps_its_own_adapter_as_rows_come_and_go(exact):
    prompts = PROMPTS * 2
    lengths = [2, 9, 4, 12, 6, 1, 8, 3, 12, 5]
    rows = [2, 0, 1, 1, 0, 2, 2, 0, 1, 0]
    cfg = LoraTrainConfig(rank=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    with adapter_bank(exact, cfg, [1, 2, 3]) as bank:
        torch.manual_seed(0)
        bank.data.normal_(0, 0.3)  # three adapters that change what the model writes
        solo = [_decode(exact, [p], 1, [n], route=lambda _, k=k: bank.route([k]))[0]
                for p, n, k in zip(prompts, lengths, rows)]
        mixed = _decode(exact, prompts, 3, lengths, route=lambda batch: bank.route([rows[r] for r in batch]))
        unrouted = _decode(exact, prompts, 3, lengths, route=lambda batch: bank.route(None))
    assert mixed == solo
    assert unrouted != mixed  # the adapters matter, so the routing was tested


def test_sampled_rows_do_not_depend_on_the_batch_size(exact):
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    one = [g.text for g in generate(exact, PROMPTS * 2, batch_size=1, **kw)]
    assert [g.text for g in generate(exact, PROMPTS * 2, batch_size=4, **kw)] == one
    assert [g.text for g in generate(exact, PROMPTS * 2, batch_size=16, **kw)] == one
    assert [g.text for g in generate(exact, PROMPTS * 2, batch_size=4, **{**kw, "seed": 8})] != one
    assert len(set(one[:5]) & set(one[5:])) == 0  # equal prompts, different rows: different samples


def test_greedy_text_equals_hugging_faces_generate(tiny):
    """The same batch layout (every row to the limit), the same float32 numbers: the same tokens."""
    for batch_size in (1, 2, 5):
        ours = generate(tiny, PROMPTS, max_new_tokens=16, batch_size=batch_size)
        theirs = hf_generate(tiny, PROMPTS, max_new_tokens=16, batch_size=batch_size)
        assert [(g.text, g.n_tokens, g.hit_limit) for g in ours] == [(g.text, g.n_tokens, g.hit_limit) for g in theirs]


def _wins(lm, tokens: list[int]) -> None:
    """Token i wins wherever the token that distinct prompt i writes at step 2 + 3i wins, so rows end
    (at an end token, at a newline) at different steps, and one prompt's rows not at all."""
    rows = [g for g, _ in _decode(lm, PROMPTS, 1)]
    head = lm.model.get_output_embeddings()
    with torch.no_grad():
        for i, token in enumerate(tokens):
            head.weight[token] = head.weight[rows[i][2 + 3 * i]] * 1.05


def test_rows_that_end_early_match_hugging_faces_generate(untied):
    _wins(untied, [untied.tokenizer.eos_token_id])
    ours = generate(untied, PROMPTS * 2, max_new_tokens=16, batch_size=3)
    theirs = hf_generate(untied, PROMPTS * 2, max_new_tokens=16, batch_size=3)
    assert [(g.text, g.n_tokens, g.hit_limit) for g in ours] == [(g.text, g.n_tokens, g.hit_limit) for g in theirs]
    assert {g.hit_limit for g in ours} == {True, False}  # some rows ended early, some ran to the limit


def test_answers_stop_after_their_first_line_as_before(untied):
    tok = untied.tokenizer
    newlines = [i for i in range(len(tok)) if "\n" in tok.decode([i]) and tok.decode([i]).strip()][:3]
    _wins(untied, [tok("\n", add_special_tokens=False)["input_ids"][0], *newlines])
    ours = generate(untied, PROMPTS * 2, max_new_tokens=16, batch_size=3, stop_at_newline=True)
    theirs = hf_generate(untied, PROMPTS * 2, max_new_tokens=16, batch_size=3, stop_at_newline=True)
    assert [(g.text, g.n_tokens, g.hit_limit) for g in ours] == [(g.text, g.n_tokens, g.hit_limit) for g in theirs]
    assert {g.hit_limit for g in ours} == {True, False}  # some answers ended at a newline, some ran on


def test_top_p_keeps_the_tokens_hugging_face_keeps_and_samples_their_distribution(monkeypatch):
    torch.manual_seed(0)
    logits = torch.randn(6, 40) * 3
    for candidates in (40, 5):  # with 5 candidates, rows whose nucleus is wider fall back to the full sort
        monkeypatch.setattr(Nucleus, "CANDIDATES", candidates)
        for temperature, top_p in ((1.0, 0.9), (0.7, 0.5), (1.3, 0.99)):
            warped = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone()))
            expected = torch.softmax(warped, -1)
            nucleus = Nucleus(temperature, top_p, list(range(6)), torch.device("cpu"))
            counts = torch.zeros_like(logits)
            draws = 4000
            for _ in range(draws):
                counts[torch.arange(6), nucleus(logits, list(range(6)))] += 1
            assert ((counts > 0) <= (expected > 0)).all()  # never a token outside the nucleus
            assert (counts / draws - expected).abs().max() < 0.03  # its distribution (4,000 draws a row)


def test_greedy_picks_the_most_likely_token():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    assert Nucleus(0.0, 0.9, [], torch.device("cpu"))(logits, [0, 1]).tolist() == [1, 0]


def test_an_empty_prompt_is_refused(tiny):
    with pytest.raises(ValueError, match="prompt 1 has no tokens"):
        generate(tiny, ["Hi", ""], max_new_tokens=3)


@torch.no_grad()
def _logprob_alone(lm, prompt: str, completion: str, adapter: int | None = None) -> float:
    """The mean log-probability of a completion from one forward pass over its prompt and it, by hand."""
    p = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = lm.tokenizer(" " + completion.strip(), add_special_tokens=False)["input_ids"]
    if lm.bank is not None:
        lm.bank.route([adapter])
    logits = lm.model(input_ids=torch.tensor([p + c])).logits[0].log_softmax(-1)
    return float(sum(logits[len(p) - 1 + t, token] for t, token in enumerate(c)) / len(c))


def test_completions_of_one_prompt_share_its_row_and_score_as_alone(exact, monkeypatch):
    """A prompt asked with several completions is one row (the prompt once, each completion at the
    positions right after it, seeing the prompt and itself); through different adapters, not shared."""
    import seal.core.generation as generation

    prompts = [PROMPTS[0]] * 4 + [PROMPTS[3]] * 3 + [PROMPTS[0], PROMPTS[2]]
    completions = ["1873", "in the spring of 1873", "never", "1873", "Ilse Marrowind", "a sailor", "Varn",
                   "the keeper", "y z"]
    alone = [_logprob_alone(exact, p, c) for p, c in zip(prompts, completions)]
    rows = []
    real = generation._Packed.add
    monkeypatch.setattr(generation._Packed, "add", lambda self, i, ids: (rows.append(id(self)), real(self, i, ids)))
    assert generation.completion_logprobs(exact, prompts, completions, batch_size=2) == pytest.approx(alone, abs=1e-5)
    assert len(set(rows)) == 3  # one row per distinct prompt
    monkeypatch.setattr(generation, "PACKED_ROW_TOKENS", 30)  # full rows start new ones: same numbers
    assert generation.completion_logprobs(exact, prompts, completions, batch_size=3) == pytest.approx(alone, abs=1e-5)
    adapters = [0, 1, 0, 1, 1, 1, 0, 0, 1]
    cfg = LoraTrainConfig(rank=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    with adapter_bank(exact, cfg, [1, 2]) as bank:
        torch.manual_seed(0)
        bank.data.normal_(0, 0.3)
        routed = [_logprob_alone(exact, p, c, k) for p, c, k in zip(prompts, completions, adapters)]
        assert generation.completion_logprobs(exact, prompts, completions, adapter_rows=adapters) == pytest.approx(routed, abs=1e-5)
    assert routed != pytest.approx(alone, abs=1e-3)  # the adapters matter, so the routing was tested


def test_rows_with_the_same_prompt_share_its_prefill_and_still_sample_apart(exact):
    """The k self-edits of a context: one prefill row a distinct prompt, the same tokens as prefilling each
    (float64: exactly), and each row sampling from its own generator."""
    prompts = [p for p in PROMPTS[:3] for _ in range(4)]  # as sample_self_edits lays them out: k = 4
    widths = []
    hook = exact.model.register_forward_pre_hook(
        lambda _, args, kwargs: widths.append(kwargs["input_ids"].shape) if kwargs["input_ids"].shape[1] > 1 else None,
        with_kwargs=True)
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=3, batch_size=16)
    try:
        shared = [g.text for g in generate(exact, prompts, **kw)]
    finally:
        hook.remove()
    assert [w[0] for w in widths] == [3]  # one prefill, a row for each distinct prompt
    alone = [g.text for g in generate(exact, prompts, **{**kw, "batch_size": 1})]
    assert shared == alone  # batch size 1 prefills every row by itself
    assert all(len(set(shared[i:i + 4])) > 1 for i in range(0, len(prompts), 4))  # same prompt, different samples
    greedy = _decode(exact, prompts, 16)
    assert greedy == [_decode(exact, [p], 1)[0] for p in prompts]
