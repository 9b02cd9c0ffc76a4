"""A small T5 learns to reverse strings: the README's main job, no download, minutes on a CPU.

    python -m train --config configs/t5_reverse.py --workdir runs/t5_reverse
    python -m train --config configs/t5_reverse.py:byt5_small --workdir runs/x   # ByT5-small shape
"""
import ml_collections

from jaxport.base_config import base
from jaxport.data import SyntheticData, data_section

MODELS = {
    "tiny": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4),
    "byt5_small": dict(d_model=1472, d_kv=64, d_ff=3584, num_layers=12, num_decoder_layers=4, num_heads=6),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    c = base()
    c.family = "t5"
    c.model = ml_collections.ConfigDict(dict(
        vocab_size=384, relative_attention_num_buckets=32,
        relative_attention_max_distance=128, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **MODELS[arg]))

    c.data = data_section(SyntheticData, task="reverse", max_length=12, max_input_length=16, max_target_length=16)

    c.train.num_steps = 600
    c.train.batch_size = 64
    c.train.log_every = 50
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    c.eval.batch_size = 64
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 50
    return c
