import dataclasses
import json
import os
import pathlib
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest

from jaxport import config as config_lib
from jaxport.data import (
    EXAMPLE_MASK,
    ByteTokenizer,
    HuggingFaceTokenizer,
    JsonlSource,
    Seq2SeqPreprocessor,
    SyntheticData,
    SyntheticTask,
    TextLineSource,
    TfdsSource,
    TsvData,
    TsvSource,
    data_section,
    make_eval_iterator,
    make_iterator,
    make_source,
)

BYTES = ByteTokenizer()
SINGLE_HOST = {"process_index": 0, "process_count": 1}
ROOT = pathlib.Path(__file__).resolve().parents[1]
T5_CONFIG = str(ROOT / "configs" / "t5_reverse.py")


def numbered_source(size):
    return [{"inputs": f"in{i}", "targets": f"out{i}"} for i in range(size)]


def preprocess(max_length=8, **options):
    return Seq2SeqPreprocessor(BYTES, max_input_length=max_length, max_target_length=max_length, **options)


def take(iterator, count):
    batches = [next(iterator) for _ in range(count)]
    iterator.close()
    return batches


def decoded_inputs(batch):
    return [BYTES.decode(row) for row in batch["input_ids"]]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


# Tokenizers and preprocessing

@pytest.mark.parametrize("text", ["hello", "", "héllo wörld ✓ 日本語 🙂"])
def test_byte_tokenizer_round_trip(text):
    ids = BYTES.encode(text)
    assert list(ids) == [byte + 3 for byte in text.encode("utf-8")] + [BYTES.eos_id]
    assert BYTES.decode(ids) == text
    assert BYTES.decode([BYTES.pad_id, *ids, BYTES.unk_id, BYTES.pad_id]) == text


def test_byte_tokenizer_truncation_keeps_eos():
    ids = BYTES.encode("abcdef", max_length=4)
    assert list(ids) == [ord("a") + 3, ord("b") + 3, ord("c") + 3, BYTES.eos_id]


def test_hugging_face_adapter_matches_byt5_tokenizer():
    from transformers import ByT5Tokenizer

    adapted = HuggingFaceTokenizer(ByT5Tokenizer())
    assert (adapted.pad_id, adapted.eos_id) == (BYTES.pad_id, BYTES.eos_id)
    for text in ["abc", "héllo 🙂"]:
        assert list(adapted.encode(text)) == list(BYTES.encode(text))
        assert list(adapted.encode(text, max_length=3)) == list(BYTES.encode(text, max_length=3))
        assert adapted.decode([0, *BYTES.encode(text), 0]) == text


def test_seq2seq_preprocessor_layout():
    arrays = preprocess(max_length=5)({"inputs": "ab", "targets": "xyz"})
    a, b, x, y, z = (ord(char) + 3 for char in "abxyz")
    expected = {
        "input_ids": [a, b, 1, 0, 0],
        "attention_mask": [1, 1, 1, 0, 0],
        "labels": [x, y, z, 1, 0],
        "decoder_input_ids": [0, x, y, z, 1],
        "decoder_attention_mask": [1, 1, 1, 1, 0],
    }
    assert arrays.keys() == expected.keys()
    for key, values in expected.items():
        assert arrays[key].dtype == np.int32
        np.testing.assert_array_equal(arrays[key], values)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_too_long_example_names_index_and_length(prefetch):
    source = numbered_source(6)
    source[4] = {"inputs": "x" * 20, "targets": "y"}
    iterator = make_eval_iterator(source, preprocess(), batch_size=2, prefetch=prefetch, **SINGLE_HOST)
    next(iterator), next(iterator)
    with pytest.raises(ValueError, match=r"example 4: 'inputs' is 21 tokens long, more than the limit of 8"):
        next(iterator)
    iterator.close()


def test_truncation_when_asked():
    arrays = preprocess(truncate=True)({"inputs": "x" * 20, "targets": "y"})
    assert BYTES.decode(arrays["input_ids"]) == "x" * 7
    assert arrays["input_ids"][-1] == BYTES.eos_id


# Synthetic tasks

@pytest.mark.parametrize("task, relation", [
    ("copy", lambda text: text), ("reverse", lambda text: text[::-1]), ("sort", lambda text: "".join(sorted(text))),
])
def test_synthetic_task_targets(task, relation):
    source = SyntheticTask(task, seed=3, alphabet="abc", min_length=2, max_length=6)
    examples = [source[i] for i in range(50)]
    for example in examples:
        assert example["targets"] == relation(example["inputs"])
        assert 2 <= len(example["inputs"]) <= 6 and set(example["inputs"]) <= set("abc")
    assert len({example["inputs"] for example in examples}) > 10


def test_synthetic_task_is_a_function_of_seed_and_index():
    assert SyntheticTask("reverse", seed=1)[123] == SyntheticTask("reverse", seed=1)[123]
    first_five = [[SyntheticTask("reverse", seed=seed)[i] for i in range(5)] for seed in (1, 2)]
    assert first_five[0] != first_five[1]


# Batch iterator

def test_same_seed_same_batches_other_seed_differs():
    def batches(seed):
        return take(make_iterator(numbered_source(40), preprocess(), batch_size=8, seed=seed, **SINGLE_HOST), 5)

    assert_same_batches(batches(0), batches(0))
    assert decoded_inputs(batches(0)[0]) != decoded_inputs(batches(1)[0])


def test_epochs_reshuffle_and_drop_the_incomplete_batch():
    iterator = make_iterator(numbered_source(10), preprocess(), batch_size=4, num_epochs=2, **SINGLE_HOST)
    assert iterator.batches_per_epoch == 2
    epochs = [[], []]
    for index, batch in enumerate(iterator):
        assert batch["input_ids"].shape == (4, 8) and EXAMPLE_MASK not in batch
        epochs[index // 2] += decoded_inputs(batch)
    for epoch in epochs:
        assert len(set(epoch)) == 8 and set(epoch) <= {f"in{i}" for i in range(10)}
    assert epochs[0] != epochs[1]
    assert iterator.get_state()["epoch"] == 2


class EpochStamp:
    """A preprocess_fn that asks for the epoch (takes_epoch) and returns it beside the example's number."""
    takes_epoch = True

    def __call__(self, example, epoch):
        return {"number": np.int32(example["inputs"][2:]), "epoch": np.int32(epoch)}


def test_a_preprocess_that_takes_the_epoch_gets_it_and_resuming_repeats_it():
    def new_iterator():
        return make_iterator(numbered_source(6), EpochStamp(), batch_size=3, seed=1, **SINGLE_HOST)

    iterator = new_iterator()
    batches = take(iterator, 5)
    assert [batch["epoch"].tolist() for batch in batches] == [[0] * 3, [0] * 3, [1] * 3, [1] * 3, [2] * 3]
    assert sorted(np.concatenate([b["number"] for b in batches[:2]]).tolist()) == list(range(6))
    resumed = new_iterator()
    resumed.set_state(json.loads(json.dumps(iterator.get_state())))
    assert_same_batches(take(resumed, 2), take(iterator, 2))

@pytest.mark.parametrize("prefetch", [0, 3])
@pytest.mark.parametrize("source", [numbered_source(10), SyntheticTask("sort")], ids=["finite", "infinite"])
def test_resume_continues_exactly(source, prefetch):
    def new_iterator():
        return make_iterator(source, preprocess(max_length=20), batch_size=4, seed=7, prefetch=prefetch, **SINGLE_HOST)

    iterator = new_iterator()
    take(iterator, 3)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = take(iterator, 5)  # crosses epoch boundaries of the finite source
    resumed = new_iterator()
    resumed.set_state(state)
    assert_same_batches(take(resumed, 5), expected)


@pytest.mark.parametrize("source", [numbered_source(10), SyntheticTask("sort")], ids=["finite", "infinite"])
def test_worker_processes_give_the_same_batches_and_resume(source):
    def new_iterator(num_workers):
        return make_iterator(source, preprocess(max_length=20), batch_size=4, seed=7, num_workers=num_workers,
                             **SINGLE_HOST)

    expected = take(new_iterator(0), 8)
    pooled = new_iterator(2)
    assert_same_batches(take(pooled, 3), expected[:3])
    state = pooled.get_state()
    pooled.close()
    resumed = new_iterator(2)
    resumed.set_state(state)
    assert_same_batches(take(resumed, 5), expected[3:])
    resumed.close()


def test_worker_errors_name_the_example():
    source = numbered_source(6)
    source[4] = {"inputs": "x" * 20, "targets": "y"}
    iterator = make_iterator(source, preprocess(), batch_size=2, shuffle=False, num_workers=2, **SINGLE_HOST)
    next(iterator), next(iterator)
    with pytest.raises(ValueError, match=r"example 4: 'inputs' is 21 tokens long"):
        next(iterator)
    iterator.close()


def test_set_state_rejects_other_order_settings():
    state = make_iterator(numbered_source(10), preprocess(), batch_size=4, seed=1, **SINGLE_HOST).get_state()
    other = make_iterator(numbered_source(10), preprocess(), batch_size=4, seed=2, **SINGLE_HOST)
    with pytest.raises(ValueError, match="seed"):
        other.set_state(state)


@pytest.mark.parametrize("make", [make_iterator, make_eval_iterator])
def test_host_slices_partition_the_global_batch(make):
    def batches(process_index, process_count):
        iterator = make(numbered_source(21), preprocess(), batch_size=8, prefetch=0,
                        process_index=process_index, process_count=process_count)
        return list(iterator) if make is make_eval_iterator else take(iterator, 5)

    global_batches = batches(0, 1)
    per_host = [batches(index, 4) for index in range(4)]
    for step, global_batch in enumerate(global_batches):
        host_batches = [host[step] for host in per_host]
        assert all(len(batch["input_ids"]) == 2 for batch in host_batches)
        for key in global_batch:
            np.testing.assert_array_equal(np.concatenate([batch[key] for batch in host_batches]), global_batch[key])


def test_eval_pads_the_last_batch_and_masks_it():
    batches = list(make_eval_iterator(numbered_source(10), preprocess(), batch_size=4, **SINGLE_HOST))
    assert len(batches) == 3
    assert all(batch["input_ids"].shape == (4, 8) for batch in batches)
    np.testing.assert_array_equal(batches[-1][EXAMPLE_MASK], [True, True, False, False])
    real = [text for batch in batches
            for text, is_real in zip(decoded_inputs(batch), batch[EXAMPLE_MASK], strict=True) if is_real]
    assert real == [f"in{i}" for i in range(10)]


def test_hosts_default_to_jax_processes():
    def first_batch(**hosts):
        return next(make_iterator(numbered_source(16), preprocess(), batch_size=8, prefetch=0, **hosts))

    with mock.patch("jax.process_index", return_value=2), mock.patch("jax.process_count", return_value=4):
        by_default = first_batch()
    assert_same_batches([by_default], [first_batch(process_index=2, process_count=4)])
    assert decoded_inputs(by_default) != decoded_inputs(first_batch(process_index=0, process_count=4))


def test_batch_size_must_split_over_hosts():
    with pytest.raises(ValueError, match="divisible"):
        make_iterator(numbered_source(10), preprocess(), batch_size=6, process_index=0, process_count=4)


# File sources

def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_source(tmp_path):
    path = write(tmp_path / "pairs.tsv", "a b\tA B\n\nc\tC\t3\n")
    with pytest.raises(ValueError, match=rf"{path}, line 3: expected 2 tab-separated fields"):
        TsvSource(path)
    path = write(tmp_path / "scored.tsv", "a b\tA B\t1\n\nc\tC\t3\n")
    source = TsvSource(path, fields=("inputs", "targets", "score"))
    assert len(source) == 2
    assert source[0] == {"inputs": "a b", "targets": "A B", "score": "1"}
    assert source[1] == {"inputs": "c", "targets": "C", "score": "3"}


def test_jsonl_source(tmp_path):
    rows = [{"article": "é long text", "abstract": "short", "id": 1}, {"article": "b", "abstract": "B"}]
    path = write(tmp_path / "docs.jsonl", "\n".join(map(json.dumps, rows)) + '\n{"article": "c"}\n{oops\n')
    source = JsonlSource(path, fields=("article", "abstract"))
    assert len(source) == 4
    assert source[0] == {"article": "é long text", "abstract": "short"}
    with pytest.raises(ValueError, match=rf"{path}, line 3: missing field\(s\) \['abstract'\]"):
        source[2]
    with pytest.raises(ValueError, match=rf"{path}, line 4: invalid JSON"):
        source[3]


def test_text_line_source(tmp_path):
    source = TextLineSource(write(tmp_path / "lines.txt", "first line\r\nsecond\n\n"))
    assert [source[i] for i in range(len(source))] == [{"text": "first line"}, {"text": "second"}]


# TFDS, prepared locally by tensorflow_datasets itself (no TensorFlow, no network)

@pytest.fixture(scope="module")
def tiny_tfds_builder():
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()

    class JaxportTinyPairs(tfds.core.GeneratorBasedBuilder):  # registered as "jaxport_tiny_pairs"
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict(
                {"inputs": tfds.features.Text(), "targets": tfds.features.Text(), "number": np.int32})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6), "validation": self._generate_examples(3)}

        def _generate_examples(self, count):
            for number in range(count):
                yield number, {"inputs": f"ü{number}", "targets": f"t{number}", "number": number}

    return JaxportTinyPairs


def test_tfds_source(tiny_tfds_builder, tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared"):
        TfdsSource("jaxport_tiny_pairs", "train", data_dir=tmp_path)
    TfdsSource("jaxport_tiny_pairs", "train", data_dir=tmp_path, download=True)  # download_and_prepare

    source = TfdsSource("jaxport_tiny_pairs", "validation", data_dir=tmp_path, fields=("inputs", "targets"))
    assert sorted(source[i]["inputs"] for i in range(len(source))) == ["ü0", "ü1", "ü2"]
    train = TfdsSource("jaxport_tiny_pairs", "train", data_dir=tmp_path)
    assert {train[i]["number"]: train[i]["targets"] for i in range(len(train))} == {i: f"t{i}" for i in range(6)}
    batches = list(make_eval_iterator(train, preprocess(), batch_size=4, **SINGLE_HOST))
    assert sum(batch[EXAMPLE_MASK].sum() for batch in batches) == 6

    # Read where the builder class is unknown, as for a dataset prepared elsewhere by `tfds build`.
    read_by_name = ("from jaxport.data import TfdsSource; "
                    f"source = TfdsSource('jaxport_tiny_pairs', 'train[:2]', data_dir={str(tmp_path)!r}); "
                    "print(len(source), type(source[0]['inputs']).__name__)")
    repo_root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", read_by_name], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(repo_root)})
    assert result.stdout.split() == ["2", "str"]

    with pytest.raises(ValueError, match="no feature"):
        TfdsSource("jaxport_tiny_pairs", "train", data_dir=tmp_path, fields=("article",))
    with pytest.raises(ValueError, match="neither registered"):
        TfdsSource("jaxport_no_such_dataset", "train", data_dir=tmp_path)


# The data section of a config, typed by its source

def test_a_source_declares_its_keys_and_defaults():
    section = data_section(TsvData, train_path="a.tsv", max_input_length=8, max_target_length=4)
    assert section.to_dict() == {"source": "tsv", "max_input_length": 8, "max_target_length": 4, "tokenizer": "bytes",
                                 "input_key": "inputs", "target_key": "targets", "truncate": False,
                                 "train_path": "a.tsv", "eval_path": "", "num_eval_examples": 0}
    with pytest.raises(config_lib.ConfigError, match="data.source='tsv' needs data.max_input_length, "
                                                     "data.max_target_length"):
        data_section(TsvData)


def test_a_key_of_another_source_or_none_names_the_valid_keys():
    # Other families' sources with a `task` key (Perceiver's GLUE ones) are named too once imported.
    with pytest.raises(config_lib.ConfigError, match=r"'data.task' for data.source='tsv' \(a key of "
                                                     r"data.source='synthetic'[^)]*\); its keys are .*data.train_path"):
        data_section(TsvData, task="reverse", max_input_length=8, max_target_length=8)
    with pytest.raises(config_lib.ConfigError, match=r"'data.tsk' for data.source='synthetic'; its keys are "
                                                     r"data.max_input_length, .*; did you mean 'data.task'"):
        config_lib.load_config(T5_CONFIG, ["data.tsk=sort"])
    # Families register sources of their own when imported (SIP's sip_tsv has a train_path too).
    with pytest.raises(config_lib.ConfigError, match=r"'data.train_path' for data.source='synthetic' \(a key of "
                                                     r"data.source='tsv' or 'jsonl'"):
        config_lib.load_config(T5_CONFIG, ["data.train_path=a.tsv"])
    with pytest.raises(config_lib.ConfigError, match=r"data.source='csv' is not one of \[.*'tsv'\]"):
        config_lib.load_config(T5_CONFIG, ["data.source=csv"])


@pytest.mark.parametrize("order", [1, -1])
def test_overriding_the_source_swaps_its_keys_keeping_what_the_config_set(tmp_path, order):
    path = write(tmp_path / "pairs.tsv", "".join(f"in{i}\tout{i}\n" for i in range(5)))
    overrides = [f"data.train_path={path}", f"data.eval_path={path}", "data.num_eval_examples=2", "data.source=tsv"]
    config = config_lib.load_config(T5_CONFIG, overrides[::order])
    default = config_lib.load_config(T5_CONFIG)
    assert set(config.data) == {"source", *(field.name for field in dataclasses.fields(TsvData))}
    # The synthetic source's values that t5_reverse.py set carry over; its defaults give way to the TSV source's.
    assert config.data.max_input_length == default.data.max_input_length == 16
    assert config.data.num_eval_examples == 2 != default.data.num_eval_examples
    assert make_source(config.data, "train")[4] == {"inputs": "in4", "targets": "out4"}
    evaluation = make_source(config.data, "eval")
    assert [evaluation[i] for i in range(len(evaluation))] == [{"inputs": "in0", "targets": "out0"},
                                                                {"inputs": "in1", "targets": "out1"}]
    assert make_source(config_lib.load_config(T5_CONFIG, overrides[:1] + overrides[-1:]).data, "eval") is None


def test_synthetic_source_evaluates_on_another_seeds_examples():
    section = data_section(SyntheticData, task="sort", num_eval_examples=3, max_input_length=8, max_target_length=8)
    train, evaluation = make_source(section, "train"), make_source(section, "eval")
    assert len(evaluation) == 3 and all(e["targets"] == "".join(sorted(e["inputs"])) for e in evaluation)
    assert evaluation != [train[i] for i in range(3)]


@config_lib.section_kind("test_section", "kind", "nested")
@dataclasses.dataclass(frozen=True, kw_only=True)
class NestedKind:
    sub: dict = dataclasses.field(default_factory=lambda: {"width": 2, "depth": 3})


def test_a_dict_key_is_a_sub_section_whose_keys_are_checked():
    assert config_lib.typed_section(NestedKind, sub={"depth": 5}).sub.to_dict() == {"width": 2, "depth": 5}
    with pytest.raises(config_lib.ConfigError, match="'test_section.sub.dpth'; did you mean 'test_section.sub.dep"):
        config_lib.typed_section(NestedKind, sub={"dpth": 5})
