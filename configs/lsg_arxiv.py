"""Fine-tune LSG-BART (4096 tokens) to summarise arXiv articles: JSONL lines {"article": ..., "abstract": ...}.

    python -m train --config configs/lsg_arxiv.py --workdir runs/lsg_arxiv \
        --config.init_from=path/to/lsg-bart-base-4096 --config.data.train_path=train.jsonl \
        --config.data.eval_path=val.jsonl
    python -m train --config configs/lsg_arxiv.py:tiny --workdir runs/x   # tiny shape, for a smoke run

init_from: an LSG-BART folder (the original's, or one made from BART with lsg_jax.bart_to_lsg); the model keys
below must describe it (a mismatch is refused with the differing keys listed). Adam at 8e-5, linear decay after
10% warmup, effective batch 32 by gradient accumulation.
"""
import ml_collections

from jaxport.base_config import base

MODELS = {
    # facebook/bart-base made LSG for 4096 tokens (as ccdv/lsg-bart-base-4096)
    "base": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                 decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                 max_position_embeddings=4096, vocab_size=50265),
    "tiny": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                 max_position_embeddings=1024, vocab_size=50265),
}


def get_config(arg: str = "base") -> ml_collections.ConfigDict:
    c = base()
    c.family = "lsg"
    c.model = ml_collections.ConfigDict(dict(
        **MODELS[arg], activation_function="gelu", dropout=0.1, attention_dropout=0.0, activation_dropout=0.0,
        scale_embedding=False, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
        forced_bos_token_id=0, forced_eos_token_id=2, lsg=True, adaptive=True, block_size=128,
        sparse_block_size=128, sparsity_factor=2, sparsity_type="norm", num_global_tokens=1,
        pass_global_tokens_to_decoder=True, pool_with_global=True, mask_first_token=False, lsh_num_pre_rounds=1))

    c.data = ml_collections.ConfigDict(dict(
        source="jsonl", input_key="article", target_key="abstract", tokenizer="facebook/bart-base",
        max_input_length=4096 if arg == "base" else 1024, max_target_length=512, truncate=True,
        train_path="", eval_path="", tfds_name="", train_split="train", eval_split="validation", data_dir="",
        task="", alphabet="", min_length=1, max_length=1, seed=0, num_eval_examples=0))

    c.train.num_steps = 20000
    c.train.batch_size = 32  # effective batch
    c.train.grad_accum_steps = 4  # 4 micro-batches of 8
    c.train.compute_dtype = "bfloat16"
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    c.eval.batch_size = 8
    c.optimizer.name = "adamw"
    c.optimizer.weight_decay = 0.0  # plain Adam
    c.optimizer.learning_rate = 8e-5
    c.optimizer.decay = "linear"
    c.optimizer.end_factor = 0.0
    c.optimizer.warmup_steps = c.train.num_steps // 10
    return c
