"""The project's own training step, as the benchmarks run it beside PyTorch: trainer.build (mesh, shardings,
AdamW, a TrainState from a weights folder or random) and the jitted, state-donating make_train_step that
train.py runs; bf16 compute over float32 weights, constant learning rate, no clipping (the PyTorch sides do not
clip either)."""
from pathlib import Path

import jax

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
