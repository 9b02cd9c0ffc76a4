"""Fine-tune LSG-BART (4096 tokens) to summarise arXiv articles, evaluated with ROUGE on beam-searched summaries.

    # TFDS scientific_papers/arxiv (fields article, abstract), prepared as array_record beforehand:
    #   tfds build scientific_papers/arxiv --file_format=array_record [--data_dir=DIR]
    python -m train --config configs/lsg_arxiv.py --workdir runs/lsg_arxiv --config.init_from=path/to/lsg-bart-folder
    # or JSONL files with one {"article": ..., "abstract": ...} object a line:
    python -m train --config configs/lsg_arxiv.py --workdir runs/lsg_arxiv --config.init_from=path/to/lsg-bart-folder \
        --config.data.source=jsonl --config.data.train_path=train.jsonl --config.data.eval_path=val.jsonl
    # tiny random LSG-BART for a CPU smoke run (a tokenizer folder with at most 512 tokens, BART's special ids):
    python -m train --config configs/lsg_arxiv.py:tiny --workdir runs/x --config.data.tokenizer=TOKENIZER_DIR \
        --config.data.source=jsonl --config.data.train_path=train.jsonl --config.data.eval_path=val.jsonl

init_from: an LSG-BART folder (`python -m convert lsg ccdv/lsg-bart-base-4096 out`, or BART made LSG with
`python -m convert lsg facebook/bart-base out --from-bart --max-length 4096`); config.model must give the shapes of
the model in it (a mismatch is refused with the differing parameters listed); its LSG settings (block sizes,
sparsity) may differ, as when the original fine-tuned one checkpoint under several sparsity types. The tokenizer
is read from data.tokenizer, else from the init_from folder (`convert --from-bart` copies BART's files there; a plain
`convert lsg` does not: then pass --config.data.tokenizer=facebook/bart-base).

The recipe, as the original fine-tuned ccdv/lsg-bart-base-4096-arxiv with transformers' Seq2SeqTrainer (its model
card: Adam with betas 0.9/0.999 and eps 1e-8 at 8e-5, linear schedule, batch 8 x 4 accumulation steps = 32; the
16384-token model was then trained 1 epoch): no weight decay, a 10% warmup (`optimizer.warmup_fraction`, so it
follows a train.num_steps override), gradient clipping at 1.0 (the Trainer's default), one epoch of the 203,037
training articles, bf16 compute. Evaluation: teacher-forced loss and ROUGE-1/2/L/Lsum (F1 x 100, rouge-score with
stemming) of summaries generated with eval.generation (beam search of 5, length penalty 2.0, 128 to 512 tokens),
predictions in WORKDIR/predictions_STEP.jsonl. Generating 512-token summaries for the 6,436 validation articles
takes long: evaluation runs at the end (eval_every = num_steps); cap it with data.num_eval_examples, or turn
generation off with eval.generate=False.
"""
import ml_collections

from jaxport.base_config import base
from jaxport.data import JsonlData, TfdsData, data_section

TRAIN_EXAMPLES = 203_037  # scientific_papers/arxiv, train split
EFFECTIVE_BATCH = 32

MODELS = {
    # facebook/bart-base made LSG for 4096 tokens (as ccdv/lsg-bart-base-4096)
    "base": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                 decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                 max_position_embeddings=4096, vocab_size=50265, block_size=128, sparse_block_size=128,
                 num_global_tokens=1),
    # CPU tests: 256 tokens in blocks of 32 (so local, sparse and global attention all take part)
    "tiny": dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                 max_position_embeddings=256, vocab_size=512, block_size=32, sparse_block_size=32,
                 num_global_tokens=2),
}


def get_config(arg: str = "base") -> ml_collections.ConfigDict:
    if arg not in MODELS:
        raise ValueError(f"configs/lsg_arxiv.py:{arg}: expected one of {sorted(MODELS)}")
    tiny = arg == "tiny"
    c = base()
    c.family = "lsg"
    c.model = ml_collections.ConfigDict(dict(
        **MODELS[arg], activation_function="gelu", dropout=0.1, attention_dropout=0.0, activation_dropout=0.0,
        scale_embedding=False, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
        forced_bos_token_id=0, forced_eos_token_id=2, lsg=True, adaptive=True, sparsity_factor=2,
        sparsity_type="norm", pass_global_tokens_to_decoder=True, pool_with_global=True, mask_first_token=False,
        lsh_num_pre_rounds=1,
        # How this port runs (not saved in config.json): fused cuDNN attention on a GPU in bf16, else the blocked
        # einsums (also for training steps with attention_dropout > 0: fused attention has no dropout); remat
        # ("none", "dots", "full") trades training time for memory (bench/RESULTS.md).
        attn_implementation="auto", remat="none"))

    # tiny reads JSONL files (data.train_path, data.eval_path); data.num_eval_examples caps the evaluation set
    source = {} if tiny else {"tfds_name": "scientific_papers/arxiv"}
    c.data = data_section(
        JsonlData if tiny else TfdsData, **source, input_key="article", target_key="abstract",
        tokenizer="",  # "" reads it from init_from; else a folder or hub id (e.g. facebook/bart-base)
        max_input_length=MODELS[arg]["max_position_embeddings"], max_target_length=32 if tiny else 512,
        truncate=True)  # cut articles to max_input_length (the original truncates); False: longer ones are errors

    c.train.batch_size = EFFECTIVE_BATCH
    c.train.grad_accum_steps = 4  # 4 micro-batches of 8
    c.train.num_steps = TRAIN_EXAMPLES // EFFECTIVE_BATCH  # one epoch (6344 steps); set it for other data
    c.train.compute_dtype = "bfloat16"
    c.train.log_every = 50
    c.train.checkpoint_every = 1000
    c.train.eval_every = c.train.num_steps  # at the end (and every num_steps after a longer override)
    c.eval.batch_size = 8
    c.eval.generate = True  # ROUGE on generated summaries (beam search) besides the teacher-forced loss
    c.eval.generation = ml_collections.ConfigDict(dict(  # transformers' generate() arguments
        num_beams=5, max_length=512, min_length=128, length_penalty=2.0, no_repeat_ngram_size=0,
        early_stopping=True))

    c.optimizer.name = "adamw"
    c.optimizer.weight_decay = 0.0  # plain Adam
    c.optimizer.learning_rate = 8e-5
    c.optimizer.decay = "linear"
    c.optimizer.end_factor = 0.0
    c.optimizer.warmup_steps = 0
    c.optimizer.warmup_fraction = 0.1
    c.optimizer.clip_norm = 1.0

    if tiny:
        c.train.batch_size = 16
        c.train.grad_accum_steps = 2
        c.train.num_steps = 20
        c.train.compute_dtype = "float32"
        c.train.log_every = 5
        c.train.checkpoint_every = 10
        c.train.eval_every = 10
        c.eval.batch_size = 8
        c.eval.generation = ml_collections.ConfigDict(dict(
            num_beams=2, max_length=24, min_length=4, length_penalty=2.0, no_repeat_ngram_size=3,
            early_stopping=True))
        c.optimizer.learning_rate = 3e-3
    return c
