"""Keys every training config shares; a config file starts from `base()` and fills in its family, and its `data`
section with jaxport.data.data_section (the keys of its source)."""
import ml_collections

from jaxport.sharding import DEFAULT_RULES


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.family = ""
    c.seed = 0
    c.init_from = ""  # HF-style folder (or hub id) to start from; "" trains from scratch

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 1000
    c.train.batch_size = 32  # global, over all hosts and devices
    c.train.grad_accum_steps = 1
    c.train.compute_dtype = "float32"  # "bfloat16": bf16 compute, float32 master weights
    # "" follows compute_dtype (float32: true float32 matmuls, as PyTorch); "tensorfloat32" (or "bfloat16") trades a
    # float32 run's matmul accuracy for speed on GPUs (jax.default_matmul_precision's names).
    c.train.matmul_precision = ""
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 3
    c.train.export_dir = ""  # where the final model is saved (save_pretrained); "" skips it

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 32
    c.eval.generate = True  # evaluation by generation too, where the task has one (jaxport.trainer.Task.predict)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # adamw | adafactor | lamb
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 100
    c.optimizer.warmup_fraction = 0.0  # > 0: warmup over round(fraction * train.num_steps) steps instead
    c.optimizer.decay = "cosine"  # linear | cosine | rsqrt | constant
    c.optimizer.end_factor = 0.0  # final learning rate as a fraction of the peak
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.0
    c.optimizer.clip_norm = 1.0  # 0 disables clipping
    # Per-group learning rates: {name: {"pattern": regex over parameter paths, "learning_rate": peak}}
    c.optimizer.groups = ml_collections.ConfigDict()

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.sharding_rules = DEFAULT_RULES
    return c
