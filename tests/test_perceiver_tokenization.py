"""PerceiverTokenizer gives the ids of transformers' PerceiverTokenizer, and decodes as it does."""
import numpy as np
import pytest
import transformers

from perceiver_jax import PerceiverTokenizer

TEXTS = [
    "", " ", "Hello, world!", "This is an incomplete sentence where some words are missing.",
    "café naïve Ångström façade", "日本語のテキスト", "中文，标点。", "😀👍🏽 emoji and ZWJ 👩‍👩‍👧", "\u0000\t\n\r\x7f",
    "a [MASK] b", "[MASK][PAD]x[SEP][CLS][BOS][EOS]", "[mask] [MASK [[MASK]]", "  leading and trailing  ",
    "\u00e9 vs e\u0301 (composed and decomposed)", "Ελληνικά Русский עברית العربية हिन्दी", "\U0010ffff\ufeff",
]
PAIRS = [("", ""), ("first", "second text"), ("日本", "café [MASK]"), ("a" * 9, "b" * 4), ("x" * 3, "y" * 11)]


@pytest.fixture(scope="module")
def reference():
    return transformers.PerceiverTokenizer()


@pytest.fixture(scope="module")
def ours():
    return PerceiverTokenizer()


def test_special_tokens_and_vocabulary(reference, ours):
    for name in ("pad", "bos", "eos", "mask", "cls", "sep"):
        assert getattr(ours, f"{name}_token_id") == getattr(reference, f"{name}_token_id"), name
        assert getattr(ours, f"{name}_token") == str(getattr(reference, f"{name}_token")), name
    assert len(ours) == len(reference) == 262
    assert ours.model_max_length == reference.model_max_length == 2048


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_ids_equal_transformers(reference, ours, add_special_tokens):
    for text in TEXTS:
        assert ours(text, add_special_tokens=add_special_tokens) == dict(
            reference(text, add_special_tokens=add_special_tokens)), repr(text)
    for first, second in PAIRS:
        assert ours.encode(first, second) == reference(first, second).input_ids, (first, second)


def test_a_batch_pads_and_truncates_as_transformers(reference, ours):
    cases = [dict(padding=True), dict(padding="longest", pad_to_multiple_of=8),
             dict(padding="max_length", max_length=40), dict(truncation=True, max_length=10),
             dict(truncation="only_first", max_length=7, padding=True),
             dict(padding="max_length", truncation=True, max_length=16)]
    for kwargs in cases:
        assert ours(TEXTS, **kwargs) == dict(reference(TEXTS, **kwargs)), kwargs
    firsts, seconds = zip(*PAIRS, strict=True)
    for kwargs in cases[:2]:
        assert ours(list(firsts), list(seconds), **kwargs) == dict(reference(list(firsts), list(seconds), **kwargs))
    arrays = ours(TEXTS, padding=True, return_tensors="np")
    expected = reference(TEXTS, padding=True, return_tensors="np")
    for key in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(arrays[key], expected[key])


@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
def test_pair_truncation_equals_transformers_at_every_length(reference, ours, strategy):
    rng = np.random.default_rng(0)
    for _ in range(60):
        first, second = ("é" * rng.integers(0, 9) + "a" * rng.integers(0, 9), "z" * rng.integers(1, 12))
        limit = int(rng.integers(3, 25))
        expected = reference(first, second, truncation=strategy, max_length=limit).input_ids
        assert ours.encode(first, second, truncation=strategy, max_length=limit) == expected, (first, second, limit)


def test_truncation_only_when_asked(reference, ours):
    long = "x" * 3000
    assert len(ours.encode(long)) == 3002  # too long for the model, which then refuses it
    assert ours.encode(long, truncation=True) == reference(long, truncation=True).input_ids
    assert len(ours.encode(long, truncation=True)) == 2048


def test_decode_equals_transformers(reference, ours):
    for text in TEXTS:
        ids = ours.encode(text)
        assert ours.decode(ids) == reference.decode(ids), repr(text)
        assert ours.decode(ids, skip_special_tokens=True) == text.replace("[MASK]", "").replace("[PAD]", "").replace(
            "[SEP]", "").replace("[CLS]", "").replace("[BOS]", "").replace("[EOS]", "")
    rng = np.random.default_rng(0)
    for _ in range(50):  # any ids, invalid UTF-8 and special tokens mixed in
        ids = rng.integers(0, 262, rng.integers(0, 20)).tolist()
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip), ids
    assert ours.batch_decode([[4, 110, 5], [3]]) == ["[CLS]h[SEP]", "[MASK]"]
    assert ours.decode(np.array([110, 111])) == "hi"


def test_bad_arguments_are_named(ours):
    with pytest.raises(ValueError, match="id 262 is outside"):
        ours.decode([6, 262])
    with pytest.raises(ValueError, match="padding='left'"):
        ours("x", padding="left")
    with pytest.raises(ValueError, match="pass padding=True"):
        ours(["x", "yy"], return_tensors="np")
    with pytest.raises(ValueError, match="2 texts but 1 text pairs"):
        ours(["x", "y"], ["z"])
