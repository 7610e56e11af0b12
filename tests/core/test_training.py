import torch

from seal.core.config import LoraTrainConfig
from seal.core.generation import completion_logprobs, format_prompt, generate
from seal.core.training import collate, fresh_adapter, lm_examples, sft_and_merge, sft_example, train


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_collate_pads_dynamically_without_loss_on_padding(tokenizer):
    ex = lm_examples(tokenizer, ["short", "a somewhat longer training sequence here"], max_len=512)
    batch = collate(ex, tokenizer.pad_token_id)
    width = max(len(e.input_ids) for e in ex)
    assert batch["input_ids"].shape == (2, width)  # padded to the batch, not to a fixed length
    n0 = len(ex[0].input_ids)
    assert (batch["labels"][0, n0:] == -100).all() and (batch["attention_mask"][0, n0:] == 0).all()
    assert ex[0].input_ids == tokenizer("short", add_special_tokens=False)["input_ids"]


def test_sft_example_has_loss_on_completion_only(tokenizer):
    e = sft_example(tokenizer, "Write facts:", " The sky is green.", max_len=512)
    n_prompt = len(tokenizer("Write facts:", add_special_tokens=False)["input_ids"])
    assert e.labels[:n_prompt] == [-100] * n_prompt
    assert e.labels[n_prompt:] == e.input_ids[n_prompt:] and e.labels[-1] == tokenizer.eos_token_id


def test_fresh_adapter_changes_outputs_and_leaves_base_exactly_as_it_was(tiny):
    before = snapshot(tiny.model)
    names_before = [n for n, _ in tiny.model.named_modules()]
    ids = tiny.tokenizer("Varnholt Observatory was founded in 1873.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits_before = tiny.model(ids).logits
    cfg = LoraTrainConfig(rank=4, alpha=8, lr=1e-2, epochs=3, batch_size=2)
    with fresh_adapter(tiny, cfg, seed=0) as wrapped:
        stats = train(wrapped, lm_examples(tiny.tokenizer, ["Varnholt Observatory was founded in 1873."] * 4, 64),
                      cfg, seed=0, pad_id=tiny.tokenizer.pad_token_id, device=tiny.device)
        with torch.no_grad():
            logits_adapted = wrapped(ids).logits
        assert not torch.allclose(logits_adapted, logits_before)
    assert stats.last_loss < stats.first_loss and stats.steps == 6
    after = snapshot(tiny.model)
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [n for n, _ in tiny.model.named_modules()] == names_before  # no LoRA modules left behind
    with torch.no_grad():
        assert torch.equal(tiny.model(ids).logits, logits_before)


def test_adapter_init_and_training_are_seeded(tiny):
    cfg = LoraTrainConfig(rank=4, alpha=8, lr=1e-2, epochs=1, batch_size=1)
    examples = lm_examples(tiny.tokenizer, ["one fact here", "another fact there"], 64)
    results = []
    for _ in range(2):
        with fresh_adapter(tiny, cfg, seed=7) as wrapped:
            train(wrapped, examples, cfg, seed=7, pad_id=tiny.tokenizer.pad_token_id, device=tiny.device)
            results.append({k: v.clone() for k, v in wrapped.state_dict().items() if "lora_" in k})
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_sft_and_merge_changes_the_policy_and_saves_the_adapter(tiny, tmp_path):
    before = snapshot(tiny.model)
    cfg = LoraTrainConfig(rank=4, alpha=8, lr=1e-2, epochs=1, batch_size=2)
    examples = [sft_example(tiny.tokenizer, "Facts:", " the moon is cheese", 64)] * 2
    sft_and_merge(tiny, examples, cfg, seed=0, precision="fp32", save_dir=tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    after = snapshot(tiny.model)
    assert after.keys() == before.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before if "q_proj" in k)


def test_generation_is_batched_seeded_and_reports_limits(tiny):
    prompts = [format_prompt(tiny, p, chat=True) for p in ["Hello", "A longer prompt about Varnholt"]]
    a = generate(tiny, prompts, max_new_tokens=5, temperature=1.0, top_p=0.9, seed=3)
    b = generate(tiny, prompts, max_new_tokens=5, temperature=1.0, top_p=0.9, seed=3)
    assert [g.text for g in a] == [g.text for g in b]
    assert all(g.n_tokens <= 5 for g in a)
    greedy_batch = generate(tiny, prompts, max_new_tokens=5, batch_size=2)
    greedy_single = [generate(tiny, [p], max_new_tokens=5)[0] for p in prompts]
    assert [g.text for g in greedy_batch] == [g.text for g in greedy_single]  # left padding is masked


def test_completion_logprobs_are_batch_independent(tiny):
    prompts, answers = ["Question: when? Answer:", "Q: who founded the observatory? A:"], ["1873", "Ilse Marrowind"]
    batched = completion_logprobs(tiny, prompts, answers, batch_size=2)
    single = [completion_logprobs(tiny, [p], [a])[0] for p, a in zip(prompts, answers)]
    assert all(b < 0 for b in batched)
    assert batched == __import__("pytest").approx(single, abs=1e-4)


def test_first_line_stop_skips_leading_newlines(tokenizer):
    from seal.core.generation import FirstLineDone

    prompt = tokenizer(["Answer:"], return_tensors="pt")["input_ids"]
    stop = FirstLineDone(tokenizer, prompt.shape[1])

    def rows(*continuations):
        ids = [prompt[0].tolist() + tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        width = max(map(len, ids))
        return torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i in ids])

    assert stop(rows("\n", " 1873"), None).tolist() == [False, False]
    assert stop(rows("\n 1873\n", " 1873 and\n"), None).tolist() == [True, True]


def test_a_long_prompt_loses_its_beginning_not_the_self_edit(tokenizer):
    prompt, completion = "Read this. " * 200, " The sky is green."
    e = sft_example(tokenizer, prompt, completion, max_len=64)
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(e.input_ids) == 64 and e.input_ids[-len(c):] == c and e.labels[-len(c):] == c
    assert e.labels[:64 - len(c)] == [-100] * (64 - len(c))  # what is left of the prompt: its end
    long = sft_example(tokenizer, prompt, " fact." * 100, max_len=64)
    assert sum(label != -100 for label in long.labels) == 32  # half the window for the prompt


def test_a_non_finite_update_is_never_merged(tiny, tmp_path):
    from seal.core.training import Example, has_target

    before = snapshot(tiny.model)
    no_target = Example([5, 6, 7], [-100, -100, -100])  # the loss of a batch without labels is NaN
    assert not has_target(no_target)
    cfg = LoraTrainConfig(rank=4, alpha=8, lr=1e-2, epochs=1, batch_size=2)
    stats = sft_and_merge(tiny, [no_target, no_target], cfg, seed=0, precision="fp32", save_dir=tmp_path / "a")
    assert stats.problem and "non-finite loss" in stats.problem and stats.nonfinite == 1
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # unchanged: nothing merged
    assert not (tmp_path / "a").exists()  # and nothing saved


def test_gradients_are_clipped_in_both_inner_loops(tiny, monkeypatch):
    from seal.core import multi_lora

    cfg = LoraTrainConfig(rank=4, alpha=8, lr=1e-2, epochs=2, batch_size=2, max_grad_norm=0.01)
    examples = lm_examples(tiny.tokenizer, ["Varnholt Observatory was founded in 1873.", "It has two domes."], 64)
    seen = []
    step = torch.optim.AdamW.step

    def spy(self, *a, **kw):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in grads]))))
        return step(self, *a, **kw)
    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    with fresh_adapter(tiny, cfg, seed=0) as wrapped:
        train(wrapped, examples, cfg, seed=0, pad_id=tiny.tokenizer.pad_token_id, device=tiny.device)
    assert len(seen) == 2 and max(seen) <= 0.01 * 1.001

    bank_norms = []
    bank_step = multi_lora.BatchedAdamW.step

    def bank_spy(self, active):
        bank_norms.append(self.grad.norm(dim=1).max().item())
        return bank_step(self, active)
    monkeypatch.setattr(multi_lora.BatchedAdamW, "step", bank_spy)
    with multi_lora.adapter_bank(tiny, cfg, [1, 2]) as bank:
        multi_lora.train_bank(tiny, bank, [examples, examples[:1]], cfg, seeds=[1, 2])
    assert len(bank_norms) == 2 and max(bank_norms) <= 0.01 * 1.001


def test_the_schedule_is_the_hugging_face_linear_one():
    from transformers import get_linear_schedule_with_warmup

    from seal.core.training import lr_factor

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_linear_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=10)
    for s in range(10):
        assert lr_factor(s, 10, 3) == hf.lr_lambdas[0](s)
        assert abs(lr_factor(s, 10, 0) - max(0.0, 1 - s / 10)) < 1e-12  # no warmup: the decay used before
