"""The one training loop every family uses.

config -> mesh -> model + sharded params -> optax tx -> train state -> restore (state and data position)
-> jitted steps with explicit shardings -> metrics, eval, checkpoints -> export.

A family supplies a *task* (see `Task`): how to build its model, its data, its loss and eval metrics.
"""
import dataclasses
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from jaxport import checkpoint, sharding, tree
from jaxport.packing import SMALL_LEAF, ParamPacking
from jaxport.records import write_jsonl

log = logging.getLogger(__name__)


class Task(Protocol):
    """What a family provides to the trainer."""

    def create_model(self, config, rngs: nnx.Rngs) -> nnx.Module: ...
    def pretrained_params(self, config) -> dict | None: ...  # flat {path: array} to start from, or None
    def train_data(self, config) -> Iterator[dict]: ...  # host-local numpy batches; get_state/set_state
    def eval_data(self, config) -> Iterator[dict] | None: ...  # finite iterable, or None
    # Sum of per-token losses and the number of tokens it covers, so accumulation and sharding average exactly.
    def loss(self, model, batch: dict, dropout_rng) -> tuple[jax.Array, jax.Array]: ...
    def eval_metrics(self, model, batch: dict) -> dict[str, tuple[jax.Array, jax.Array]]: ...  # name -> (sum, count)
    def num_tokens(self, batch: dict) -> int: ...  # tokens processed, for tokens/s
    # Optional: evaluation by generation, "generate, then score on the host" (seq2seq families), unless
    # config.eval.generate is False. At each evaluation `predict` runs jitted on every eval batch like eval_metrics (on
    # every process); its outputs and the batch's rows are gathered, and process 0 scores the real rows, the padding
    # of the last batch left out: per-example scores (averaged into eval_NAME) and one JSON-able record per example,
    # written in eval order to WORKDIR/predictions_STEP.jsonl. `predict_dataset` runs the same two outside training.
    def predict(self, model, batch: dict) -> jax.Array: ...  # [B, ...] outputs, e.g. generated sequences
    def score_predictions(self, batch: dict, predictions: np.ndarray
                          ) -> tuple[dict[str, np.ndarray], list[dict]]: ...  # ({name: [B] scores}, B records)
    # Optional: metrics that are functions of the eval means rather than means themselves (perplexity = exp(loss)).
    def derived_eval_metrics(self, means: dict[str, float]) -> dict[str, float]: ...  # eval_NAME -> value
    # Optional, with `predict`: metrics of the whole set that are no mean over examples (Matthews correlation, F1,
    # Spearman correlation), from the records of every real example, on process 0; logged as eval_NAME.
    def corpus_metrics(self, records: list[dict]) -> dict[str, float]: ...
    # Optional: run on process 0 with the final model once training has finished (e.g. test-set predictions).
    def after_training(self, model, config, workdir: Path) -> dict | None: ...


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict  # in Setup.packing's layout: the small leaves packed into one vector per optimizer group
    opt_state: Any
    rng: jax.Array
    # -1, or the first step whose loss or gradient was not finite (the params are not finite from it on).
    nonfinite_step: jax.Array
    # {"loss", "grad_norm"} summed over the steps since the last multiple of log_every, and those "steps". Kept in
    # the donated state, not returned, so that every output of the step reuses an input's buffer: a fresh output
    # buffer on every call made XLA re-record its CUDA graphs each step (bench/RESULTS.md, LSG-BART).
    metric_sums: dict


class NonFiniteLossError(FloatingPointError):
    pass


# ----------------------------------------------------------------------------------------- optimizer

def make_schedule(opt: ml_collections.ConfigDict, peak: float, num_steps: int) -> optax.Schedule:
    """Linear warmup to `peak` (over optimizer.warmup_steps, or warmup_fraction of num_steps when > 0), then
    linear/cosine/rsqrt decay or constant."""
    # warmup_fraction > 0 ties the warmup to the run's length, so it follows a --config.train.num_steps override.
    fraction = opt.get("warmup_fraction", 0.0)
    warmup = round(fraction * num_steps) if fraction > 0 else opt.warmup_steps
    decay_steps = max(num_steps - warmup, 1)
    if opt.decay == "linear":
        decay = optax.linear_schedule(peak, peak * opt.end_factor, decay_steps)
    elif opt.decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=opt.end_factor)
    elif opt.decay == "rsqrt":
        decay = lambda count: peak * jnp.sqrt(max(warmup, 1) / jnp.maximum(count + warmup, max(warmup, 1)))
    elif opt.decay == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(f"optimizer.decay={opt.decay!r}: expected linear, cosine, rsqrt or constant")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def base_optimizer(opt: ml_collections.ConfigDict, schedule) -> optax.GradientTransformation:
    if opt.name == "adamw":
        return optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
    if opt.name == "adafactor":
        # multiply_by_parameter_scale False is transformers' Adafactor(scale_parameter=False), as FLIPPED trains.
        return optax.adafactor(schedule, weight_decay_rate=opt.weight_decay or None,
                               multiply_by_parameter_scale=opt.get("multiply_by_parameter_scale", True))
    if opt.name == "lamb":  # Adam's update scaled per parameter by ||param|| / ||update|| (Perceiver IO, BERT at scale)
        return optax.lamb(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
    raise ValueError(f"optimizer.name={opt.name!r}: expected adamw, adafactor or lamb")


def param_groups(opt: ml_collections.ConfigDict, paths) -> dict[str, str]:
    """Group of each parameter path: the first group whose regex `pattern` matches it, else 'default'."""
    groups = opt.get("groups", {}) or {}
    labels = {}
    for path in paths:
        labels[path] = next((name for name, g in groups.items() if re.search(g.pattern, path)), "default")
    return labels


def global_norm(grads) -> jax.Array:
    """The float32 L2 norm over every leaf. Leaves of at most SMALL_LEAF elements (there are such leaves when the
    train state does not pack them: ParamPacking.none) are squared and summed as one concatenated vector, one
    reduction instead of a kernel launch each (LSG-BART's step launched 260: bench/RESULTS.md)."""
    leaves = [leaf.astype(jnp.float32) for leaf in jax.tree.leaves(grads)]
    small = [leaf.ravel() for leaf in leaves if leaf.size <= SMALL_LEAF]
    squares = [jnp.sum(jnp.square(leaf)) for leaf in leaves if leaf.size > SMALL_LEAF]
    if small:
        squares.append(jnp.sum(jnp.square(jnp.concatenate(small))))
    return jnp.sqrt(sum(squares, jnp.zeros((), jnp.float32)))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax.clip_by_global_norm over global_norm: the same norm as the train step's grad_norm metric, so XLA
    computes it once."""
    def update(updates, state, params=None):
        norm = global_norm(updates)
        within = norm < max_norm
        return jax.tree.map(lambda g: jnp.where(within, g, g / norm.astype(g.dtype) * max_norm), updates), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def packs_small_leaves(opt: ml_collections.ConfigDict) -> bool:
    """Whether the optimizer updates each element on its own, so the train state may pack small leaves (not LAMB,
    whose trust ratio is a norm over each parameter, nor Adafactor, whose moments are factored per matrix)."""
    return opt.name == "adamw"


def make_optimizer(opt: ml_collections.ConfigDict, num_steps: int, labels):
    """(optax transform, learning-rate schedule of the default group) for parameters labelled by `labels` (a tree
    of param_groups' names). Each group in `optimizer.groups` ({name: {pattern, learning_rate}}) gets its own peak
    learning rate on the same schedule shape."""
    groups = opt.get("groups", {}) or {}
    peaks = {"default": opt.learning_rate, **{name: g.learning_rate for name, g in groups.items()}}
    # A group with learning rate 0 is frozen: no update and, unlike Adam at lr 0, no optimizer state.
    transforms = {name: base_optimizer(opt, make_schedule(opt, peak, num_steps)) if peak else optax.set_to_zero()
                  for name, peak in peaks.items()}
    tx = optax.multi_transform(transforms, labels)
    if opt.clip_norm:
        tx = optax.chain(clip_by_global_norm(opt.clip_norm), tx)
    return tx, make_schedule(opt, opt.learning_rate, num_steps)


# ------------------------------------------------------------------------------------------- steps

def microbatches(batch: dict, num: int) -> dict:
    """[B, ...] -> [num, B/num, ...], taking every num-th example so each micro-batch stays spread
    over the data-parallel devices instead of living on one of them."""
    def split(x):
        if x.shape[0] % num:
            raise ValueError(f"batch of {x.shape[0]} does not split into {num} accumulation steps")
        return x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1)
    return jax.tree.map(split, batch)


def initial_metric_sums() -> dict:
    return {"loss": jnp.zeros((), jnp.float32), "grad_norm": jnp.zeros((), jnp.float32),
            "steps": jnp.zeros((), jnp.int32)}


def make_train_step(setup: "Setup", task: Task, accumulation: int, log_every: int) -> Callable:
    """train_step(state, batch) -> state, its metrics summed into state.metric_sums (restarted after every multiple
    of log_every steps)."""
    tx = setup.tx

    def loss_of(params, batch, rng):
        with setup.activation_rules():
            return task.loss(setup.model(params), batch, rng)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def train_step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)

        if accumulation == 1:  # no scan: lets XLA fuse the backward pass with the optimizer update
            (loss_sum, tokens), grads = grad_fn(state.params, batch, jax.random.fold_in(rng, 0))
        else:
            def accumulate(carry, inputs):
                index, micro = inputs
                (loss_sum, tokens), grads = grad_fn(state.params, micro, jax.random.fold_in(rng, index))
                grad_acc, loss_acc, token_acc = carry
                grad_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_acc, grads)
                return (grad_acc, loss_acc + loss_sum, token_acc + tokens), None

            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
            init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
            (grads, loss_sum, tokens), _ = jax.lax.scan(
                accumulate, init, (jnp.arange(accumulation), microbatches(batch, accumulation)))
        tokens = jnp.maximum(tokens, 1.0)
        grads = jax.tree.map(lambda g, p: (g / tokens).astype(p.dtype), grads, state.params)
        loss = loss_sum / tokens
        grad_norm = global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # A non-finite step records itself; the host stops the run before it logs, evaluates or saves the state.
        # (Selecting the previous params and moments instead cost a pass over them every step: bench/RESULTS.md.)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_window = state.step % log_every == 0  # the previous step was logged
        sums = jax.tree.map(lambda total, new: jnp.where(new_window, 0, total) + new, state.metric_sums,
                            {"loss": loss, "grad_norm": grad_norm, "steps": jnp.ones((), jnp.int32)})
        return state.replace(
            step=state.step + 1, params=params, opt_state=opt_state,
            nonfinite_step=jnp.where((state.nonfinite_step < 0) & ~finite, state.step + 1, state.nonfinite_step),
            metric_sums=sums)

    return train_step


def make_eval_step(setup: "Setup", task: Task) -> Callable:
    def eval_step(params, batch):
        with setup.activation_rules():
            return task.eval_metrics(setup.model(params), batch)
    return eval_step


def make_predict_step(setup: "Setup", task: Task) -> Callable:
    def predict_step(params, batch):
        with setup.activation_rules():
            return task.predict(setup.model(params), batch)
    return predict_step


# ------------------------------------------------------------------------------------------ metrics

class MetricsWriter:
    """metrics.jsonl (one object per logged step) plus TensorBoard event files, on process 0 only."""

    def __init__(self, workdir: Path, resume_step: int):
        self.active = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        if not self.active:
            return
        # Drop lines a killed run logged after its last checkpoint: the resumed run logs them again.
        if self.path.exists():
            lines = [l for l in self.path.read_text().splitlines() if l and json.loads(l)["step"] <= resume_step]
            self.path.write_text("".join(l + "\n" for l in lines))
        from tensorboardX import SummaryWriter
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1)

    def write(self, step: int, metrics: dict) -> None:
        if not self.active:
            return
        metrics = {k: float(v) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for name, value in metrics.items():
            self.tensorboard.add_scalar(name, value, step)
        self.tensorboard.flush()

    def close(self):
        if self.active:
            self.tensorboard.close()


# --------------------------------------------------------------------------------------------- loop

@dataclasses.dataclass
class Setup:
    """Everything built from the config before the first step."""
    mesh: jax.sharding.Mesh
    graphdef: Any
    state: TrainState
    state_shardings: Any
    batch_sharding: jax.sharding.NamedSharding
    tx: Any
    schedule: Any
    packing: ParamPacking  # the layout of state.params
    rules: tuple  # logical axis -> mesh axes, for parameters and activations

    def model(self, params) -> nnx.Module:
        """The model with the train state's (packed) params."""
        return nnx.merge(self.graphdef, self.packing.unpack(params))

    def model_on_host(self, params) -> nnx.Module:
        """The model with the train state's params copied whole to the host (export, predictions from a
        checkpoint). With several processes, a collective: every process calls it."""
        return nnx.merge(self.graphdef, all_rows(self.packing.unpack(params)))

    def activation_rules(self):
        """The context in which a step is traced: sharding.constrain lays activations out by the rules."""
        return sharding.activation_rules(self.mesh, self.rules)


def opt_state_shardings(abstract_opt_state, abstract_params: dict, param_shardings: dict, replicated):
    """An optimizer-state array takes the sharding of the parameter whose path ends its own and whose shape it has
    (Adam's moments, packed or not); the rest (counts, packed small leaves, factored moments) is replicated."""
    shardings, shapes = tree.flatten(param_shardings), tree.flatten(abstract_params)

    def pick(key_path, leaf):
        parts = jax.tree_util.keystr(key_path, simple=True, separator=tree.SEP).split(tree.SEP)
        for start in range(len(parts)):
            path = tree.SEP.join(parts[start:])
            if path in shardings and shapes[path].shape == leaf.shape:
                return shardings[path]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def build(config, task: Task, devices=None) -> Setup:
    """Mesh (over `devices`, default all), model, optimizer and a sharded initial train state (no full copy on one
    device)."""
    mesh = sharding.make_mesh(**config.mesh, devices=devices)
    rules = tuple(config.sharding_rules)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    sharding.check_process_rows(batch_sharding)
    abstract_model = nnx.eval_shape(lambda: task.create_model(config, nnx.Rngs(config.seed)))
    graphdef, abstract_params = nnx.split(abstract_model)
    param_shardings = tree.unflatten(sharding.param_shardings(abstract_params, mesh, rules))
    abstract_params = nnx.to_pure_dict(abstract_params)
    groups = param_groups(config.optimizer, tree.flatten(abstract_params))
    packing = (ParamPacking(abstract_params, groups) if packs_small_leaves(config.optimizer)
               else ParamPacking.none(abstract_params))
    tx, schedule = make_optimizer(config.optimizer, config.train.num_steps,
                                  packing.pack_like(tree.unflatten(groups), packing.group_of))

    def state_from(params):
        params = packing.pack(params)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=jax.random.key_data(jax.random.key(config.seed + 1)),
                          nonfinite_step=jnp.full((), -1, jnp.int32), metric_sums=initial_metric_sums())

    abstract_state = jax.eval_shape(state_from, abstract_params)
    replicated = sharding.replicated(mesh)
    packed_shardings = packing.pack_like(param_shardings, lambda _: replicated)
    state_shardings = TrainState(
        step=replicated, params=packed_shardings,
        opt_state=opt_state_shardings(abstract_state.opt_state, abstract_state.params, packed_shardings, replicated),
        rng=replicated, nonfinite_step=replicated, metric_sums=jax.tree.map(lambda _: replicated,
                                                                            abstract_state.metric_sums))

    pretrained = task.pretrained_params(config)
    if pretrained is None:
        def init():
            return state_from(nnx.to_pure_dict(nnx.state(task.create_model(config, nnx.Rngs(config.seed)))))
        state = jax.jit(init, out_shardings=state_shardings)()
    else:
        params = tree.unflatten({path: jax.device_put(value, tree.flatten(param_shardings)[path])
                                 for path, value in pretrained.items()})
        state = jax.jit(state_from, out_shardings=state_shardings)(params)
    return Setup(mesh, graphdef, state, state_shardings, batch_sharding, tx, schedule, packing, rules)


def abstract_train_state(setup: Setup):
    """The train state's shapes, dtypes and shardings: what a checkpoint is restored into."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), setup.state,
                        setup.state_shardings)


def checkpointer(config, workdir: Path, **options) -> checkpoint.Checkpointer:
    """WORKDIR/checkpoints, refusing checkpoints of another family or model config."""
    metadata = {"family": config.family, "model": config.model.to_dict()}
    return checkpoint.Checkpointer(Path(workdir) / "checkpoints", keep=config.train.keep_checkpoints,
                                   metadata=metadata, **options)


def model_from_checkpoint(config, task: Task, workdir, devices=None) -> tuple[nnx.Module, int]:
    """(the model with the params of WORKDIR's latest intact checkpoint, copied to the host; its step). The mesh
    is the config's over `devices` (default all), whatever mesh wrote the checkpoint: orbax reads each array
    straight into its new shards. With several processes, every process calls it."""
    setup = build(config, task, devices)
    with checkpointer(config, workdir, async_save=False) as ckpt:
        restored = ckpt.restore_latest(abstract_train_state(setup))
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {Path(workdir) / 'checkpoints'}")
    step, state, _ = restored
    return setup.model_on_host(state.params), step


def global_batch(batch: dict, batch_sharding) -> dict:
    """Host-local numpy batch -> global jax arrays sharded over the batch axis."""
    return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v)) for k, v in batch.items()}


def all_rows(tree):
    """Numpy copies holding every process's rows: host-local arrays concatenated in process order (the order
    of the global batch), global jax.Arrays whole."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)


class Means:
    """Running (sum, count) of each named metric."""

    def __init__(self):
        self.totals: dict[str, list[float]] = {}

    def add(self, name: str, total, count) -> None:
        acc = self.totals.setdefault(name, [0.0, 0.0])
        acc[0] += float(total)
        acc[1] += float(count)

    def result(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{name}": total / max(count, 1.0) for name, (total, count) in self.totals.items()}


def score_real_rows(task: Task, rows: dict, predictions, means: Means, records: list) -> None:
    """The host half of evaluation by generation: the task scores the real rows of a numpy batch (EXAMPLE_MASK:
    the padding of a last batch is left out) with their predictions; scores go to `means`, records to `records`."""
    from jaxport.data import EXAMPLE_MASK

    predictions = np.asarray(predictions)
    real = np.asarray(rows.get(EXAMPLE_MASK, np.ones(len(predictions), bool)), bool)
    scores, batch_records = task.score_predictions(
        {k: np.asarray(v)[real] for k, v in rows.items() if k != EXAMPLE_MASK}, predictions[real])
    for name, values in scores.items():
        means.add(name, np.sum(values), np.size(values))
    records.extend(batch_records)


def evaluate(eval_step, params, batches, batch_sharding, *, predict_step=None, task: Task | None = None,
             predictions_path: Path | None = None) -> dict[str, float]:
    """Mean eval metrics over `batches`. With `predict_step` (the task's `predict`, jitted), also the mean of the
    task's per-example scores of the predictions (process 0 only), and their records in `predictions_path`."""
    means, records = Means(), []
    for batch in batches:
        inputs = global_batch(batch, batch_sharding)
        predictions = predict_step(params, inputs) if predict_step is not None else None
        for name, (total, count) in jax.device_get(eval_step(params, inputs)).items():
            means.add(name, total, count)
        if predict_step is not None:
            rows, predictions = all_rows((batch, predictions))  # collective: every process takes part
            if jax.process_index() == 0:
                score_real_rows(task, rows, predictions, means, records)
    metrics = means.result("eval_")
    if predict_step is not None and jax.process_index() == 0:
        metrics.update({f"eval_{name}": value for name, value in corpus_metrics(task, records).items()})
        if predictions_path is not None:
            write_jsonl(predictions_path, records)
    if hasattr(task, "derived_eval_metrics"):
        metrics.update(task.derived_eval_metrics(metrics))
    return metrics


def corpus_metrics(task: Task, records: list[dict]) -> dict[str, float]:
    """The task's metrics of the whole set (Task.corpus_metrics), or none."""
    compute = getattr(task, "corpus_metrics", None)
    return compute(records) if callable(compute) and records else {}


def predict_dataset(task: Task, model: nnx.Module, batches) -> tuple[dict[str, float], list[dict]]:
    """Evaluation by generation outside training (test-set predictions, a saved model): the task's `predict`,
    jitted, on each of `batches` (process-local numpy batches of the whole set), then its `score_predictions` of
    the real rows. On this process alone, without collectives: after_training runs on process 0 only.
    Returns the mean of each score with the corpus metrics, if the task has any, and the records of the real
    examples, in order."""
    graphdef, state = nnx.split(model)
    predict = jax.jit(lambda state, batch: task.predict(nnx.merge(graphdef, state), batch))
    means, records = Means(), []
    for batch in batches:
        score_real_rows(task, batch, jax.device_get(predict(state, batch)), means, records)
    return {**means.result(), **corpus_metrics(task, records)}, records


def check_finite(state: TrainState, last_checkpoint: int | None) -> None:
    bad = int(jax.device_get(state.nonfinite_step))
    if bad >= 0:
        raise NonFiniteLossError(
            f"loss or gradient became NaN/inf at step {bad}; training stopped. The last good checkpoint is "
            f"{'step ' + str(last_checkpoint) if last_checkpoint is not None else 'none (nothing saved yet)'}.")


def train(config, workdir: str | Path, task: Task) -> dict[str, float]:
    """Train (resuming from workdir's latest checkpoint if any); returns the last logged metrics."""
    started = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = config.train
    setup = build(config, task)
    ckpt = checkpointer(config, workdir)
    train_iter = task.train_data(config)
    state = setup.state
    restored = ckpt.restore_latest(abstract_train_state(setup))
    if restored is not None:
        step, state, data_state = restored
        train_iter.set_state(data_state)
        log.info("resumed from step %d", step)
    start = int(jax.device_get(state.step))
    last_checkpoint = start if restored is not None else None

    train_step = jax.jit(make_train_step(setup, task, cfg.grad_accum_steps, cfg.log_every),
                         in_shardings=(setup.state_shardings, setup.batch_sharding),
                         out_shardings=setup.state_shardings, donate_argnums=0)
    eval_step = jax.jit(make_eval_step(setup, task), in_shardings=(setup.state_shardings.params,
                                                                             setup.batch_sharding))
    predict_step = None
    if callable(getattr(task, "predict", None)) and config.eval.generate:
        predict_step = jax.jit(make_predict_step(setup, task),
                               in_shardings=(setup.state_shardings.params, setup.batch_sharding))
    writer = MetricsWriter(workdir, start)
    logged: dict[str, float] = {}
    tokens, steps, window_start, input_wait = 0, 0, time.perf_counter(), 0.0
    progress = tqdm(total=cfg.num_steps, initial=start, unit="step", disable=jax.process_index() != 0,
                    dynamic_ncols=True)
    try:
        for step in range(start + 1, cfg.num_steps + 1):
            wait_start = time.perf_counter()
            batch = next(train_iter)
            input_wait += time.perf_counter() - wait_start
            tokens += task.num_tokens(batch) * jax.process_count()  # every process reads as many rows
            steps += 1
            state = train_step(state, global_batch(batch, setup.batch_sharding))
            progress.update(1)
            last = step == cfg.num_steps
            record = {}
            logging = step % cfg.log_every == 0 or last
            evaluating = cfg.eval_every and (step % cfg.eval_every == 0 or last)
            saving = step % cfg.checkpoint_every == 0 or last
            if logging or evaluating or saving:  # nothing non-finite is logged, evaluated or saved
                check_finite(state, last_checkpoint)
            if logging:
                sums = jax.device_get(state.metric_sums)  # before the next step donates the state
                elapsed = time.perf_counter() - window_start
                record = {"loss": float(sums["loss"] / sums["steps"]),
                          "grad_norm": float(sums["grad_norm"] / sums["steps"]),
                          "learning_rate": float(setup.schedule(step - 1)),  # the rate this step used
                          "tokens_per_sec": tokens / elapsed, "steps_per_sec": steps / elapsed,
                          # > 0 when the input pipeline, not the accelerator, sets the pace
                          "input_wait_fraction": input_wait / elapsed}
                progress.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_sec']:.0f}")
                tokens, steps, window_start, input_wait = 0, 0, time.perf_counter(), 0.0
            if evaluating:
                eval_batches = task.eval_data(config)
                if eval_batches is not None:
                    record.update(evaluate(eval_step, state.params, eval_batches, setup.batch_sharding,
                                           predict_step=predict_step, task=task,
                                           predictions_path=workdir / f"predictions_{step}.jsonl"))
            if record:
                writer.write(step, record)
                logged = {**logged, **record}
            if saving:
                ckpt.save(step, state, train_iter.get_state())
                last_checkpoint = step
            if tokens == 0 and ("eval_loss" in record or step % cfg.checkpoint_every == 0):
                window_start, input_wait = time.perf_counter(), 0.0  # tokens/s measures training steps only
    finally:
        # Pending async saves must land even when the run stops on an error (e.g. a NaN loss).
        progress.close()
        ckpt.wait()
        ckpt.close()
        writer.close()
    after_training = getattr(task, "after_training", None)
    after_metrics = None
    if cfg.get("export_dir") or callable(after_training):
        model = setup.model_on_host(state.params)  # every process takes part; process 0 writes
        if cfg.get("export_dir") and jax.process_index() == 0:
            model.save_pretrained(cfg.export_dir)
        if callable(after_training) and jax.process_index() == 0:
            after_metrics = after_training(model, config, workdir)
    if jax.process_index() == 0:
        print(run_summary(workdir, logged, after_metrics, first_step=start, num_steps=cfg.num_steps,
                          seconds=time.perf_counter() - started, last_checkpoint=last_checkpoint,
                          export_dir=cfg.get("export_dir")))
    return logged


# ---------------------------------------------------------------------------------------------------------------
# End-of-run summary

STANDARD_OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard")


def format_metrics(metrics: dict) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in metrics.items())


def format_duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{seconds:02d}s"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def latest_of_each(names) -> list[str]:
    """The names, of numbered ones (predictions_STEP.jsonl) only the highest-numbered, sorted."""
    best: dict[str, tuple[int, str]] = {}
    for name in names:
        number = re.search(r"_(\d+)(?=\.[^.]*$|$)", name)
        pattern = name[:number.start()] + "_STEP" + name[number.end():] if number else name
        best[pattern] = max(best.get(pattern, (-1, "")), (int(number.group(1)) if number else 0, name))
    return sorted(name for _, name in best.values())


def run_summary(workdir: Path, metrics: dict, after_metrics: dict | None, *, first_step: int, num_steps: int,
                seconds: float, last_checkpoint: int | None, export_dir: str | None) -> str:
    """A few lines for the end of a run: the steps it ran, its final metrics, where its outputs are.

    Args:
      metrics: the last logged values of this run ({} if it logged none, e.g. it resumed at its last step).
      after_metrics: what the task's after_training returned (e.g. test-set scores), or None.
      first_step: the step the run started from (0, or the checkpoint it resumed).
      last_checkpoint: the step of the newest checkpoint, or None.
      export_dir: where the final model was saved, or "" / None.
    """
    if num_steps > first_step:
        resumed = f" (resumed from step {first_step})" if first_step else ""
        lines = [f"Trained steps {first_step + 1}-{num_steps}{resumed} in {format_duration(seconds)}."]
    else:
        lines = [f"Nothing to train: the checkpoint of step {first_step} ends the run ({num_steps} steps)."]
    scores = {"train": {k: v for k, v in metrics.items() if k == "loss"},
              "eval": {k.removeprefix("eval_"): v for k, v in metrics.items() if k.startswith("eval_")},
              "after training": after_metrics or {}}
    lines += [f"  {label}: {format_metrics(values)}" for label, values in scores.items() if values]
    lines += ["Outputs:"] + [f"  {output}" for output in run_outputs(workdir, last_checkpoint, export_dir)]
    return "\n".join(lines)


def run_outputs(workdir: Path, last_checkpoint: int | None, export_dir: str | None) -> list[str]:
    """The run's outputs: the trainer's, then whatever else is in the workdir (a task's predictions and scores),
    then the exported model; folders end with a slash."""
    export = Path(export_dir) if export_dir else None
    others = [path.name for path in workdir.iterdir()
              if path.name not in STANDARD_OUTPUTS and not (export and path.resolve() == export.resolve())]
    names = [name for name in STANDARD_OUTPUTS if (workdir / name).exists()] + latest_of_each(others)
    notes = {"checkpoints": f"latest: step {last_checkpoint}" if last_checkpoint is not None else ""}
    outputs = [(workdir / name, notes.get(name, "")) for name in names]
    outputs += [(export, "the final model")] if export else []
    return [f"{path}{'/' if path.is_dir() else ''}{f'  ({note})' if note else ''}" for path, note in outputs]
