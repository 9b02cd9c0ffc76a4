"""SIP's FST pre-training data (sip_jax.fst): generation, splits, simulator, encoding, on-the-fly source."""
import hashlib
import itertools
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest

from sip_jax.fst import (
    SPLITS,
    VOCAB,
    FSTPretrainingSource,
    FSTSeq2SeqPreprocessor,
    FSTTokenizer,
    SamplerConfig,
    SplitConfig,
    canonical_form,
    canonical_forms,
    encode_transitions,
    final_states,
    generate_dataset,
    graph_hash,
    pad_transitions,
    read_jsonl,
    simulate,
)
from sip_jax.fst.transitions import EPSILON, ID, SPECIAL, TO_LOWER, TO_UPPER, num_states

# The team's shared/ folder sits beside the checkout (here and in CI).
SHARED_TOKENIZER = os.environ.get(
    "SIP_FST_TOKENIZER",
    str(Path(__file__).resolve().parents[2] / "shared" / "sip" / "unicode_char_tokenizer_ipa.json"))


def _pynini():
    return pytest.importorskip("pynini", reason="generation needs pynini (pip install pynini)")


@pytest.fixture(scope="module")
def data():
    _pynini()
    return generate_dataset(seed=3, splits=SplitConfig(num_fsts=60))


@pytest.fixture(scope="module")
def fst_tokenizer(tmp_path_factory):
    """The shared SIP tokenizer file when present, else one with the same layout (pad 0, then characters)."""
    if os.path.exists(SHARED_TOKENIZER):
        return FSTTokenizer(SHARED_TOKENIZER)
    symbols = [*VOCAB, *SPECIAL, EPSILON]
    path = tmp_path_factory.mktemp("tok") / "fst_tokenizer.json"
    path.write_text(json.dumps({
        "added_tokens": [{"id": 0, "content": "[PAD]", "special": True}],
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": False},
        "model": {"type": "WordLevel", "unk_token": "[UNK]",
                  "vocab": {"[PAD]": 0, **{s: i + 1 for i, s in enumerate(symbols)}}}}))
    return FSTTokenizer(path)


def _examples(data, split):
    return data.examples[split]


def _tasks(examples):
    """task_id -> (transitions, [(input, output), ...])."""
    tasks = {}
    for example in examples:
        transitions, pairs = tasks.setdefault(example["task_id"], (tuple(map(tuple, example["FST"])), []))
        assert tuple(map(tuple, example["FST"])) == transitions
        pairs.append((example["input"], example["output"]))
    return tasks


def _has_cycle(transitions) -> bool:
    graph = {}
    for source, _, _, target, *_ in transitions:
        graph.setdefault(source, set()).add(target)
    colour = {}

    def visit(state):
        colour[state] = 1
        for target in graph.get(state, ()):
            if colour.get(target) == 1 or (target not in colour and visit(target)):
                return True
        colour[state] = 2
        return False

    return any(state not in colour and visit(state) for state in list(graph))


# ---------------------------------------------------------------------------------------------- generation


def test_vocab_is_the_originals():
    expected = sorted({chr(c) for c in range(32, 127)} | {chr(c) for c in range(592, 688)})
    for removed in "[]\\":
        expected.remove(removed)
    assert VOCAB == "".join(expected) and len(VOCAB) == 188


def test_every_generated_pair_is_accepted_by_its_fst(data):
    checked = 0
    for split in SPLITS:
        for example in _examples(data, split):
            alphabet = data.alphabets[example["task_id"]]
            assert simulate(example["FST"], example["input"], alphabet) == example["output"], (split, example)
            checked += 1
    assert checked == sum(len(_examples(data, split)) for split in SPLITS) > 0


def test_simulator_agrees_with_pynini_on_random_strings(data):
    """Accepted and rejected strings alike: the simulator against composition with the expanded FST."""
    pynini = _pynini()
    from sip_jax.fst.machine import expand_special_arcs

    rng = random.Random(0)
    tasks = _tasks(_examples(data, "train"))
    accepted = rejected = 0
    for task_id, (transitions, pairs) in list(tasks.items())[:12]:
        alphabet = data.alphabets[task_id]
        fst = _fst_from_transitions(pynini, transitions)
        expanded = expand_special_arcs(fst, alphabet)
        strings = [p[0] for p in pairs] + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
                                           for _ in range(15)]
        for text in strings:
            composed = pynini.compose(pynini.accep(text, token_type="utf8"), expanded)
            expected = composed.string(token_type="utf8") if composed.num_states() else None
            assert simulate(transitions, text, alphabet) == expected, (task_id, text)
            accepted += expected is not None
            rejected += expected is None
    assert accepted > 20 and rejected > 20


def _fst_from_transitions(pynini, transitions):
    from sip_jax.fst.transitions import label

    fst = pynini.Fst()
    fst.add_states(num_states(transitions))
    fst.set_start(0)
    for state in final_states(transitions):
        fst.set_final(state, 0)
    for source, symbol_in, symbol_out, target, _ in transitions:
        fst.add_arc(source, pynini.Arc(label(symbol_in), label(symbol_out), 0, target))
    return fst


def test_splits_share_no_fst_and_every_fst_is_distinct(data):
    forms = {split: [canonical_form(t) for t, _ in _tasks(_examples(data, split)).values()]
             for split in ("train", "dev", "test")}
    for split, split_forms in forms.items():
        assert len(set(split_forms)) == len(split_forms), f"{split} repeats an FST"
    assert not set(forms["train"]) & set(forms["dev"])
    assert not set(forms["train"]) & set(forms["test"])
    assert not set(forms["dev"]) & set(forms["test"])


def test_split_sizes_follow_the_original_rule(data):
    fsts = {split: len(_tasks(_examples(data, split))) for split in SPLITS}
    assert fsts == {"train": 48, "dev": 6, "test": 6, "easy_dev": 48}  # 80% / 10% / 10% of 60, easy = min(1000, train)
    for split in SPLITS:
        assert all(len(pairs) == 5 for _, pairs in _tasks(_examples(data, split)).values())


def test_easy_dev_has_training_fsts_with_unseen_inputs(data):
    train = _tasks(_examples(data, "train"))
    easy = _tasks(_examples(data, "easy_dev"))
    assert easy and set(easy) <= set(train)
    for task_id, (transitions, pairs) in easy.items():
        assert transitions == train[task_id][0]
        seen = {text for text, _ in train[task_id][1]}
        assert not seen & {text for text, _ in pairs}, task_id


def test_statistics_within_the_original_settings(data):
    config = SamplerConfig()
    lengths = []
    for split in SPLITS:
        for task_id, (transitions, pairs) in _tasks(_examples(data, split)).items():
            alphabet = data.alphabets[task_id]
            assert config.min_states <= num_states(transitions) <= config.max_states
            assert config.min_vocab_size <= len(alphabet) <= config.max_vocab_size
            assert len(set(alphabet)) == len(alphabet) and set(alphabet) <= set(VOCAB)
            assert {t[1] for t in transitions} - set(SPECIAL) <= set(alphabet)
            assert {t[2] for t in transitions} - set(SPECIAL) <= set(alphabet) | {EPSILON}
            assert all(t[1] != EPSILON for t in transitions)                      # minimisation kept epsilon-free
            assert all(t[2] == t[1] for t in transitions if t[1] in SPECIAL)      # special arcs write themselves
            assert all(len([u for u in transitions if u[0] == t[0]]) == 1 for t in transitions if t[1] in SPECIAL)
            assert _has_cycle(transitions) and final_states(transitions) and 0 not in final_states(transitions)
            for text_in, text_out in pairs:
                assert config.min_input_length <= len(text_in) <= config.max_input_length
                assert len(text_out) <= len(text_in)
                lengths.append(len(text_in))
    assert max(lengths) > 5  # the walk is not stuck at one letter


def test_generation_is_deterministic_for_a_seed(data):
    again = generate_dataset(seed=3, splits=SplitConfig(num_fsts=60))
    assert again.examples == data.examples and again.alphabets == data.alphabets
    other = generate_dataset(seed=4, splits=SplitConfig(num_fsts=60))
    assert other.examples["train"] != data.examples["train"]


def test_same_files_as_the_original_script(tmp_path):
    """sha256 of the files namednil/sip's gen_pretrain.py writes with num_data_points=300 and seed 55
    (run once with pynini 2.1.7 from PyPI, PYTHONHASHSEED=0). Generation matches it byte for byte; the
    string sampler is pynini.randgen, so another pynini/OpenFst version may draw other strings."""
    _pynini()
    expected = {
        "train": "494c217fc9bbecd5ce195c15677c294e10550ef12a1a44bd427a2081c11bc830",
        "dev": "ed34dec9b707835c84c49011b8b284851d17fe22e06cca7eb5d25b0bde6c328f",
        "test": "d382a308ef854835345840cd80de052cd4a5ab0f2d0924e9147c5a5c8e5f025d",
        "easy_dev": "f7913bc3ba5cc1b672affbf29303186c31dcf0ace8398f1a0ed6536e9ad13fce",
    }
    paths = generate_dataset(seed=55, splits=SplitConfig(num_fsts=300)).write(tmp_path)
    got = {split: hashlib.sha256(open(paths[split], "rb").read()).hexdigest() for split in SPLITS}
    assert got == expected


def test_jsonl_round_trip_in_the_originals_format(data, tmp_path):
    paths = data.write(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(f"{s}_pretrain_s4.jsonl" for s in SPLITS)
    for split in SPLITS:
        with open(paths[split]) as file:
            first = file.readline()
        assert list(json.loads(first)) == ["FST", "input", "output", "task_id"]
        assert first.isascii()  # json.dumps' default escaping, as the original writes
        read = read_jsonl(paths[split])
        assert [{**e, "FST": [list(t) for t in e["FST"]]} for e in read] == data.examples[split]
    with_alphabet = data.write(tmp_path / "alpha", with_alphabet=True)
    example = read_jsonl(with_alphabet["train"])[0]
    assert example["alphabet"] == data.alphabets[example["task_id"]]


def test_read_jsonl_names_bad_lines(tmp_path):
    good = json.dumps({"FST": [[0, "a", "b", 1, 2]], "input": "a", "output": "b", "task_id": 1})
    cases = {"wide": (json.dumps({"FST": [[0, "a", "b", 1, 2, 7]], "input": "a", "output": "b"}),
                      r"line 2: transition 0 .* has 6 entries"),
             "broken": ('{"FST": [', r"line 2: invalid JSON"),
             "missing": (json.dumps({"FST": [[0, "a", "b", 1, 2]], "input": "a"}),
                         r"line 2: missing field\(s\) \['output'\]")}
    for name, (line, message) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(good + "\n" + line + "\n")
        with pytest.raises(ValueError, match=f"{name}.jsonl, " + message):
            read_jsonl(path)


def test_command_line(tmp_path):
    _pynini()
    from sip_jax.fst.generate import main

    summary = main(["--out", str(tmp_path), "--num-fsts", "20", "--seed", "4", "--quiet", "--max-states", "3",
                    "--name", "tiny"])
    assert summary["files"]["train"]["fsts"] == 16 and summary["files"]["dev"]["fsts"] == 2
    examples = read_jsonl(tmp_path / "train_tiny.jsonl")
    assert len(examples) == 80 and max(num_states(e["FST"]) for e in examples) <= 3


# -------------------------------------------------------------------------------- simulator and forms


FST = [  # 0 -a:x-> 1 (final) -ID-> 2 (final) -UPPER-> 3 (not final); 3 -b:eps-> 1; 3 -a:a-> 0
    (0, "a", "x", 1, 2), (1, ID, ID, 2, 2), (2, TO_UPPER, TO_UPPER, 3, 1), (3, "b", EPSILON, 1, 2), (3, "a", "a", 0, 1)]


def test_simulator_semantics():
    assert simulate(FST, "a") == "x"
    assert simulate(FST, "aq") == "xq"           # ID copies q
    assert simulate(FST, "aqc") is None          # UPPER wrote C but state 3 is not final
    assert simulate(FST, "aqcb") == "xqC"        # b writes nothing
    assert simulate(FST, "aqca") is None
    assert simulate(FST, "aqcaa") == "xqCax"
    assert simulate(FST, "aq1") is None          # '1' has no upper case: no UPPER arc reads it
    assert simulate(FST, "") is None             # the start state is not final
    assert simulate(FST, "b") is None            # no arc
    assert simulate(FST, "aq", alphabet="ab") is None  # ID reads only the FST's alphabet
    assert simulate([(0, TO_LOWER, TO_LOWER, 1, 2)], "Q") == "q"
    assert simulate([(0, TO_LOWER, TO_LOWER, 1, 2)], "q") is None  # no case change, no arc
    with pytest.raises(ValueError, match="not deterministic"):
        simulate([(0, "a", "a", 1, 2), (0, "a", "b", 0, 1)], "a")
    with pytest.raises(ValueError, match="not deterministic"):
        simulate([(0, "a", "a", 1, 2), (0, ID, ID, 0, 1)], "a")
    with pytest.raises(ValueError, match="both final and not final"):
        simulate([(0, "a", "a", 1, 2), (0, "b", "b", 1, 1)], "a")


def test_canonical_form_is_invariant_to_state_names_and_graph_hash_too():
    rng = random.Random(1)
    for _ in range(20):
        permutation = [0, *rng.sample([1, 2, 3], 3)]
        renamed = [(permutation[s], i, o, permutation[t], f) for s, i, o, t, f in rng.sample(FST, len(FST))]
        assert canonical_form(renamed) == canonical_form(FST)
        assert graph_hash(renamed) == graph_hash(FST)
    changed = [*FST[:3], (3, "b", EPSILON, 2, 2), FST[4]]
    assert canonical_form(changed) != canonical_form(FST)


def test_canonical_form_agrees_with_pywrapfst_isomorphic(data):
    pynini = _pynini()
    tasks = list(_tasks(_examples(data, "train")).values())[:10]
    rng = random.Random(2)
    for transitions, _ in tasks:
        n = num_states(transitions)
        permutation = [0, *rng.sample(range(1, n), n - 1)]
        renamed = [(permutation[s], i, o, permutation[t], f) for s, i, o, t, f in transitions]
        assert pynini.isomorphic(_fst_from_transitions(pynini, transitions), _fst_from_transitions(pynini, renamed))
        assert canonical_form(renamed) == canonical_form(transitions)
    for (a, _), (b, _) in itertools.pairwise(tasks):
        same = pynini.isomorphic(_fst_from_transitions(pynini, a), _fst_from_transitions(pynini, b))
        assert same == (canonical_form(a) == canonical_form(b)) == False  # noqa: E712  (distinct FSTs)


def test_start_state_moved_to_zero():
    pynini = _pynini()
    from sip_jax.fst.machine import fst_transitions, start_at_zero

    fst = pynini.Fst()
    fst.add_states(2)
    fst.set_start(1)
    fst.set_final(0, 0)
    fst.add_arc(1, pynini.Arc(ord("a"), ord("b"), 0, 0))
    fst.add_arc(0, pynini.Arc(ord("c"), 0, 0, 1))
    with pytest.raises(ValueError, match="start state is 1"):
        fst_transitions(fst)
    moved = fst_transitions(start_at_zero(fst))
    assert moved == [(0, "a", "b", 1, 2), (1, "c", EPSILON, 0, 1)]
    assert simulate(moved, "aca") == "bb"


# ------------------------------------------------------------------------------------------- encoding


def test_tokenizer_file_matches_the_tokenizers_library():
    if not os.path.exists(SHARED_TOKENIZER):
        pytest.skip(f"no SIP tokenizer file at {SHARED_TOKENIZER} (set SIP_FST_TOKENIZER)")
    tokenizers = pytest.importorskip("tokenizers")
    reference = tokenizers.Tokenizer.from_file(SHARED_TOKENIZER)
    ours = FSTTokenizer(SHARED_TOKENIZER)
    assert ours.vocab_size == 308 and ours.pad_id == 0
    for symbol in [*VOCAB, *SPECIAL, EPSILON]:
        assert [ours.token_id(symbol)] == reference.encode(symbol).ids, symbol


def test_encode_transitions(fst_tokenizer):
    encoded = encode_transitions(FST, fst_tokenizer, num_states=15)
    assert encoded.dtype == np.int32 and encoded.shape == (5, 5)
    assert encoded[:, 0].tolist() == [0, 1, 2, 3, 3] and encoded[:, 3].tolist() == [1, 2, 3, 1, 0]
    assert encoded[:, 4].tolist() == [2, 2, 1, 2, 1]
    assert encoded[0, 1] == fst_tokenizer.token_id("a") and encoded[3, 2] == fst_tokenizer.token_id(EPSILON)
    assert encoded[1, 1] == encoded[1, 2] == fst_tokenizer.token_id(ID)
    padded = pad_transitions(encoded, 7, num_states=15)
    assert padded.shape == (7, 5) and (padded[5:] == [14, 0, 0, 14, 0]).all() and (padded[:5] == encoded).all()
    narrow = encode_transitions([t[:4] for t in FST], fst_tokenizer)
    assert narrow.shape == (5, 4)


def test_encoding_errors_name_the_bad_item(fst_tokenizer):
    with pytest.raises(ValueError, match=r"transition 1 .*state 14 .*more states than num_states=15"):
        encode_transitions([(0, "a", "b", 1, 2), (1, "a", "b", 14, 2)], fst_tokenizer, num_states=15)
    with pytest.raises(ValueError, match=r"transition 0 .*state 3 .*num_states=4"):
        encode_transitions([(3, "a", "b", 0, 1)], fst_tokenizer, num_states=4)
    with pytest.raises(ValueError, match=r"transition 1 .*'Ж' \(U\+0416\) is not in the FST tokenizer"):
        encode_transitions([(0, "a", "b", 1, 2), (1, "Ж", "b", 0, 1)], fst_tokenizer)
    with pytest.raises(ValueError, match=r"transition 0 .*'€' \(U\+20AC\) is not in the FST tokenizer"):
        encode_transitions([(0, "a", "€", 1, 2)], fst_tokenizer)
    with pytest.raises(ValueError, match=r"transition 2 \(0, 'a', 'b', 1, 2, 9\): has 6 entries"):
        encode_transitions([(0, "a", "b", 1, 2), (1, "b", "a", 0, 1), (0, "a", "b", 1, 2, 9)], fst_tokenizer)
    with pytest.raises(ValueError, match=r"transition 1 \(1, 'b', 'a', 0\): has 4 entries but transition 0 has 5"):
        encode_transitions([(0, "a", "b", 1, 2), (1, "b", "a", 0)], fst_tokenizer)
    with pytest.raises(ValueError, match=r"transition 0 .*input symbol must be a single character, got 'ab'"):
        encode_transitions([(0, "ab", "b", 1, 2)], fst_tokenizer)
    with pytest.raises(ValueError, match=r"transition 0 .*is_final must be 1 .* or 2"):
        encode_transitions([(0, "a", "b", 1, 0)], fst_tokenizer)
    with pytest.raises(ValueError, match="more than max_transitions=2"):
        pad_transitions(encode_transitions(FST, fst_tokenizer), 2)


def test_bad_tokenizer_file(tmp_path):
    path = tmp_path / "bpe.json"
    path.write_text(json.dumps({"model": {"type": "BPE", "vocab": {}}}))
    with pytest.raises(ValueError, match="bpe.json is not a word-level tokenizer"):
        FSTTokenizer(path)


# ----------------------------------------------------------------------------------- on-the-fly source


def test_source_examples_are_valid_and_pure_functions_of_the_index():
    _pynini()
    source = FSTPretrainingSource(seed=1)
    examples = [source[i] for i in range(30)]
    for i, example in enumerate(examples):
        assert simulate(example["FST"], example["input"], source.alphabet(i)) == example["output"]
        assert 1 <= len(example["input"]) <= 35 and 2 <= num_states(example["FST"]) <= 4
    assert len({canonical_form(e["FST"]) for e in examples}) > 25
    fresh = FSTPretrainingSource(seed=1)
    assert [fresh[i] for i in (29, 3, 17)] == [examples[29], examples[3], examples[17]]
    assert pickle.loads(pickle.dumps(source))[11] == examples[11]
    assert FSTPretrainingSource(seed=2)[0] != examples[0]
    assert not hasattr(source, "__len__")
    with pytest.raises(IndexError):
        source[-1]
    grouped = FSTPretrainingSource(seed=1, examples_per_fst=5)
    batch = [grouped[i] for i in range(10)]
    assert [e["task_id"] for e in batch] == [0] * 5 + [1] * 5 and batch[0]["FST"] == batch[4]["FST"]


def test_source_skips_excluded_fsts():
    _pynini()
    plain = FSTPretrainingSource(seed=5)
    held_out = canonical_forms(plain[i] for i in range(6))
    filtered = FSTPretrainingSource(seed=5, exclude=held_out)
    assert not {canonical_form(filtered[i]["FST"]) for i in range(6)} & held_out


def test_source_resumes_exactly_through_the_batch_iterator(fst_tokenizer):
    _pynini()
    from jaxport.data import ByteTokenizer, make_iterator

    # ByT5 bytes: 35 letters of up to 2 UTF-8 bytes in, up to 3 out (upper-cased IPA), and eos
    preprocess = FSTSeq2SeqPreprocessor(ByteTokenizer(), fst_tokenizer, max_input_length=71, max_target_length=106)
    source = FSTPretrainingSource(seed=7)

    def iterator():
        return make_iterator(source, preprocess, batch_size=4, seed=0, prefetch=0, process_index=0, process_count=1)

    first = iterator()
    for _ in range(2):
        next(first)
    state = first.get_state()
    expected = [next(first) for _ in range(2)]
    resumed = iterator()
    resumed.set_state(json.loads(json.dumps(state)))
    for batch, want in zip([next(resumed) for _ in range(2)], expected, strict=True):
        assert batch.keys() == want.keys() and all(np.array_equal(batch[k], want[k]) for k in batch)
    assert expected[0]["fst_rep"].shape == (4, 100, 5) and expected[0]["input_ids"].shape == (4, 71)
    example = source[8]  # the first row of the third batch
    assert np.array_equal(expected[0]["fst_rep"][0, :len(example["FST"])],
                          encode_transitions(example["FST"], fst_tokenizer))
    assert (expected[0]["fst_rep"][0, len(example["FST"]):, 0] == 14).all()


# Built-in tokenizer and few-shot tasks

def test_builtin_tokenizer_covers_every_symbol_the_generator_writes(data):
    tokenizer = FSTTokenizer.builtin()
    assert tokenizer.pad_id == 0 and sorted(tokenizer.vocab.values()) == list(range(tokenizer.vocab_size))
    case_forms = {mapped for char in VOCAB for mapped in (char.upper(), char.lower()) if len(mapped) == 1}
    for symbol in (*VOCAB, *SPECIAL, EPSILON, *case_forms):
        tokenizer.token_id(symbol)
    for split in SPLITS:  # every generated FST encodes
        for example in data.examples[split][:50]:
            encode_transitions(example["FST"], tokenizer)
    with pytest.raises(ValueError, match=r"'Ж' \(U\+0416\) is not in the FST tokenizer <builtin>"):
        tokenizer.token_id("Ж")


def test_fewshot_tasks_are_unseen_simulated_and_distinct(tmp_path):
    _pynini()
    from sip_jax.fst.fewshot import make_tasks, write_tasks

    sampler = SamplerConfig(min_vocab_size=3, max_vocab_size=5, vocab="abcdefgh", max_input_length=8)
    tasks = make_tasks(sampler, num_tasks=3, num_train=10, num_test=20, seed=5)
    write_tasks(tasks, tmp_path)
    for number, task in enumerate(tasks):
        rows = [line.split("\t") for line in (tmp_path / f"task_{number}" / "train.tsv").read_text().splitlines()]
        assert rows[0] == ["input", "output"] and [tuple(r) for r in rows[1:]] == task["train"]
        inputs = [i for i, _ in task["train"] + task["test"]]
        assert len(inputs) == 30 == len(set(inputs))  # no test input is a training input
        for text_in, text_out in task["train"] + task["test"]:
            assert simulate(task["transitions"], text_in, task["alphabet"]) == text_out
    # Pre-training that excludes the tasks' file never draws them, even from the tasks' own seed.
    from sip_jax.fst import canonical_forms_of_files

    excluded = canonical_forms_of_files([tmp_path / "fsts.jsonl"])
    assert excluded == {canonical_form(task["transitions"]) for task in tasks}
    source = FSTPretrainingSource(seed=5, sampler=sampler, exclude=excluded)
    assert not {canonical_form(source[i]["FST"]) for i in range(20)} & excluded
