"""Perceiver IO's training tasks: whole-word byte masking, the pre-training corpus in Perceiver ids, GLUE's sources,
labels and metrics, fine-tuning from a masked-LM checkpoint's encoder, and the mask-filling command."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from jaxport import config as config_lib
from jaxport import registry, tree
from jaxport.data import token_stream
from perceiver_jax import PerceiverConfig, PerceiverForMaskedLM, PerceiverTokenizer, fill
from perceiver_jax.corpus import CorpusTokenizer, Mixture, PythonDocsData
from perceiver_jax.glue import GLUE_TASKS, GlueTsvData, HeaderTsv, SyntheticSentimentData, label_id
from perceiver_jax.masking import MASK_ID, MaskedBytes, mask_words, word_spans
from perceiver_jax.tasks import ClassificationTask, GlueExample, f1, matthews_correlation

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = PerceiverTokenizer()
TEXT = "Perceiver IO reads  bytes,\tnot words; it masks them whole.\nA second line."


def ids_of(text: str) -> np.ndarray:
    return np.asarray(TOKENIZER.encode(text), np.int32)


# ------------------------------------------------------------------------------------------------ masking

def test_word_spans_are_whitespace_delimited_with_the_space_before():
    ids = ids_of(TEXT)
    spans = [TOKENIZER.decode(ids[start:end]) for start, end in zip(*word_spans(ids), strict=True)]
    # [CLS] at 0 ends no word into a space: the first word has no space before it; a double space gives one.
    assert spans == ["Perceiver", " IO", " reads", " bytes,", "\tnot", " words;", " it", " masks", " them",
                     " whole.", "\nA", " second", " line."]


def test_whole_words_are_chosen_and_replaced_as_bert_does():
    ids = ids_of(TEXT * 40)
    starts, ends = word_spans(ids)
    counts = {"mask": 0, "random": 0, "kept": 0}
    for seed in range(200):
        inputs, chosen = mask_words(ids, np.random.default_rng(seed))
        words = [(s, e) for s, e in zip(starts, ends, strict=True) if chosen[s:e].any()]
        assert len(words) == round(0.15 * len(starts))
        assert chosen.sum() == sum(e - s for s, e in words)  # whole words, nothing else
        for s, e in words:
            assert chosen[s:e].all()
            if (inputs[s:e] == MASK_ID).all():
                counts["mask"] += 1
            elif (inputs[s:e] == ids[s:e]).all():
                counts["kept"] += 1
            else:
                counts["random"] += 1
                assert (inputs[s:e] >= 6).all()  # random bytes, no special ids
        assert (inputs[~chosen] == ids[~chosen]).all()
    total = sum(counts.values())
    assert abs(counts["mask"] / total - 0.8) < 0.02 and abs(counts["random"] / total - 0.1) < 0.02


def test_masked_bytes_depend_on_the_window_epoch_and_seed_only():
    window = {"tokens": ids_of(TEXT)}
    a, b = MaskedBytes(seed=3)(window, 2), MaskedBytes(seed=3)(dict(window), 2)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert set(a) == {"inputs", "attention_mask", "labels", "label_mask"}
    np.testing.assert_array_equal(a["labels"], window["tokens"])
    assert not np.array_equal(a["label_mask"], MaskedBytes(seed=4)(window, 2)["label_mask"])
    # another pass over the corpus masks the window anew (the training iterator passes the epoch)
    assert MaskedBytes.takes_epoch and not np.array_equal(a["label_mask"], MaskedBytes(seed=3)(window, 3)["label_mask"])


def test_corpus_stream_is_each_documents_bytes_ended_by_sep():
    documents = [{"text": "héllo [MASK]"}, {"text": "  "}, {"text": "日本"}]
    stream = token_stream(documents, CorpusTokenizer())
    expected = [*TOKENIZER.encode("héllo [MASK]")[1:], *TOKENIZER.encode("日本")[1:]]  # blank documents left out
    assert stream.tolist() == expected


def test_python_docs_are_english_text_split_for_evaluation():
    section = PythonDocsData(sequence_length=64, tokenizer="perceiver")
    train, _ = section.documents("train")
    held_out, _ = section.documents("eval")
    assert len(held_out) * 8 < len(train) <= len(held_out) * 11
    assert sum(len(d["text"]) for d in train + held_out) > 300_000 and "the" in held_out[0]["text"].split()
    windows = section.make("train", tokenizer=CorpusTokenizer())
    assert windows[0]["tokens"].shape == (64,)


def test_mixture_keeps_the_weights_in_every_prefix():
    sources = [[{"k": 0, "i": i} for i in range(700)], [{"k": 1, "i": i} for i in range(100)]]
    mixture = Mixture(sources, [0.7, 0.3])
    assert len(mixture) == 233 + 99  # the second source runs out first: floor(0.7 x 333) + floor(0.3 x 333)
    owners = np.array([mixture[i]["k"] for i in range(len(mixture))])
    for prefix in (10, 100, 333):
        assert abs(owners[:prefix].mean() - 0.3) <= 1 / prefix + 1e-9
    assert [mixture[i]["i"] for i in np.flatnonzero(owners == 1)] == list(range(int(owners.sum())))


# ------------------------------------------------------------------------------------------------ GLUE

def test_labels_outside_the_task_are_errors_naming_them():
    mnli = GLUE_TASKS["mnli"]
    assert label_id(mnli, "neutral", "x") == 1 and label_id(mnli, "2", "x") == 2 and label_id(mnli, 0, "x") == 0
    with pytest.raises(ValueError, match=r"dev\.tsv, example 7: label 3 is outside the task's 3 labels "
                                         r"\(ids 0\.\.2: entailment, neutral, contradiction\)"):
        label_id(mnli, 3, "dev.tsv, example 7")
    with pytest.raises(ValueError, match="label 'maybe' is outside"):
        label_id(mnli, "maybe", "x")
    with pytest.raises(ValueError, match="label 'high' is not a number"):
        label_id(GLUE_TASKS["stsb"], "high", "x")
    assert label_id(GLUE_TASKS["stsb"], "3.8", "x") == 3.8


def write(path: Path, rows: list[list[str]]) -> str:
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_glue_tsv_reads_header_named_columns_and_several_eval_sets(tmp_path):
    header = ["index", "sentence1", "sentence2", "gold_label"]
    train = write(tmp_path / "train.tsv", [header, ["0", "A man sleeps.", "Nobody sleeps.", "contradiction"]])
    matched = write(tmp_path / "dev_matched.tsv", [header, ["0", "a", "b", "neutral"], ["1", "c", "d", "entailment"]])
    mismatched = write(tmp_path / "dev_mismatched.tsv", [header, ["0", "e", "f", "contradiction"]])
    section = GlueTsvData(task="mnli", train_path=train, eval_path=f"{matched},{mismatched}")
    assert section.make("train")[0] == {"texts": ["A man sleeps.", "Nobody sleeps."], "label": 2, "eval_set": 0}
    assert section.eval_set_names() == ("dev_matched", "dev_mismatched")
    assert [(e["texts"], e["label"], e["eval_set"]) for e in section.make("eval")] == [
        (["a", "b"], 1, 0), (["c", "d"], 0, 0), (["e", "f"], 2, 1)]
    bad = write(tmp_path / "bad.tsv", [header, ["0", "a", "b", "unsure"]])
    with pytest.raises(ValueError, match=r"bad\.tsv, example 0: label 'unsure' is outside"):
        GlueTsvData(task="mnli", train_path=bad).make("train")[0]
    with pytest.raises(ValueError, match=r"no column\(s\) \['sentence'\]"):
        HeaderTsv(train, ("sentence",))


def test_glue_example_is_cls_a_sep_b_sep_and_too_long_texts_are_errors():
    example = {"texts": ["Is it?", "Yes."], "label": 1, "eval_set": 0}
    out = GlueExample(16, truncate=False, regression=False)(example)
    assert out["inputs"].tolist() == TOKENIZER("Is it?", "Yes.", padding="max_length", max_length=16)["input_ids"]
    assert out["attention_mask"].sum() == 2 + 6 + 1 + 4 and out["labels"].dtype == np.int32
    with pytest.raises(ValueError, match=r"the texts take 13 bytes with \[CLS\] and \[SEP\], more than "
                                         r"data\.max_length=8 \(raise it, or set data\.truncate=True\)"):
        GlueExample(8, truncate=False, regression=False)(example)
    assert GlueExample(8, truncate=True, regression=False)(example)["attention_mask"].sum() == 8


def test_task_metrics_equal_their_definitions():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    tp, tn = np.sum((labels == 1) & (predictions == 1)), np.sum((labels == 0) & (predictions == 0))
    fp, fn = np.sum((labels == 0) & (predictions == 1)), np.sum((labels == 1) & (predictions == 0))
    expected = (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert matthews_correlation(labels, predictions) == pytest.approx(expected)
    assert f1(labels, predictions) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert matthews_correlation(labels, np.ones_like(labels)) == 0.0


def glue_config(*overrides):
    return config_lib.load_config(str(ROOT / "configs/perceiver_glue.py"), list(overrides))


def test_corpus_metrics_name_each_eval_set_of_mnli_and_correlations_of_stsb(tmp_path):
    header = ["sentence1", "sentence2", "gold_label"]
    path = write(tmp_path / "m.tsv", [header, ["a", "b", "neutral"]])
    task = ClassificationTask(glue_config("data.source=glue_tsv", "data.task=mnli", f"data.train_path={path}",
                                          f"data.eval_path={path},{path}"))
    records = [{"eval_set": "m", "label": 1, "prediction": 1}, {"eval_set": "m", "label": 0, "prediction": 1},
               {"eval_set": "m", "label": 2, "prediction": 2}]
    assert task.corpus_metrics(records) == {"accuracy_m": pytest.approx(2 / 3)}
    header = ["sentence1", "sentence2", "score"]
    path = write(tmp_path / "s.tsv", [header, ["a", "b", "4.5"]])
    task = ClassificationTask(glue_config("data.source=glue_tsv", "data.task=stsb", f"data.train_path={path}",
                                          f"data.eval_path={path}"))
    assert task.model_config.num_labels == 1 and task.model_config.problem_type == "regression"
    rng = np.random.default_rng(0)
    labels, predictions = rng.uniform(0, 5, 50), rng.uniform(0, 5, 50)
    metrics = task.corpus_metrics([{"eval_set": "s", "label": a, "prediction": b}
                                   for a, b in zip(labels, predictions, strict=True)])
    assert metrics == {"pearson": pytest.approx(scipy.stats.pearsonr(labels, predictions)[0]),
                       "spearman": pytest.approx(scipy.stats.spearmanr(labels, predictions)[0])}


def test_synthetic_sentiment_labels_are_the_majority_and_streams_repeat():
    section = SyntheticSentimentData()
    for i in range(50):
        example = section.example(i)
        words = example["texts"][0].rstrip(".").split()
        positive = sum(w in ("good", "great", "fine", "lovely", "superb", "happy", "bright", "warm") for w in words)
        negative = sum(w in ("bad", "awful", "poor", "dull", "grim", "sad", "cold", "weak") for w in words)
        assert (positive + negative) % 2 == 1 and example["label"] == int(positive > negative)
    assert section.make("train")[7] == section.example(7)


def params_of(model) -> dict:
    return tree.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_fine_tuning_starts_from_the_encoder_with_a_fresh_classifier(tmp_path):
    config = glue_config()
    mlm = PerceiverForMaskedLM(PerceiverConfig.from_dict(config.model.to_dict()), rngs=nnx.Rngs(7))
    mlm.save_pretrained(tmp_path / "mlm", pytorch=True)
    config = glue_config(f"init_from={tmp_path / 'mlm'}")
    task = registry.task(config.family, config)
    loaded = task.pretrained_params(config)
    fresh = params_of(task.create_model(config, nnx.Rngs(config.seed)))
    source = params_of(mlm)
    assert loaded.keys() == fresh.keys()
    encoder = [path for path in loaded if path.startswith("perceiver/") and not path.startswith("perceiver/decoder/")]
    assert len(encoder) > 10 and "perceiver/latents" in encoder
    for path in loaded:
        expected = source[path] if path in encoder else fresh[path]
        np.testing.assert_array_equal(np.asarray(loaded[path]), np.asarray(expected), err_msg=path)

    wider = glue_config(f"init_from={tmp_path / 'mlm'}", "model.d_latents=128", "model.v_channels=128")
    with pytest.raises(ValueError, match=r"perceiver/latents: init_from has \(32, 64\), config\.model "
                                         r"gives \(32, 128\)"):
        registry.task(wider.family, wider).pretrained_params(wider)


# ------------------------------------------------------------------------------------------------ fill

@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory):
    config = config_lib.load_config(str(ROOT / "configs/perceiver_mlm.py"))
    model = PerceiverForMaskedLM(PerceiverConfig.from_dict(config.model.to_dict()), rngs=nnx.Rngs(0))
    folder = tmp_path_factory.mktemp("fill") / "model"
    model.save_pretrained(folder, pytorch=True)
    return model, folder


def test_fill_prints_the_argmax_bytes_of_the_masked_span(tiny_mlm, capsys):
    model, folder = tiny_mlm
    text = "This is an incomplete sentence where some words are missing."
    printed = fill.main([str(folder), text, "--span", "52:61"])
    assert capsys.readouterr().out == printed + "\n"
    ids = ids_of(text)
    assert TOKENIZER.decode(ids[52:61]) == " missing."
    ids[52:61] = TOKENIZER.mask_token_id
    logits = model(inputs=jnp.asarray(ids[None]), attention_mask=jnp.ones((1, len(ids)), jnp.int32)).logits
    assert printed == TOKENIZER.decode(np.asarray(jax.device_get(jnp.argmax(logits[0, 52:61], -1))))


def test_fill_refuses_a_span_outside_the_text(tiny_mlm, capsys):
    _, folder = tiny_mlm
    with pytest.raises(SystemExit):
        fill.main([str(folder), "short", "--span", "3:9"])
    assert "span 3:9 is not inside the text's bytes: positions 1..5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fill.main([str(folder), "short", "--span", "3-9"])
    assert "expected START:END" in capsys.readouterr().err
    assert json.loads((folder / "config.json").read_text())["model_type"] == "perceiver"
