"""SIP pre-training: a T5 reads an FST's transitions and a string and learns to write the FST's output.

    python -m train --config configs/sip_pretrain.py --workdir runs/sip_pt            # tiny, CPU, minutes
    python -m train --config configs/sip_pretrain.py:paper --workdir runs/sip_d4      # the paper's SIP-d4 run
    python -m sip_jax.convert --from-pretraining runs/sip_pt/export runs/sip_ft_init  # then fine-tune it

Examples are drawn on the fly by the FST generator (sip_jax.fst.FSTPretrainingSource): random deterministic FSTs
with at most 4 states, as the original's sip/data_gen/gen_pretrain.py samples them, each transition encoded
through the FST tokenizer (the original's unicode_char_tokenizer_ipa.json; data.fst_tokenizer_path, or looked up:
see sip_jax/fst_data.py). Strings are ByT5 bytes.

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

BYT5_SMALL = dict(vocab_size=384, d_model=1472, d_kv=64, d_ff=3584, num_layers=12, num_decoder_layers=4,
                  num_heads=6, dropout_rate=0.1)
TINY = dict(vocab_size=384, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
            dropout_rate=0.0)
# FST encoder of SIP-d4 (pretrain_SIP_d4.jsonnet:1, 41-48); fst_tokenizer_vocab_size is the FST tokenizer's size.
FST_ENCODER_D4 = dict(num_states=15, fst_tokenizer_vocab_size=308, state_embedding_dim=64, token_embedding_dim=256,
                      final_state_embedding_dim=16, num_final_state_info=3, mlp_hidden_dim=None)
FST_ENCODER_TINY = dict(FST_ENCODER_D4, state_embedding_dim=16, token_embedding_dim=32, final_state_embedding_dim=8)


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in ("tiny", "paper"):
        raise ValueError(f"configs/sip_pretrain.py:{arg}: choose tiny or paper")
    paper = arg == "paper"
    c = base()
    c.family = "sip_pretrain"
    c.init_from = "google/byt5-small" if paper else ""
    c.model = ml_collections.ConfigDict(dict(
        relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, **(BYT5_SMALL if paper else TINY),
        **(FST_ENCODER_D4 if paper else FST_ENCODER_TINY)))
    # The original's inputs have 1..35 characters; a character takes up to 2 bytes (IPA letters), and up to 3 once
    # an upper-case arc maps it (e.g. U+027D -> U+2C64), plus eos. The tiny run keeps strings short.
    max_chars = 35 if paper else 8
    # The tiny run draws FSTs over 3..6 of the lower-case ASCII letters (at most 4 x 6 transitions), a version of
    # the task small enough to show learning on a CPU in minutes; `paper` keeps the original's sampler settings.
    sampler = {} if paper else dict(min_vocab_size=3, max_vocab_size=6, vocab="abcdefghijklmnopqrstuvwxyz")
    c.data = ml_collections.ConfigDict(dict(
        source="fst",
        seed=0,
        examples_per_fst=5 if paper else 1,
        num_eval_examples=1000 if paper else 64,  # from another seed's stream
        sampler=ml_collections.ConfigDict(dict(max_input_length=max_chars, **sampler)),  # fst.SamplerConfig fields
        fst_tokenizer_path="",  # "" looks the FST tokenizer up (sip_jax/fst_data.py)
        tokenizer="bytes",
        input_key="input", target_key="output", fst_key="FST",
        max_input_length=2 * max_chars + 1, max_target_length=3 * max_chars + 1,
        max_transitions=100 if paper else 24, truncate=False))

    if paper:
        c.train.num_steps = 133_334
        c.train.batch_size = 30
        c.train.grad_accum_steps = 3
        c.train.log_every = 100
        c.train.eval_every = 6_667  # about once per epoch of the original
        c.train.checkpoint_every = 2_000
        c.eval.batch_size = 32
        c.optimizer.learning_rate = 5e-4
    else:
        c.train.num_steps = 3000  # about 2 minutes on 2 CPU cores
        c.train.batch_size = 16
        c.train.log_every = 100
        c.train.eval_every = 1000
        c.train.checkpoint_every = 1000
        c.eval.batch_size = 32
        c.optimizer.learning_rate = 2e-3
    c.eval.generate = True
    c.optimizer.name = "adamw"
    c.optimizer.weight_decay = 0.0  # torch.optim.Adam
    c.optimizer.warmup_steps = 0 if paper else 20
    c.optimizer.decay = "constant"
    c.optimizer.clip_norm = 0.0 if paper else 1.0  # the paper run scales no gradients (grad_scale unset)
    return c
