"""LSG-BART fine-tuning for summarisation (configs/lsg_arxiv.py): training with accumulation, ROUGE on generated
summaries, predictions file, warmup as a fraction of the run, input lengths, the TFDS arXiv builder path."""
import json
import random
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from jaxport import config as config_lib
from jaxport import registry, trainer
from jaxport.records import read_jsonl
from tests.helpers import sentence, write_summarization_files

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "lsg_arxiv.py")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny BART-like tokenizer and JSONL files of articles (tests/helpers.py: write_summarization_files)."""
    return write_summarization_files(tmp_path_factory.mktemp("lsg_data"))


def tiny_args(files, *overrides):
    return [f"data.tokenizer={files / 'tokenizer'}", f"data.train_path={files / 'train.jsonl'}",
            f"data.eval_path={files / 'eval.jsonl'}", *overrides]


def tiny_config(files, *overrides):
    return config_lib.load_config(CONFIG + ":tiny", tiny_args(files, *overrides))


def test_fine_tuning_with_accumulation_reports_rouge_and_writes_predictions(files, tmp_path):
    import train

    args = tiny_args(files, "model.encoder_layers=1", "model.decoder_layers=1", "train.num_steps=4",
                     "train.log_every=2", "train.eval_every=4",
                     "train.checkpoint_every=4")
    train.main(["--config", CONFIG + ":tiny", "--workdir", str(tmp_path), *(f"--config.{a}" for a in args)])

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    final = records[-1]
    for name in ("eval_loss", "eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum", "eval_gen_len"):
        assert np.isfinite(final[name]), name
    assert 0 <= final["eval_rouge2"] <= final["eval_rouge1"] <= 100
    assert 1 <= final["eval_gen_len"] <= 23  # generation.max_length 24, the decoder start token not counted
    assert all(np.isfinite(r["loss"]) for r in records)

    predictions = read_jsonl(tmp_path / "predictions_4.jsonl")
    references = [json.loads(line)["abstract"] for line in (files / "eval.jsonl").read_text().splitlines()]
    assert len(predictions) == 11  # real examples only: the padding of the last batch is left out
    # References are the decoded labels (cut to max_target_length=32 tokens), in eval order.
    assert all(r.startswith(p["reference"][:20]) for p, r in zip(predictions, references, strict=True))
    assert np.mean([p["rouge1"] for p in predictions]) == pytest.approx(final["eval_rouge1"], rel=1e-4)
    assert all(isinstance(p["prediction"], str) for p in predictions)


def test_warmup_fraction_follows_the_number_of_steps(files):
    config = config_lib.load_config(CONFIG, ["train.num_steps=200"])
    assert config.optimizer.warmup_fraction == 0.1
    schedule = trainer.make_schedule(config.optimizer, 8e-5, config.train.num_steps)
    np.testing.assert_allclose([schedule(0), schedule(10), schedule(20), schedule(110), schedule(200)],
                               [0.0, 4e-5, 8e-5, 4e-5, 0.0], rtol=1e-5, atol=1e-12)
    default = config_lib.load_config(CONFIG, [])
    warmup = round(0.1 * default.train.num_steps)
    schedule = trainer.make_schedule(default.optimizer, 1.0, default.train.num_steps)
    assert float(schedule(warmup - 1)) < 1.0 and float(schedule(warmup)) == pytest.approx(1.0)
    # 0 (the base default) keeps warmup_steps
    plain = config_lib.load_config(CONFIG, ["optimizer.warmup_fraction=0.0", "optimizer.warmup_steps=7"])
    assert float(trainer.make_schedule(plain.optimizer, 1.0, 100)(7)) == pytest.approx(1.0)


def test_inputs_longer_than_the_model_takes(files):
    # One training article is longer than max_position_embeddings=256: refused unless data.truncate.
    strict = tiny_config(files, "data.truncate=False")
    iterator = registry.task("lsg", strict).train_data(strict)
    with pytest.raises(ValueError, match=r"'article' is \d+ tokens long, more than the limit of 256.*truncate"):
        for _ in range(len(iterator._plan.source) // 16 + 1):
            next(iterator)
    # A padded length past the position table: the model's error at once; with truncate, cut to what it takes.
    with pytest.raises(ValueError, match=r"max_input_length=300 .*max_position_embeddings=256.*truncation"):
        registry.task("lsg", tiny_config(files, "data.truncate=False", "data.max_input_length=300"))
    task = registry.task("lsg", tiny_config(files, "data.max_input_length=300"))
    assert task.preprocess.max_input_length == 256
    batch = next(task.train_data(tiny_config(files, "data.max_input_length=300")))
    assert batch["input_ids"].shape == (16, 256)
    long_rows = batch["attention_mask"].sum(1) == 256
    assert np.all(batch["input_ids"][long_rows, -1] == 2)  # the tokenizer cut them, keeping eos


def test_tokenizer_must_fit_the_model(files, tmp_path):
    with pytest.raises(ValueError, match="no tokenizer"):
        registry.task("lsg", tiny_config(files, "data.tokenizer="))
    with pytest.raises(ValueError, match="pad id 0 where the model has 1"):
        registry.task("lsg", tiny_config(files, "data.tokenizer=bytes"))
    with pytest.raises(ValueError, match="vocab_size=16"):
        registry.task("lsg", tiny_config(files, "model.vocab_size=16"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no tokenizer files"):
        registry.task("lsg", tiny_config(files, "data.tokenizer=", f"init_from={tmp_path}"))


def test_reads_the_tfds_arxiv_builder(files, tmp_path):
    """The real scientific_papers/arxiv builder, prepared as array_record from a few lines in the original's
    format (its download replaced by a local folder)."""
    import tensorflow_datasets as tfds

    raw = tmp_path / "raw" / "arxiv-dataset"
    raw.mkdir(parents=True)
    rng = random.Random(1)
    for split, count in (("train", 16), ("val", 5), ("test", 2)):
        lines = []
        for number in range(count):
            paragraphs = [sentence(rng, 10) for _ in range(rng.randint(3, 8))]
            lines.append(json.dumps({"article_id": f"{split}{number}", "article_text": paragraphs,
                                     "abstract_text": [f"<S> {p} </S>" for p in paragraphs[:2]],
                                     "section_names": ["introduction"], "sections": [paragraphs]}))
        (raw / f"{split}.txt").write_text("\n".join(lines) + "\n")
    tfds.disable_progress_bar()
    builder = tfds.builder("scientific_papers/arxiv", data_dir=tmp_path / "tfds")
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                           return_value={"arxiv": str(raw.parent), "pubmed": str(raw.parent)}):
        builder.download_and_prepare(file_format="array_record")

    arxiv = config_lib.load_config(CONFIG).data.tfds_name  # the base preset's dataset, read by the tiny model
    assert arxiv == "scientific_papers/arxiv"
    tfds_args = [f"data.tokenizer={files / 'tokenizer'}", "data.source=tfds", f"data.tfds_name={arxiv}"]
    config = config_lib.load_config(CONFIG + ":tiny", [*tfds_args, f"data.data_dir={tmp_path / 'tfds'}",
                                                       "data.num_eval_examples=3"])
    task = registry.task("lsg", config)
    batch = next(task.train_data(config))
    assert batch["input_ids"].shape == (16, 256) and np.all(batch["labels"][:, 0] == 0)
    eval_batches = list(task.eval_data(config))
    assert len(eval_batches) == 1 and eval_batches[0]["example_mask"].sum() == 3

    missing = config_lib.load_config(CONFIG + ":tiny", [*tfds_args, f"data.data_dir={tmp_path / 'elsewhere'}"])
    with pytest.raises(FileNotFoundError, match=r"not prepared(.|\n)*--config.data.source=jsonl"):
        task.train_data(missing)


def test_init_from_a_converted_folder(files, tmp_path, caplog):
    from flax import nnx

    from jaxport import tree

    config = tiny_config(files)
    model = registry.task("lsg", config).create_model(config, nnx.Rngs(3))
    model.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    (tmp_path / "model" / "config.json").write_text(json.dumps({**saved, "block_size": 64}))

    config = tiny_config(files, f"init_from={tmp_path / 'model'}")
    task = registry.task("lsg", config)
    with caplog.at_level("WARNING", logger="lsg_jax.tasks"):
        setup = trainer.build(config, task)
    assert "block_size=32 (init_from: 64)" in caplog.text
    expected = tree.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    got = tree.flatten(setup.packing.unpack(setup.state.params))
    assert got.keys() == expected.keys()
    assert all(np.array_equal(got[path], expected[path]) for path in expected)

    other = tiny_config(files, f"init_from={tmp_path / 'model'}", "model.encoder_ffn_dim=48")
    with pytest.raises(ValueError, match=r"does not describe(.|\n)*fc1.*init_from has \(32, 64\)"):
        registry.task("lsg", other).pretrained_params(other)
