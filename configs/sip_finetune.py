"""SIP fine-tuning: a tunable prefix before a T5's input, trained few-shot on a TSV of input/output pairs
(grapheme-to-phoneme or text-editing data, one pair per line, an optional "input<TAB>output" header line).

    # the Hub model namednil/sip-d4 (ByT5-small shape) on your data, as in the paper:
    python -m train --config configs/sip_finetune.py:sip_d4 --workdir runs/sip_g2p \
        --config.data.train_path=train.tsv --config.data.eval_path=dev.tsv --config.data.test_path=test.tsv
    # few-shot from one labelled file, as the original's RandomSplit: 5 random rows train, the rest evaluate:
    python -m train --config configs/sip_finetune.py:sip_d4 --workdir runs/sip_te \
        --config.data.train_path=task.tsv --config.data.num_train=5 --config.train.batch_size=5
    # the test set's predictions and scores (predictions.tsv, test_metrics.json in the workdir):
    python -m sip_jax.predict --config configs/sip_finetune.py:sip_d4 --workdir runs/sip_g2p [same --config.* flags]

`tiny` (the default) is a small random T5 that runs on a CPU in minutes, for trying the pipeline; start it from a
converted model with --config.init_from=FOLDER (e.g. `python -m convert sip_finetune PRE FT --from-pretraining` on
a model trained with configs/sip_pretrain.py).

The optimizer is the original's (sip/embed_finetune.py:273-285 `get_optimizer(torch.optim.Adam, prefix_lr=1.0,
lr=3e-4)`; configs/finetune/*/sip-d4.jsonnet: Adam, constant learning rate, gradient norm scaled to at most 1.0,
batches of 16): Adam is adamw without weight decay, and the prefix's own learning rate is a group,
`optimizer.groups.prefix = {pattern: '^prefix_embedding', learning_rate: 1.0}`; every other parameter keeps
`optimizer.learning_rate` = 3e-4. The stored `prefix_init_tensor` (a buffer in the original, no gradient) gets
learning rate 0. The original counts epochs: 150 (g2p) or 200 (text editing) passes over the training rows, each
pass ceil(rows / batch_size) steps, the last batch of a pass smaller (here: padded and masked); set
train.num_steps to epochs x ceil(rows / batch_size), e.g. 200 for 5 examples in batches of 5.
"""
import ml_collections

from jaxport.base_config import base
from jaxport.data import data_section
from sip_jax.configuration import T5_SHAPES
from sip_jax.tasks import FinetuningData

# The prefix settings of the original's SIPFinetuningModelConfig (sip/embed_finetune.py:179-186); prefix_length,
# num_examples and random_selection decide how from_pretrained initialises a fresh prefix.
PREFIX = dict(num_examples=32, prefix_length=50, random_selection=True, prefix_max_init_length=70,
              num_precomputed_examples=400)
# `small`: the model of configs/sip_pretrain.py:small (bench/sip_claim.py), its strings of at most 20 letters.
PRESETS = {
    "tiny": dict(shape="tiny", init_from="", max_length=64),
    "small": dict(shape="small", init_from="", max_length=41),
    "sip_d4": dict(shape="byt5_small", init_from="namednil/sip-d4", max_length=64),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f"configs/sip_finetune.py:{arg}: choose one of {sorted(PRESETS)}")
    preset = PRESETS[arg]
    c = base()
    c.family = "sip_finetune"
    c.init_from = preset["init_from"]
    c.model = ml_collections.ConfigDict(dict(
        relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, **T5_SHAPES[preset["shape"]], **PREFIX))

    c.data = data_section(FinetuningData, max_input_length=preset["max_length"], max_target_length=preset["max_length"])

    c.train.num_steps = 200
    c.train.batch_size = 16
    c.train.log_every = 10
    c.train.eval_every = 200
    c.train.checkpoint_every = 100
    c.eval.batch_size = 16
    c.eval.generate = True  # greedy decoding for accuracy / edit distance at each evaluation

    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 3e-4
    c.optimizer.weight_decay = 0.0  # torch.optim.Adam
    c.optimizer.warmup_steps = 0
    c.optimizer.decay = "constant"
    c.optimizer.clip_norm = 1.0  # the original's grad_scale=1.0: the global gradient norm is scaled to <= 1
    c.optimizer.groups = ml_collections.ConfigDict({
        "prefix": {"pattern": "^prefix_embedding", "learning_rate": 1.0},
        "stored": {"pattern": "^prefix_init_tensor", "learning_rate": 0.0},
    })
    return c
