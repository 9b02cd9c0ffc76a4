"""The project's own training step, as the benchmarks run it beside PyTorch: trainer.build (mesh, shardings,
AdamW, a TrainState from a weights folder or random) and the jitted, state-donating make_train_step that
train.py runs; bf16 compute over float32 weights, constant learning rate, no clipping (the PyTorch sides do not
clip either)."""
import time
from pathlib import Path

import jax
from measure import chained_steps, jax_back_to_back_ms, median_ms

from jaxport import base_config, runtime, trainer
from jaxport.tasks import Seq2SeqTask


class FixedBatchTask(Seq2SeqTask):
    """Seq2SeqTask's model and loss without its data pipeline: benchmark batches are fixed arrays."""

    def __init__(self, model_class, model_config):
        self.model_class = model_class
        self.model_config = model_config


def train_setup(task: Seq2SeqTask, init_from: str | Path | None, learning_rate: float, weight_decay: float,
                optimizer: dict | None = None, mesh: dict | None = None, devices=None):
    """(initial TrainState, jitted donating step(state, batch) -> state, the batch sharding). With log_every 1 the
    state's metric_sums hold the last step's loss and gradient norm (`last_loss`). optimizer: config.optimizer
    fields to set besides (e.g. name="adafactor"); `mesh`: sizes of the mesh axes (default: data parallel over every
    device), over `devices` (default all)."""
    config = base_config.base()
    config.mesh.update(mesh or {})
    config.init_from = str(init_from or "")
    config.train.compute_dtype = "bfloat16"
    config.optimizer.learning_rate = learning_rate
    config.optimizer.warmup_steps = 0
    config.optimizer.decay = "constant"
    config.optimizer.weight_decay = weight_decay
    config.optimizer.clip_norm = 0.0
    config.optimizer.update(optimizer or {})
    runtime.configure()  # the settings python -m train applies
    setup = trainer.build(config, task, devices)
    step = jax.jit(trainer.make_train_step(setup, task, accumulation=1, log_every=1),
                   in_shardings=(setup.state_shardings, setup.batch_sharding),
                   out_shardings=setup.state_shardings, donate_argnums=0)
    return setup.state, step, setup.batch_sharding


def last_loss(state: trainer.TrainState) -> float:
    """The loss of the step that made `state` (train_setup's step sums over one step)."""
    return float(state.metric_sums["loss"])


def timed_train(task, init_from, np_batch: dict, learning_rate: float, weight_decay: float, warmup: int,
                steps: int) -> dict:
    """`warmup` + `steps` training steps (train_setup's) on one fixed batch, each timed on its own: median ms, every
    step's ms, the first and the last step's loss; then `steps` more back to back (the trainer's way)."""
    state, step, batch_sharding = train_setup(task, init_from, learning_rate, weight_decay)
    batch = trainer.global_batch(np_batch, batch_sharding)
    first_loss, times = None, []
    for i in range(warmup + steps):
        jax.block_until_ready(state)
        start = time.perf_counter()
        state = step(state, batch)
        jax.block_until_ready(state)
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
        if i == 0:
            first_loss = last_loss(state)
            print(f"   jax first step (incl. compile) {elapsed:.1f}s, loss {first_loss:.6f}", flush=True)
    if int(state.nonfinite_step) >= 0:
        raise FloatingPointError(f"JAX loss became non-finite at step {int(state.nonfinite_step)}")
    record = {"ms": median_ms(times), "times_ms": [1e3 * t for t in times], "first_loss": first_loss,
              "last_loss": last_loss(state)}
    return {**record, "back_to_back_ms": jax_back_to_back_ms(chained_steps(step, state, batch), steps)}
