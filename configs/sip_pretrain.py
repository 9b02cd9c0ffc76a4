"""SIP pre-training: a T5 reads an FST's transitions and a string and learns to write the FST's output.

    python -m train --config configs/sip_pretrain.py --workdir runs/sip_pt            # tiny, CPU, minutes
    python -m train --config configs/sip_pretrain.py:small --workdir runs/sip_small   # bench/sip_claim.py, H100
    python -m train --config configs/sip_pretrain.py:paper --workdir runs/sip_d4      # the paper's SIP-d4 run
    # then fine-tune one: save its final model (rerunning a finished run only exports it), and initialise the
    # fine-tuning prefix from FSTs drawn as its config draws them (its sampler and FST tokenizer)
    python -m train --config configs/sip_pretrain.py --workdir runs/sip_pt --config.train.export_dir=runs/sip_pt/export
    python -m convert sip_finetune runs/sip_pt/export runs/sip_ft_init --from-pretraining \
        --fst-config configs/sip_pretrain.py

Examples are drawn on the fly by the FST generator (sip_jax.fst.FSTPretrainingSource), in `data.num_workers`
processes: random deterministic FSTs with at most 4 states, as the original's sip/data_gen/gen_pretrain.py samples
them, each transition encoded through an FST tokenizer (data.fst_tokenizer_path: "builtin" for models trained
from scratch here, or a file such as the original's unicode_char_tokenizer_ipa.json, which `paper` and the Hub
checkpoints use; "" looks that file up: see sip_jax/fst_data.py). Strings are ByT5 bytes. FSTs in the JSONL files
of data.exclude_fsts (e.g. few-shot tasks from `python -m sip_jax.fst.fewshot`) are never drawn.

`tiny` (the default) draws FSTs over 3..6 lower-case letters and strings of at most 8: small enough to learn on a
CPU in minutes. `small` is the small-scale reproduction of bench/sip_claim.py: a 9.2M-parameter T5 from scratch on
FSTs over 4..12 lower-case letters and strings of at most 20, for about 7 minutes on an H100.

`paper` follows configs/pretrain_non_hub/pretrain_SIP_d4.jsonnet of namednil/sip: google/byt5-small as the start,
FST encoder with 15 state embeddings (the last one padding) of size 64, symbol embeddings of size 256, final-flag
embeddings of size 16 and one linear layer to d_model; Adam (no weight decay) at a constant 5e-4 without gradient
clipping; batches of 10 with 3 accumulation steps (here a global batch of 30 in 3 micro-batches); 20 epochs over
40,000 training FSTs x 5 strings, i.e. 20 x 200,000 / 30 ~ 133,334 optimizer steps. Differences: examples come
from an endless stream rather than the fixed 200,000 (examples_per_fst=5 keeps 5 strings per FST); FSTs are padded
to a fixed 100 transitions (4 states x 25 letters at most) rather than to the longest in the batch, and, as in the
original, the padding transitions are not masked.
"""
import ml_collections

from jaxport.base_config import base
from jaxport.data import data_section
from sip_jax.configuration import T5_SHAPES
from sip_jax.fst.encoding import FSTTokenizer
from sip_jax.fst_data import BUILTIN_FST_TOKENIZER, FSTData

LOWER_CASE = "abcdefghijklmnopqrstuvwxyz"
# FST encoder of SIP-d4 (pretrain_SIP_d4.jsonnet:1, 41-48); fst_tokenizer_vocab_size is the FST tokenizer's size.
FST_ENCODER_D4 = dict(num_states=15, fst_tokenizer_vocab_size=308, state_embedding_dim=64, token_embedding_dim=256,
                      final_state_embedding_dim=16, num_final_state_info=3, mlp_hidden_dim=None)
BUILTIN_VOCAB_SIZE = FSTTokenizer.builtin().vocab_size
PRESETS = {
    "tiny": dict(
        shape="tiny", max_chars=8, max_transitions=24, tokenizer=BUILTIN_FST_TOKENIZER,
        fst_encoder=dict(FST_ENCODER_D4, fst_tokenizer_vocab_size=BUILTIN_VOCAB_SIZE, state_embedding_dim=16,
                         token_embedding_dim=32, final_state_embedding_dim=8),
        sampler=dict(min_vocab_size=3, max_vocab_size=6, vocab=LOWER_CASE)),
    "small": dict(
        shape="small", max_chars=20, max_transitions=48, tokenizer=BUILTIN_FST_TOKENIZER,
        fst_encoder=dict(FST_ENCODER_D4, fst_tokenizer_vocab_size=BUILTIN_VOCAB_SIZE, state_embedding_dim=32,
                         token_embedding_dim=128),
        sampler=dict(min_vocab_size=4, max_vocab_size=12, vocab=LOWER_CASE)),
    # The original's sampler settings and tokenizer file.
    "paper": dict(shape="byt5_small", max_chars=35, max_transitions=100, tokenizer="", fst_encoder=FST_ENCODER_D4,
                  sampler={}),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f"configs/sip_pretrain.py:{arg}: choose one of {sorted(PRESETS)}")
    preset = PRESETS[arg]
    paper = arg == "paper"
    c = base()
    c.family = "sip_pretrain"
    c.init_from = "google/byt5-small" if paper else ""
    c.model = ml_collections.ConfigDict(dict(
        relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, **T5_SHAPES[preset["shape"]], **preset["fst_encoder"]))
    # The original's inputs have 1..35 characters; a character takes up to 2 bytes (IPA letters), and up to 3 once
    # an upper-case arc maps it (e.g. U+027D -> U+2C64), plus eos. Lower-case ASCII strings need 1 byte a letter.
    max_chars = preset["max_chars"]
    c.data = data_section(
        FSTData,
        examples_per_fst={"tiny": 1, "small": 2, "paper": 5}[arg],  # consecutive strings of one FST
        num_eval_examples={"tiny": 64, "small": 512, "paper": 1000}[arg],  # from another seed's stream
        sampler=dict(max_input_length=max_chars, **preset["sampler"]),  # fst.SamplerConfig fields
        fst_tokenizer_path=preset["tokenizer"],
        num_workers={"tiny": 0, "small": 14, "paper": 4}[arg],  # processes generating examples
        max_input_length=(2 if paper else 1) * max_chars + 1, max_target_length=(3 if paper else 2) * max_chars + 1,
        max_transitions=preset["max_transitions"])  # the sampler's max_states x max_vocab_size

    c.eval.batch_size = 32
    c.eval.generate = True
    c.optimizer.name = "adamw"
    c.optimizer.weight_decay = 0.0  # torch.optim.Adam
    c.optimizer.decay = "constant"
    c.optimizer.clip_norm = 1.0
    c.optimizer.warmup_steps = 20
    if arg == "tiny":
        c.train.num_steps = 3000  # about 2 minutes on 2 CPU cores
        c.train.batch_size = 16
        c.train.log_every = 100
        c.train.eval_every = 1000
        c.train.checkpoint_every = 1000
        c.optimizer.learning_rate = 2e-3
    elif arg == "small":
        c.train.num_steps = 50_000  # about 7 minutes on an H100 (8 ms a step)
        c.train.batch_size = 128
        c.train.compute_dtype = "bfloat16"
        c.train.log_every = 500
        c.train.eval_every = 10_000
        c.train.checkpoint_every = 5_000
        c.eval.batch_size = 128
        c.optimizer.learning_rate = 1e-3
        c.optimizer.warmup_steps = 1000
        c.optimizer.decay = "cosine"
        c.optimizer.end_factor = 0.1
    else:
        c.train.num_steps = 133_334
        c.train.batch_size = 30
        c.train.grad_accum_steps = 3
        c.train.log_every = 100
        c.train.eval_every = 6_667  # about once per epoch of the original
        c.train.checkpoint_every = 2_000
        c.optimizer.learning_rate = 5e-4
        c.optimizer.warmup_steps = 0
        c.optimizer.clip_norm = 0.0  # the paper run scales no gradients (grad_scale unset)
    return c
