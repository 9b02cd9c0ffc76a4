"""The language-model corpus (jaxport.data.corpus) and its config sections: documents -> one token stream with an
end-of-document id after each -> fixed-length windows, cached on disk, read by the resumable per-host iterator."""
import json
import pickle
import random

import numpy as np
import pytest

from jaxport import config as config_lib
from jaxport.data import (
    ByteTokenizer,
    LanguageModelJsonlData,
    LanguageModelTextData,
    LanguageModelTfdsData,
    TokenWindows,
    data_section,
    load_tokenizer,
    make_iterator,
    make_source,
    next_token_example,
    token_stream,
)
from tests import helpers

BYTES = ByteTokenizer()
SINGLE_HOST = {"process_index": 0, "process_count": 1}
DOCUMENTS = [{"text": "ab"}, {"text": "  "}, {"text": "héllo"}, {"text": "c"}]


def byte_ids(text: str) -> list[int]:
    return [byte + 3 for byte in text.encode("utf-8")]


class CountingTokenizer(ByteTokenizer):
    """Bytes, counting the texts it encodes."""

    def __init__(self):
        self.encoded = 0

    def encode_batch(self, texts):
        self.encoded += len(texts)
        return super().encode_batch(texts)


def test_documents_are_concatenated_each_followed_by_the_end_of_document_id():
    stream = token_stream(DOCUMENTS, BYTES)
    end = BYTES.eos_id
    assert list(stream) == [*byte_ids("ab"), end, *byte_ids("héllo"), end, *byte_ids("c"), end]  # blank: left out


def test_windows_for_next_token_prediction_label_every_token_but_the_first_once():
    tokens = np.arange(23)
    windows = TokenWindows(tokens, length=6, stride=5)
    assert len(windows) == 4  # 0..5, 5..10, 10..15, 15..20; 21 and 22 start no whole window
    examples = [next_token_example(windows[i]) for i in range(len(windows))]
    np.testing.assert_array_equal(examples[1]["input_ids"], [5, 6, 7, 8, 9])
    np.testing.assert_array_equal(examples[1]["labels"], [6, 7, 8, 9, 10])
    labels = np.concatenate([example["labels"] for example in examples])
    np.testing.assert_array_equal(labels, np.arange(1, 21))
    assert windows[0]["tokens"].dtype == np.int32
    with pytest.raises(IndexError):
        windows[4]
    with pytest.raises(ValueError, match="the corpus has 23 tokens, fewer than one window of 30"):
        TokenWindows(tokens, length=30, stride=30)


def test_the_stream_is_cached_once_per_documents_and_tokenizer(tmp_path):
    tokenizer = CountingTokenizer()
    first = token_stream(DOCUMENTS, tokenizer, cache_dir=tmp_path, source_id="four documents")
    assert tokenizer.encoded == 3 and isinstance(first, np.memmap) and first.dtype == np.uint16
    again = token_stream(DOCUMENTS, tokenizer, cache_dir=tmp_path, source_id="four documents")
    assert tokenizer.encoded == 3  # read back, not tokenized again
    np.testing.assert_array_equal(again, token_stream(DOCUMENTS, BYTES))
    (info,) = [json.loads(path.read_text()) for path in tmp_path.glob("*.json")]
    assert (info["num_documents"], info["num_tokens"]) == (3, len(again))

    token_stream(DOCUMENTS[:2], tokenizer, cache_dir=tmp_path, source_id="two documents")
    tokenizer.fingerprint = "another tokenizer"
    token_stream(DOCUMENTS, tokenizer, cache_dir=tmp_path, source_id="four documents")
    assert tokenizer.encoded == 3 + 1 + 3 and len(list(tmp_path.glob("*.tokens"))) == 3

    with pytest.raises(ValueError, match="needs a source_id"):
        token_stream(DOCUMENTS, BYTES, cache_dir=tmp_path)


def test_a_truncated_cache_file_is_named(tmp_path):
    token_stream(DOCUMENTS, BYTES, cache_dir=tmp_path, source_id="docs")
    (path,) = tmp_path.glob("*.tokens")
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match=f"{path}.*delete both"):
        token_stream(DOCUMENTS, BYTES, cache_dir=tmp_path, source_id="docs")


def test_windows_of_a_cached_stream_travel_to_worker_processes_as_its_file(tmp_path):
    documents = [{"text": "x" * 5000}]
    windows = TokenWindows(token_stream(documents, BYTES, cache_dir=tmp_path, source_id="long"), length=9, stride=8)
    pickled = pickle.dumps(windows)
    assert len(pickled) < 1000
    copy = pickle.loads(pickled)
    np.testing.assert_array_equal(copy[100]["tokens"], windows[100]["tokens"])


def test_a_document_without_text_is_named():
    with pytest.raises(ValueError, match="document 1 has no 'text' field; it has \\['body'\\]"):
        token_stream([{"text": "a"}, {"body": "b"}], BYTES)
    with pytest.raises(ValueError, match="document 0: 'text' is a int, not text"):
        token_stream([{"text": 3}], BYTES)


def test_a_gpt2_style_tokenizer_without_pad_token_serves_the_corpus(tmp_path):
    texts = [helpers.lm_document(random.Random(i), 3) for i in range(20)]
    tokenizer = load_tokenizer(str(helpers.write_gpt2_style_tokenizer(tmp_path / "tok", texts)))
    assert tokenizer.pad_id is None and tokenizer.eos_id == 0
    stream = token_stream([{"text": "the cat sat"}, {"text": "the dog"}], tokenizer)
    plain = tokenizer.tokenizer("the cat sat", add_special_tokens=False)["input_ids"]
    assert list(stream[:len(plain) + 1]) == [*plain, 0] and stream[-1] == 0 and list(stream).count(0) == 2
    assert load_tokenizer(str(tmp_path / "tok")).fingerprint == tokenizer.fingerprint != BYTES.fingerprint
    other = load_tokenizer(str(helpers.write_gpt2_style_tokenizer(tmp_path / "other", texts, vocab_size=280)))
    assert other.fingerprint != tokenizer.fingerprint


def test_jsonl_and_text_sections_read_globs_and_evaluate_on_their_first_windows(tmp_path):
    for index in range(2):
        (tmp_path / f"part{index}.jsonl").write_text(f'{{"text": "document {index}"}}\n' * 3)
    (tmp_path / "eval.txt").write_text("one line\n\nanother line\n")
    section = data_section(LanguageModelJsonlData, train_path=str(tmp_path / "part*.jsonl"),
                           eval_path=str(tmp_path / "part1.jsonl"), sequence_length=4, num_eval_windows=2)
    train = make_source(section, "train")
    expected = np.array([*byte_ids("document 0"), 1] * 3 + [*byte_ids("document 1"), 1] * 3)
    assert len(train) == (len(expected) - 4) // 4 + 1
    np.testing.assert_array_equal(train[2]["tokens"], expected[8:12])
    assert len(make_source(section, "eval")) == 2
    windows = section_object(section).make("train", overlap=1)
    assert len(windows[0]["tokens"]) == 5 and windows[1]["tokens"][0] == windows[0]["tokens"][-1]

    text = data_section(LanguageModelTextData, train_path=str(tmp_path / "eval.txt"), sequence_length=3)
    np.testing.assert_array_equal(make_source(text, "train")[0]["tokens"], byte_ids("one"))
    assert make_source(text, "eval") is None
    with pytest.raises(FileNotFoundError, match="data.train_path='.*nothing\\*.jsonl' matches no file"):
        make_source(data_section(LanguageModelJsonlData, train_path=str(tmp_path / "nothing*.jsonl"),
                                 sequence_length=4), "train")


def section_object(section):
    return config_lib.section_object("data", section)


def test_a_changed_file_is_tokenized_again(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "aaaa"}\n')
    section = data_section(LanguageModelJsonlData, train_path=str(path), sequence_length=2,
                           cache_dir=str(tmp_path / "cache"))
    assert make_source(section, "train")[0]["tokens"][0] == byte_ids("a")[0]
    path.write_text('{"text": "bbbbbb"}\n')
    assert make_source(section, "train")[0]["tokens"][0] == byte_ids("b")[0]
    assert len(list((tmp_path / "cache").glob("*.tokens"))) == 2


def test_batches_of_windows_split_over_hosts_and_resume(tmp_path):
    documents = [{"text": f"document number {i}"} for i in range(40)]
    windows = TokenWindows(token_stream(documents, BYTES), length=9, stride=8)
    make = lambda host, count: make_iterator(windows, next_token_example, batch_size=4, seed=3, prefetch=0,
                                             process_index=host, process_count=count)
    whole = [next(make(0, 1)) for _ in range(1)][0]
    halves = [next(make(host, 2)) for host in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["input_ids"] for h in halves]), whole["input_ids"])
    assert whole["input_ids"].shape == (4, 8) and whole["labels"].shape == (4, 8)

    iterator = make(0, 1)
    for _ in range(5):
        next(iterator)
    state, expected = iterator.get_state(), next(iterator)
    resumed = make(0, 1)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["labels"], expected["labels"])


@pytest.fixture(scope="module")
def tiny_text_tfds(tmp_path_factory):
    """A TFDS text corpus with one split, prepared by tensorflow_datasets itself (no TensorFlow, no network)."""
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()

    class JaxportTinyText(tfds.core.GeneratorBasedBuilder):  # registered as "jaxport_tiny_text"
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for number in range(10):
                yield number, {"text": f"doc{number}"}

    data_dir = tmp_path_factory.mktemp("tfds")
    JaxportTinyText(data_dir=data_dir).download_and_prepare(file_format="array_record")
    return data_dir


def test_tfds_section_reads_the_builder_and_slices_one_split_for_evaluation(tiny_text_tfds, tmp_path):
    section = data_section(LanguageModelTfdsData, tfds_name="jaxport_tiny_text", data_dir=str(tiny_text_tfds),
                           train_split="train[:-2]", eval_split="train[-2:]", sequence_length=5,
                           cache_dir=str(tmp_path))
    train, evaluation = make_source(section, "train"), make_source(section, "eval")
    assert (len(train), len(evaluation)) == (8, 2)  # 8 documents of 4 bytes + end; 2 of them
    texts = {BYTES.decode(train[i]["tokens"][:4]) for i in range(len(train))}
    assert len(texts) == 8 and texts.isdisjoint({BYTES.decode(evaluation[i]["tokens"][:4]) for i in range(2)})
    assert len(list(tmp_path.glob("*.tokens"))) == 2  # one stream per split
    assert make_source(data_section(LanguageModelTfdsData, tfds_name="x", sequence_length=5), "eval") is None
