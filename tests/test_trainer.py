"""The training loop's promises: NaN stops, wrong checkpoints refused, exact accumulation, schedules, parameter
groups, donated buffers. (Exact resume after SIGKILL is every family's promise: test_family_contract.py.)"""
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxport import checkpoint, registry, trainer, tree
from jaxport import config as config_lib
from jaxport.data import EXAMPLE_MASK
from jaxport.records import read_jsonl
from tests.helpers import CONFIGS, ROOT, finalized_steps, read_metrics

CONFIG = str(CONFIGS / "t5_reverse.py")


def small_config(*overrides):
    return config_lib.load_config(CONFIG, ["train.num_steps=20", "train.log_every=5", "train.eval_every=10",
                                           "train.checkpoint_every=5", "model.dropout_rate=0.1", *overrides])


class PoisonedTask:
    """The T5 task, but the 7th training batch makes the loss NaN."""

    def __init__(self, config, poisoned_step=7):
        self.inner = registry.task("t5", config)
        self.poisoned_step = poisoned_step

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def train_data(self, config):
        inner = self.inner.train_data(config)
        task = self

        class Poisoned:
            count = 0

            def __next__(self):
                self.count += 1
                batch = next(inner)
                poison = np.full(len(batch["input_ids"]), self.count == task.poisoned_step, np.float32)
                return {**batch, "poison": poison}

            get_state, set_state = inner.get_state, inner.set_state

        return Poisoned()

    def loss(self, model, batch, rng):
        loss_sum, tokens = self.inner.loss(model, batch, rng)
        return loss_sum + jnp.where(batch["poison"].sum() > 0, jnp.nan, 0.0), tokens


def test_nan_loss_stops_training_naming_the_step(tmp_path):
    config = small_config()
    with pytest.raises(trainer.NonFiniteLossError, match=r"at step 7\b.*last good checkpoint is step 5"):
        trainer.train(config, tmp_path, PoisonedTask(config))
    assert finalized_steps(tmp_path) == [5]


class FirstTokenTask:
    """The T5 task, evaluated by a 'generation' that predicts each input's first token: the host-side scoring must
    see every real eval example once, in order, and none of the rows that pad the last batch."""

    def __init__(self, config):
        self.inner = registry.task("t5", config)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, model, batch):
        return batch["input_ids"][:, 0]

    def score_predictions(self, batch, predictions):
        np.testing.assert_array_equal(predictions, batch["input_ids"][:, 0])  # each row beside its prediction
        return {"first_token": predictions.astype(np.float64)}, [{"first_token": int(p)} for p in predictions]

    def corpus_metrics(self, records):  # a metric of the whole set, not a mean over examples
        return {"largest_first_token": max(record["first_token"] for record in records)}


def test_evaluation_by_generation_scores_each_real_example_once_in_order(tmp_path):
    steps = ["train.num_steps=2", "train.log_every=2", "train.eval_every=2", "train.checkpoint_every=2"]
    config = small_config(*steps, "data.num_eval_examples=19", "eval.batch_size=8")  # batches of 8, 8, 3 + 5 pad
    task = FirstTokenTask(config)
    expected = np.concatenate([batch["input_ids"][batch[EXAMPLE_MASK], 0] for batch in task.eval_data(config)])
    assert len(expected) == 19

    logged = trainer.train(config, tmp_path / "run", task)
    assert [r["first_token"] for r in read_jsonl(tmp_path / "run" / "predictions_2.jsonl")] == expected.tolist()
    assert logged["eval_first_token"] == pytest.approx(expected.mean()) and "eval_loss" in logged
    assert logged["eval_largest_first_token"] == expected.max()
    # The same outside training (test-set predictions, a saved model), on one process.
    means, records = trainer.predict_dataset(task, task.create_model(config, nnx.Rngs(0)), task.eval_data(config))
    assert means == {"first_token": pytest.approx(expected.mean()), "largest_first_token": expected.max()}
    assert [r["first_token"] for r in records] == expected.tolist()

    config = small_config(*steps, "eval.generate=False")
    logged = trainer.train(config, tmp_path / "off", FirstTokenTask(config))
    assert "eval_loss" in logged and "eval_first_token" not in logged and "eval_largest_first_token" not in logged
    assert not (tmp_path / "off" / "predictions_2.jsonl").exists()


def test_checkpoint_of_another_config_is_refused(tmp_path):
    config = small_config("train.num_steps=5")
    trainer.train(config, tmp_path, registry.task("t5", config))
    other = small_config("train.num_steps=10", "model.d_ff=96")
    with pytest.raises(checkpoint.CheckpointMismatchError, match="d_ff"):
        trainer.train(other, tmp_path, registry.task("t5", other))


def test_init_from_a_model_of_another_shape_names_the_parameters(tmp_path):
    from flax import nnx

    config = small_config()
    task = registry.task("t5", config)
    task.create_model(config, nnx.Rngs(0)).save_pretrained(tmp_path / "same")
    other = small_config(f"model.d_ff={config.model.d_ff * 2}")
    registry.task("t5", other).create_model(other, nnx.Rngs(0)).save_pretrained(tmp_path / "wider")
    assert task.pretrained_params(small_config(f"init_from={tmp_path / 'same'}"))
    with pytest.raises(ValueError, match=r"does not describe the model in init_from=.*wider.*\n.*wi.*: init_from has "
                                         r"\(\d+, \d+\), config.model gives"):
        task.pretrained_params(small_config(f"init_from={tmp_path / 'wider'}"))


def test_unknown_config_key_names_the_closest(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="did you mean 'train.num_steps'"):
        config_lib.load_config(CONFIG, ["train.num_stepz=3"])
    with pytest.raises(config_lib.ConfigError, match="cannot parse .abc. as int"):
        config_lib.load_config(CONFIG, ["train.num_steps=abc"])
    cli = subprocess.run([sys.executable, "-m", "train", "--config", CONFIG, "--workdir", str(tmp_path),
                          "--config.optimizer.learnig_rate=1"], cwd=ROOT, capture_output=True, text=True)
    assert cli.returncode != 0 and "optimizer.learning_rate" in cli.stderr


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """Loss sums and token counts make accumulation exact, not an average of averages."""
    results = {}
    for steps in (1, 4):
        config = small_config("train.num_steps=3", "train.eval_every=0", f"train.grad_accum_steps={steps}",
                              "model.dropout_rate=0.0", "train.log_every=1")
        trainer.train(config, tmp_path / str(steps), registry.task("t5", config))
        results[steps] = read_metrics(tmp_path / str(steps))
    for step in results[1]:
        np.testing.assert_allclose(results[4][step]["loss"], results[1][step]["loss"], rtol=1e-5)


def optimizer_config(**values):
    from jaxport.base_config import base
    opt = base().optimizer
    opt.update(values)
    return opt


@pytest.mark.parametrize("decay,at_end", [("linear", 0.1), ("cosine", 0.1), ("constant", 1.0)])
def test_schedules_warm_up_then_decay(decay, at_end):
    schedule = trainer.make_schedule(optimizer_config(warmup_steps=10, decay=decay, end_factor=0.1), 2.0, 110)
    np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 1.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(schedule(110), 2.0 * at_end, rtol=1e-5)


def test_rsqrt_schedule_decays_as_inverse_square_root():
    schedule = trainer.make_schedule(optimizer_config(warmup_steps=100, decay="rsqrt"), 1.0, 1000)
    np.testing.assert_allclose([schedule(100), schedule(400)], [1.0, 0.5], rtol=1e-6)


def test_parameter_groups_get_their_own_learning_rate():
    import jax
    import ml_collections

    opt = optimizer_config(warmup_steps=0, decay="constant", learning_rate=0.1, clip_norm=0.0)
    opt.groups = ml_collections.ConfigDict({"prefix": {"pattern": "^prefix_embedding", "learning_rate": 0.0}})
    params = {"prefix_embedding": jnp.ones(3), "encoder": {"kernel": jnp.ones(3)}}
    tx, _ = trainer.make_optimizer(opt, 10, tree.unflatten(trainer.param_groups(opt, tree.flatten(params))))
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert np.all(np.asarray(updates["prefix_embedding"]) == 0)
    assert np.all(np.asarray(updates["encoder"]["kernel"]) < 0)


def test_adamw_over_packed_small_leaves_is_adamw_leaf_by_leaf():
    """The train state's layout (ParamPacking: the small leaves of each group and dtype as one vector) round-trips,
    and AdamW over it updates every parameter as AdamW leaf by leaf, in every parameter group."""
    import jax
    import ml_collections
    import optax

    from jaxport.packing import ParamPacking

    opt = optimizer_config(warmup_steps=0, decay="constant", learning_rate=0.1, clip_norm=0.0, weight_decay=0.01)
    opt.groups = ml_collections.ConfigDict({"head": {"pattern": "^head", "learning_rate": 0.01},
                                            "frozen": {"pattern": "^frozen", "learning_rate": 0.0}})
    rng = np.random.default_rng(0)
    normal = lambda *shape, dtype=jnp.float32: jnp.asarray(rng.standard_normal(shape), dtype)
    params = {"encoder": {"kernel": normal(300, 300), "bias": normal(300), "scale": normal(4, 5),
                          "half": normal(6, dtype=jnp.bfloat16)},
              "head": {"kernel": normal(260, 260), "bias": normal(7)}, "frozen": {"bias": normal(3)}}
    groups = trainer.param_groups(opt, tree.flatten(params))
    packing = ParamPacking(params, groups)
    assert sorted(packing.vectors) == ["default.bfloat16", "default.float32", "frozen.float32", "head.float32"]
    jax.tree.map(np.testing.assert_array_equal, packing.unpack(packing.pack(params)), params)

    tx, _ = trainer.make_optimizer(opt, 10, packing.pack_like(tree.unflatten(groups), packing.group_of))
    reference = optax.multi_transform(
        {"default": optax.adamw(optax.constant_schedule(0.1), weight_decay=0.01),
         "head": optax.adamw(optax.constant_schedule(0.01), weight_decay=0.01),
         "frozen": optax.set_to_zero()}, tree.unflatten(groups))
    state, ref_state = tx.init(packing.pack(params)), reference.init(params)
    assert len(jax.tree.leaves(state)) < len(jax.tree.leaves(ref_state))
    for _ in range(3):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
        updates, state = tx.update(packing.pack(grads), state, packing.pack(params))
        expected, ref_state = reference.update(grads, ref_state, params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.float32(a), np.float32(b), rtol=1e-6, atol=1e-8),
                     packing.unpack(updates), expected)
        params = optax.apply_updates(params, expected)


def test_train_step_writes_only_into_its_donated_state():
    """Every output of the step reuses a buffer of the state it was given (a fresh output, the metrics it used to
    return, made XLA re-record its CUDA graphs on every step), and the state's metric sums restart after every
    multiple of log_every."""
    import re

    import jax

    config = small_config()
    task = registry.task("t5", config)
    data = task.train_data(config)
    batches = [next(data) for _ in range(4)]
    sums = {}
    for log_every in (1, 3):
        setup = trainer.build(config, task)
        step = jax.jit(trainer.make_train_step(setup, task, 1, log_every),
                       in_shardings=(setup.state_shardings, setup.batch_sharding),
                       out_shardings=setup.state_shardings, donate_argnums=0)
        state, sums[log_every] = setup.state, []
        for batch in batches:
            batch = trainer.global_batch(batch, setup.batch_sharding)
            if not sums[log_every]:
                compiled = step.lower(state, batch).compile().as_text()
                aliases = re.search(r"input_output_alias=\{(.*?)\}, entry", compiled)
                assert len(re.findall(r"\{\d+\}: \(", aliases.group(1))) == len(jax.tree.leaves(state))
            state = step(state, batch)
            sums[log_every].append(jax.device_get(state.metric_sums))
    losses = [s["loss"] for s in sums[1]]
    np.testing.assert_allclose([s["loss"] for s in sums[3]],
                               [losses[0], sum(losses[:2]), sum(losses[:3]), losses[3]], rtol=1e-6)
    assert [int(s["steps"]) for s in sums[3]] == [1, 2, 3, 1]


def test_lamb_is_optaxs_lamb_leaf_by_leaf_over_unpacked_leaves():
    """LAMB's trust ratio is a norm over each parameter, so the train state keeps every leaf apart for it."""
    import jax
    import optax

    opt = optimizer_config(name="lamb", warmup_steps=0, decay="constant", learning_rate=0.1, clip_norm=0.0,
                           weight_decay=0.01, eps=1e-6)
    assert not trainer.packs_small_leaves(opt)
    rng = np.random.default_rng(0)
    params = {"kernel": jnp.asarray(rng.standard_normal((8, 4)), jnp.float32),
              "bias": jnp.asarray(rng.standard_normal(4), jnp.float32)}
    tx, _ = trainer.make_optimizer(opt, 10, jax.tree.map(lambda _: "default", params))
    reference = optax.lamb(0.1, eps=1e-6, weight_decay=0.01)
    state, ref_state = tx.init(params), reference.init(params)
    for _ in range(3):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
        updates, state = tx.update(grads, state, params)
        expected, ref_state = reference.update(grads, ref_state, params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8), updates, expected)
        params = optax.apply_updates(params, expected)
    with pytest.raises(ValueError, match="adamw, adafactor or lamb"):
        trainer.base_optimizer(optimizer_config(name="sgd"), 0.1)


def test_global_norm_and_clipping_match_optax_and_share_one_norm():
    """global_norm (small leaves concatenated into one reduction) is optax's norm in float32; clipping through it is
    optax.clip_by_global_norm; and with both in one step XLA computes the norm once."""
    import re

    import jax
    import optax

    rng = np.random.default_rng(0)
    grads = {"kernel": jnp.asarray(rng.standard_normal((300, 300)), jnp.float32),
             "bias": jnp.asarray(rng.standard_normal(7), jnp.bfloat16),
             "scales": [jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)]}
    as_f32 = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
    np.testing.assert_allclose(trainer.global_norm(grads), optax.tree.norm(as_f32), rtol=1e-6)
    for max_norm in (1.0, 1e4):  # clipped, untouched
        ours = trainer.clip_by_global_norm(max_norm).update(grads, None)[0]
        want = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())[0]
        for got, expected in zip(jax.tree.leaves(ours), jax.tree.leaves(want), strict=True):
            assert got.dtype == expected.dtype
            np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32), atol=1e-6)

    def reductions(fn):
        return len(re.findall(r" reduce\(", jax.jit(fn).lower(grads).compile().as_text()))
    clip_and_norm = lambda g: (trainer.clip_by_global_norm(1.0).update(g, None)[0], trainer.global_norm(g))
    assert reductions(clip_and_norm) == reductions(trainer.global_norm) == 2  # the kernel; the small leaves
