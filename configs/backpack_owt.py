"""Train a Backpack-GPT2 language model, or (a `_gpt2` preset) plain GPT-2 of the same contextualization network, the
paper's baseline, by next-token cross-entropy on text (backpack_jax.tasks).

    python -m train --config configs/backpack_owt.py --workdir runs/backpack_tiny          # tiny, CPU, a minute
    python -m train --config configs/backpack_owt.py:tiny_gpt2 --workdir runs/gpt2_tiny    # its GPT-2 baseline
    # the paper's run: OpenWebText through TFDS, prepared beforehand as array_record files
    #   tfds build openwebtext --file_format=array_record [--data_dir=DIR]
    python -m train --config configs/backpack_owt.py:paper --workdir runs/backpack_owt
    python -m train --config configs/backpack_owt.py:paper_gpt2 --workdir runs/gpt2_owt
    # or any text as JSONL files ({"text": ...} a line; globs allowed) or text files (a document a line):
    python -m train --config configs/backpack_owt.py:paper --workdir runs/x --config.data.source=lm_jsonl \
        --config.data.train_path='owt/train-*.jsonl' --config.data.eval_path=owt/val.jsonl

Data (jaxport.data.corpus): documents are tokenised, each followed by the tokenizer's end-of-document token
(<|endoftext|> for GPT-2's), concatenated and cut into windows of data.sequence_length + 1 tokens (inputs and their
next tokens). `paper` keeps the token stream in data.cache_dir (about 18 GB for OpenWebText's 9B tokens), written
once by the first run; the last 4,000 of OpenWebText's 8,013,769 documents are held out for evaluation (TFDS has one
split), as the authors' training code held out a 0.0005 fraction.

`tiny` (the default) needs no download and no tokenizer files: it reads this repository's own Markdown files (the
README and the others one directory down, a document per line; README.md itself is held out for evaluation) as
UTF-8 bytes (ByT5's byte tokenizer, data.tokenizer="bytes"), with a 2-layer, 64-wide Backpack of 4 senses. It is a
smoke job: 300 steps in one to two minutes on a 2-core CPU, where the loss falls from 5.6 (uniform over 264 ids) to
3.4, held-out perplexity 31 (tiny_gpt2 reaches 2.8 in the same steps: a Backpack predicts from a weighted sum of each
byte's senses, slow to learn spelling). For real text pass --config.data.train_path (and a tokenizer folder or hub id
as --config.data.tokenizer, with model.vocab_size at least its size).

`small` is bench/backpack_claim.py's (the paper's claim at small scale, which gives its data and tokenizer):
8 layers of 512, 16 senses, 256 positions, a 16,384-token vocabulary, dropout 0.1, 3,000 steps of 64 x 256 tokens,
AdamW at 1e-3 (weight decay 0.1) with 300 warmup steps and linear decay, bf16.

`paper` is the original's recipe (the paper, the stanfordnlp/backpack-gpt2 model card, and the flash-attention
training configs the authors forked): Backpack-GPT2 of 170M parameters (GPT-2 small as the contextualization
network, 512 positions, 16 senses, sense MLP 4 x wider, attention scaled by the inverse layer index, vocabulary of
50,264: GPT-2's 50,257 padded to a multiple of 8), GPT-2's tokenizer, AdamW at 6e-4 (weight decay 0.1, gradient
clipping at 1.0) with a 5,000-step linear warmup and linear decay to 0 at 100,000 steps of 1,024 x 512 tokens
(512k), bf16 compute over float32 weights; here in 16 accumulation steps of 64 (set train.grad_accum_steps for your
memory). Differences: weight decay applies to every parameter here (the original spared biases and norms), and
dropout is the released config.json's 0.1.
"""
from pathlib import Path

import ml_collections

from jaxport.base_config import base
from jaxport.data import LanguageModelJsonlData, LanguageModelTextData, LanguageModelTfdsData, data_section

GPT2_SMALL = dict(n_embd=768, n_layer=12, n_head=12)
MODELS = {
    "tiny": dict(vocab_size=264, n_positions=128, n_embd=64, n_layer=2, n_head=4, num_senses=4,
                 sense_intermediate_scale=2),
    # bench/backpack_claim.py: a tokenizer of 16,384 trained on its text
    "small": dict(vocab_size=16384, n_positions=256, n_embd=512, n_layer=8, n_head=8, num_senses=16,
                  sense_intermediate_scale=4),
    "paper": dict(vocab_size=50264, n_positions=512, **GPT2_SMALL, num_senses=16, sense_intermediate_scale=4),
}
BACKPACK_ONLY = ("num_senses", "sense_intermediate_scale")  # what plain GPT-2's config does not have
# The tokenizer's end-of-document id: GPT-2's <|endoftext|>, bench/backpack_claim.py's (id 0), ByT5's eos.
END_OF_DOCUMENT = {size: dict(bos_token_id=i, eos_token_id=i) for size, i in (("tiny", 1), ("small", 0),
                                                                               ("paper", 50256))}
OWT_DOCUMENTS = 8_013_769  # TFDS openwebtext, its one split
OWT_HELD_OUT = 4_000


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    size, gpt2 = arg.removesuffix("_gpt2"), arg.endswith("_gpt2")
    if size not in MODELS:
        raise ValueError(f"configs/backpack_owt.py:{arg}: choose one of {sorted(MODELS)}, each also as NAME_gpt2")
    paper, small = size == "paper", size == "small"
    c = base()
    c.family = "gpt2" if gpt2 else "backpack"
    model = {key: value for key, value in MODELS[size].items() if not (gpt2 and key in BACKPACK_ONLY)}
    dropout = 0.0 if size == "tiny" else 0.1
    c.model = ml_collections.ConfigDict(dict(
        **model, scale_attn_by_inverse_layer_idx=True, layer_norm_epsilon=1e-5, activation_function="gelu_new",
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, **END_OF_DOCUMENT[size]))

    if paper:
        c.data = data_section(
            LanguageModelTfdsData, tfds_name="openwebtext", train_split=f"train[:-{OWT_HELD_OUT}]",
            eval_split=f"train[-{OWT_HELD_OUT}:]", tokenizer="gpt2", sequence_length=512,
            cache_dir="~/.cache/jaxport/corpus", num_eval_windows=2048)
    elif small:  # bench/backpack_claim.py gives the files and the tokenizer
        c.data = data_section(LanguageModelJsonlData, train_path="", eval_path="", tokenizer="", sequence_length=256,
                              num_eval_windows=1024)
    else:
        root = Path(__file__).resolve().parents[1]
        c.data = data_section(LanguageModelTextData, train_path=str(root / "*" / "*.md"),
                              eval_path=str(root / "README.md"), sequence_length=64, num_eval_windows=64)

    c.optimizer.name = "adamw"
    c.optimizer.decay = "linear"
    c.optimizer.end_factor = 0.0
    c.optimizer.clip_norm = 1.0
    if paper:
        c.train.num_steps = 100_000
        c.train.batch_size = 1024
        c.train.grad_accum_steps = 16
        c.train.compute_dtype = "bfloat16"
        c.train.log_every = 100
        c.train.eval_every = 2_000
        c.train.checkpoint_every = 2_000
        c.eval.batch_size = 64
        c.optimizer.learning_rate = 6e-4
        c.optimizer.warmup_steps = 5_000
        c.optimizer.weight_decay = 0.1
    elif small:  # a few minutes on one H100-class GPU
        c.train.num_steps = 3_000
        c.train.batch_size = 64
        c.train.compute_dtype = "bfloat16"
        c.train.log_every = 100
        c.train.eval_every = 1_000
        c.train.checkpoint_every = 1_000
        c.eval.batch_size = 64
        c.optimizer.learning_rate = 1e-3
        c.optimizer.warmup_steps = 300
        c.optimizer.weight_decay = 0.1
    else:
        c.train.num_steps = 300
        c.train.batch_size = 16
        c.train.log_every = 50
        c.train.eval_every = 150
        c.train.checkpoint_every = 150
        c.eval.batch_size = 32
        c.optimizer.learning_rate = 3e-3
        c.optimizer.warmup_steps = 30
    return c
