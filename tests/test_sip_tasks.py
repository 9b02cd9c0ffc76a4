"""SIP's training tasks and configs: few-shot fine-tuning on TSV files with generation-based scores and a
predictions file, the original's optimizer as per-group learning rates, pre-training on generated FSTs."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxport import config as config_lib
from jaxport import data, trainer, tree
from jaxport.base_config import base
from jaxport.records import read_jsonl, read_tsv
from sip_jax.tasks import decode_predictions, edit_distance, finetuning_source, get_task, string_scores
from tests.helpers import stand_in_fst_tokenizer, write_tsv

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = str(ROOT / "configs" / "sip_finetune.py")
PRETRAIN = str(ROOT / "configs" / "sip_pretrain.py")

WORDS = ["cat", "dog", "bird", "fish", "mouse", "horse", "lion", "tiger", "bear", "wolf", "fox", "deer"]


def upper_rows(words=WORDS):
    return [(word, word.upper()) for word in words]


# ---------------------------------------------------------------------------------------------------------------
# Scores


def test_edit_distance_and_scores():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == edit_distance("abc", "") == 3
    assert edit_distance("ʃiː", "ʃi") == 1  # characters, not bytes
    assert string_scores("abc", "abc") == (1.0, 0.0, 0.0)
    assert string_scores("ab", "abcd") == (0.0, 2.0, 0.5)
    assert string_scores("x", "") == (0.0, 1.0, 1.0)  # per divides by max(1, len(gold))


def test_decoded_predictions_stop_at_eos_and_at_the_originals_limit():
    tokenizer = data.ByteTokenizer()
    labels = np.zeros((2, 6), np.int32)
    labels[0, :3] = [*tokenizer.encode("ab")]  # "ab" + eos: the batch's longest gold has 3 tokens
    labels[1, :2] = [*tokenizer.encode("c")]
    mask = (labels != 0).astype(np.int32)
    start = [0]
    sequences = np.array([start + list(tokenizer.encode("ab")) + [0, 0, 0, 0, 0],
                          start + [ord(c) + 3 for c in "cdefghi"] + [0]])  # no eos: cut after 3 + 2 tokens
    predictions, golds = decode_predictions(tokenizer, sequences, labels, mask)
    assert golds == ["ab", "c"] and predictions == ["ab", "cdefg"]


# ---------------------------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize("spec", [FINETUNE, f"{FINETUNE}:sip_d4", PRETRAIN, f"{PRETRAIN}:paper"])
def test_configs_have_the_shared_keys(spec):
    config = config_lib.load_config(spec)
    missing = set(config_lib.all_keys(base())) - set(config_lib.all_keys(config))
    assert not missing
    assert config.family in ("sip_finetune", "sip_pretrain")


def test_the_originals_optimizer_as_parameter_groups():
    """get_optimizer(torch.optim.Adam, prefix_lr=1.0, lr=3e-4): on Adam's first step every parameter moves by about
    its learning rate, so the prefix moves by ~1.0 and the T5 by ~3e-4; the stored encodings stay."""
    from flax import nnx
    config = config_lib.load_config(FINETUNE)
    task = get_task(config)
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(task.create_model(config, nnx.Rngs(0)))))()
    labels = trainer.param_groups(config.optimizer, tree.flatten(params))
    assert labels["prefix_embedding"] == "prefix" and labels["prefix_init_tensor"] == "stored"
    assert {labels[p] for p in labels if p.startswith("model/")} == {"default"}
    tx, _ = trainer.make_optimizer(config.optimizer, config.train.num_steps, tree.unflatten(labels))
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
    updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
    flat = tree.flatten(updates)
    np.testing.assert_allclose(np.abs(flat["prefix_embedding"]), 1.0, rtol=1e-3)
    np.testing.assert_allclose(np.abs(flat["model/shared/embedding"]), 3e-4, rtol=1e-3)
    assert np.all(np.asarray(flat["prefix_init_tensor"]) == 0)
    # The same as a plain optax transform, and the groups as sip_jax.optim spells them.
    from sip_jax.optim import get_optimizer, optimizer_groups
    assert config.optimizer.groups.to_dict() == optimizer_groups(prefix_lr=1.0)
    # The fine-tuning loop scales the gradient norm to at most 1 (grad_scale=1.0) before the optimizer step.
    tx = optax.chain(optax.clip_by_global_norm(1.0), get_optimizer(params, prefix_lr=1.0, lr=3e-4))
    plain = tree.flatten(jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)[0])
    for path in ("prefix_embedding", "model/shared/embedding", "prefix_init_tensor"):
        np.testing.assert_allclose(np.asarray(plain[path]), np.asarray(flat[path]), rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning data


def test_malformed_tsv_line_is_named_through_the_config(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("input\toutput\ncat\tCAT\ndog\tDOG\textra\n")
    config = config_lib.load_config(FINETUNE, [f"data.train_path={path}"])
    with pytest.raises(ValueError, match=r"bad\.tsv, line 3: expected 2 tab-separated fields"):
        get_task(config).train_data(config)


def test_header_is_skipped_and_few_shot_split_partitions_the_rows(tmp_path):
    path = write_tsv(tmp_path / "all.tsv", upper_rows())
    config = config_lib.load_config(FINETUNE, [f"data.train_path={path}", "data.num_train=5"])
    train = finetuning_source(config.data, "train")
    held_out = finetuning_source(config.data, "eval")
    inputs = [train[i]["input"] for i in range(len(train))] + [held_out[i]["input"] for i in range(len(held_out))]
    assert len(train) == 5 and sorted(inputs) == sorted(WORDS)
    assert [finetuning_source(config.data, "test")[i] for i in range(len(held_out))] == \
        [held_out[i] for i in range(len(held_out))]
    headerless = write_tsv(tmp_path / "plain.tsv", upper_rows(), header=False)
    config = config_lib.load_config(FINETUNE, [f"data.train_path={headerless}"])
    assert len(finetuning_source(config.data, "train")) == len(WORDS)


def test_incomplete_last_batch_is_kept_and_masked(tmp_path):
    path = write_tsv(tmp_path / "few.tsv", upper_rows(WORDS[:5]))
    config = config_lib.load_config(FINETUNE, [f"data.train_path={path}", "train.batch_size=4"])
    iterator = get_task(config).train_data(config)
    first, second = next(iterator), next(iterator)
    assert first[data.EXAMPLE_MASK].sum() == 4 and second[data.EXAMPLE_MASK].sum() == 1


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning end to end: train, evaluate by generation, write predictions


def test_trainer_builds_with_the_prefix_group():
    config = config_lib.load_config(FINETUNE, ["data.train_path=unused.tsv"])
    setup = trainer.build(config, get_task(config))
    assert int(setup.state.step) == 0


def test_finetuning_trains_evaluates_and_writes_predictions(tmp_path):
    train_path = write_tsv(tmp_path / "train.tsv", upper_rows(WORDS[:8]))
    test_path = write_tsv(tmp_path / "test.tsv", upper_rows(WORDS[8:]))
    overrides = [f"data.train_path={train_path}", f"data.eval_path={test_path}", f"data.test_path={test_path}",
                 "data.max_input_length=8", "data.max_target_length=8", "train.num_steps=6", "train.batch_size=8",
                 "train.log_every=3", "train.eval_every=6", "train.checkpoint_every=6", "eval.batch_size=8",
                 "optimizer.learning_rate=1e-2"]
    config = config_lib.load_config(FINETUNE, overrides)
    workdir = tmp_path / "run"
    logged = trainer.train(config, workdir, get_task(config))
    for name in ("eval_loss", "eval_accuracy", "eval_edit_distance", "eval_per"):
        assert name in logged and np.isfinite(logged[name])
    # Training ends with the test set's predictions (the task's after_training hook).
    after_training = json.loads((workdir / "test_metrics.json").read_text())
    (workdir / "test_metrics.json").unlink()

    from sip_jax import predict
    metrics = predict.main(["--config", FINETUNE, "--workdir", str(workdir), *(f"--config.{o}" for o in overrides)])
    rows = read_tsv(workdir / "predictions.tsv")
    assert rows[0] == ["input", "output", "prediction"]
    assert [row[:2] for row in rows[1:]] == [list(r) for r in upper_rows(WORDS[8:])]
    assert json.loads((workdir / "test_metrics.json").read_text())["num_examples"] == 4 == metrics["num_examples"]
    assert after_training == pytest.approx(metrics)
    scores = [string_scores(row[2], row[1]) for row in rows[1:]]
    assert metrics["accuracy"] == pytest.approx(np.mean([s[0] for s in scores]))
    assert metrics["edit_distance"] == pytest.approx(np.mean([s[1] for s in scores]))
    # The in-training evaluation (the trainer's generate-then-score mechanism) saw the same model and examples,
    # and recorded each prediction in eval order.
    assert logged["eval_accuracy"] == pytest.approx(metrics["accuracy"])
    assert logged["eval_edit_distance"] == pytest.approx(metrics["edit_distance"])
    assert logged["eval_per"] == pytest.approx(metrics["per"])
    records = read_jsonl(workdir / "predictions_6.jsonl")
    assert [r["prediction"] for r in records] == [row[2] for row in rows[1:]]
    assert [r["reference"] for r in records] == [row[1] for row in rows[1:]]


# ---------------------------------------------------------------------------------------------------------------
# Pre-training on generated FSTs


@pytest.fixture
def pretrain_overrides(tmp_path):
    pytest.importorskip("pynini")
    tokenizer, vocab_size = stand_in_fst_tokenizer(tmp_path / "fst_tokenizer.json")
    return [f"data.fst_tokenizer_path={tokenizer}", f"model.fst_tokenizer_vocab_size={vocab_size}",
            "data.sampler.max_input_length=4", "data.max_input_length=10", "data.max_target_length=10",
            "data.num_eval_examples=4", "eval.batch_size=8", "train.batch_size=8", "train.num_steps=2",
            "train.log_every=1", "train.eval_every=2", "train.checkpoint_every=2"]


def test_pretraining_runs_on_generated_fsts(tmp_path, pretrain_overrides):
    config = config_lib.load_config(PRETRAIN, pretrain_overrides)
    task = get_task(config)
    batch = next(task.train_data(config))
    assert batch["fst_rep"].shape == (8, 24, 5) and batch["fst_rep"].dtype == np.int32
    logged = trainer.train(config, tmp_path / "run", task)
    for name in ("loss", "eval_loss", "eval_accuracy", "eval_edit_distance"):
        assert np.isfinite(logged[name])


def test_default_pretraining_config_needs_no_tokenizer_file(monkeypatch):
    """The README's main job: the tiny config encodes FSTs with the built-in tokenizer, no file needed."""
    pytest.importorskip("pynini")
    monkeypatch.delenv("SIP_FST_TOKENIZER", raising=False)
    config = config_lib.load_config(PRETRAIN)
    task = get_task(config)
    assert task.preprocess.fst_tokenizer.vocab_size == config.model.fst_tokenizer_vocab_size
    batch = next(task.train_data(config))
    assert batch["fst_rep"].shape == (config.train.batch_size, config.data.max_transitions, 5)


def test_pretraining_example_with_a_bad_transition_is_named(pretrain_overrides):
    config = config_lib.load_config(PRETRAIN, pretrain_overrides)
    task = get_task(config)
    example = {"input": "ab", "output": "ab", "FST": [(0, "a", "a", 1, 2, 0)]}
    with pytest.raises(ValueError, match="transition 0.*has 6 entries"):
        task.preprocess(example)
