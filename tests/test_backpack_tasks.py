"""The causal LM task (backpack_jax.tasks) and configs/backpack_owt.py: next-token windows from the corpus, the loss
and eval metrics against their definitions, padded eval rows left out, and the config errors a user can make."""
import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxport import config as config_lib
from jaxport import registry
from jaxport.data import EXAMPLE_MASK, TsvData, data_section
from tests import helpers

CONFIG = str(helpers.ROOT / "configs" / "backpack_owt.py")
SMALL_MODEL = ("model.n_layer=1", "model.n_embd=16", "model.n_head=2",
               "data.sequence_length=12", "train.batch_size=4", "eval.batch_size=3")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return helpers.write_lm_corpus(tmp_path_factory.mktemp("corpus"), num_train=20, num_eval=3)


def load(corpus, *overrides, preset=""):
    return config_lib.load_config(CONFIG + preset, ["data.source=lm_jsonl", f"data.train_path={corpus}/train.jsonl",
                                                    f"data.eval_path={corpus}/eval.jsonl", *SMALL_MODEL, *overrides])


@pytest.fixture(scope="module", params=["", ":tiny_gpt2"], ids=["backpack", "gpt2"])
def setup(request, corpus):
    config = load(corpus, preset=request.param)
    task = registry.task(config.family, config)
    return config, task, task.create_model(config, nnx.Rngs(0))


def test_batches_are_windows_and_their_next_tokens(setup, corpus):
    config, task, _ = setup
    batch = next(task.train_data(config))
    assert batch["input_ids"].shape == batch["labels"].shape == (4, 12)
    text = (corpus / "train.jsonl").read_text()
    for inputs, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        np.testing.assert_array_equal(inputs[1:], labels[:-1])
        window = bytes(int(i) - 3 for i in inputs if i >= 3).decode("utf-8", errors="ignore")
        assert window.strip(" .") in text


def test_loss_and_eval_metrics_follow_their_definitions(setup):
    config, task, model = setup
    batches = list(task.eval_data(config))
    last = batches[-1]
    assert not last[EXAMPLE_MASK].all()  # the eval set does not fill its last batch: padding rows are masked
    logits = np.asarray(model(jnp.asarray(last["input_ids"])).logits)
    real = last[EXAMPLE_MASK].astype(bool)
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits, last["labels"])
    metrics = {k: (float(s), float(n)) for k, (s, n) in task.eval_metrics(model, last).items()}
    assert metrics["loss"][1] == real.sum() * 12
    np.testing.assert_allclose(metrics["loss"][0], per_token[real].sum(), rtol=1e-5)
    correct = (logits.argmax(-1) == last["labels"])[real].sum()
    assert metrics["token_accuracy"] == (correct, real.sum() * 12)
    total, count = task.loss(model, last, None)
    assert float(count) == real.sum() * 12 and float(total) == pytest.approx(metrics["loss"][0], rel=1e-6)
    assert task.num_tokens(last) == real.sum() * 12
    mean = metrics["loss"][0] / metrics["loss"][1]
    assert task.derived_eval_metrics({"eval_loss": mean}) == {"eval_perplexity": pytest.approx(math.exp(mean))}


def test_config_mistakes_are_named(corpus):
    with pytest.raises(ValueError, match="data.sequence_length=200 is longer than the model's n_positions=128"):
        config = load(corpus, "data.sequence_length=200")
        registry.task(config.family, config)
    with pytest.raises(ValueError, match="data.tokenizer has 259 tokens, more than model.vocab_size=100"):
        config = load(corpus, "model.vocab_size=100")
        registry.task(config.family, config)
    with pytest.raises(TypeError, match="GPT2Config has no field num_senses"):
        config = load(corpus, preset=":tiny_gpt2")
        with config.unlocked():
            config.model.num_senses = 4
        registry.task(config.family, config)
    with pytest.raises(ValueError, match="data.source='tsv' is not a language-model corpus"):
        config = load(corpus)
        with config.unlocked():
            config.data = data_section(TsvData, max_input_length=8, max_target_length=8)
        registry.task(config.family, config)
    with pytest.raises(ValueError, match="data.tokenizer is not set"):
        config = config_lib.load_config(CONFIG + ":small", ["data.train_path=x"])
        registry.task(config.family, config)
    with pytest.raises(ValueError, match="choose one of \\['paper', 'small', 'tiny'\\]"):
        config_lib.load_config(CONFIG + ":large")
