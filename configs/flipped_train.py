"""FLIPPED training: a T5 learns to generate the task instruction from (input, gold label), and not from
(input, wrong label) (flipped loss: likelihood + 3 x unlikelihood, flipped_jax.losses); evaluation is zero-shot
accuracy by option scoring.

    python -m train --config configs/flipped_train.py --workdir runs/flipped

`tiny` (the default) is a small random T5 on two generated classification tasks with two templates each (no
download; bytes as tokens, so the T5 sentinels are spelled out in bytes): about a minute on a CPU. The paper's
recipe (the FLIPPED model card; the original's T0/T5.py and T0/run.py) is `paper_3b` and `paper_11b`: T5 v1.1
LM-adapted (google/t5-xl-lm-adapt, google/t5-xxl-lm-adapt) fine-tuned 5,000 steps, inputs of 512 (3B) or 384
(11B) tokens, instructions of 64, Adafactor without parameter scaling (transformers' scale_parameter=False,
relative_step=False) at a constant 5e-5, gradient norm clipped to 0.5 (the original's default grad_norm), dropout
0.1, datasets sampled in proportion to size capped at 500,000 examples, a random template per draw; 11B with bf16
activations. Their training mixture (TRAIN_DATASETS, the classification datasets of T0's mixture, as the
original's configs list them) is read with Hugging Face `datasets` (pip install datasets) and promptsource's
templates (a checkout of promptsource: --config.data.templates_dir=promptsource/templates); or give it as JSONL
rows of {input, label, options, instruction}: --config.data.source=flipped_jsonl --config.data.train_path=FILE.
The batch of 240 is the original's other 3B configs' (1 per GPU x 20 accumulation steps x 12 GPUs); its FLIPPED
config is not in the repository.
"""
import ml_collections

from flipped_jax.tasks import HuggingFaceFlippedData, SyntheticFlippedData
from jaxport.base_config import base
from jaxport.data import data_section

TRAIN_DATASETS = ("glue/qqp,paws/labeled_final,glue/mrpc,ag_news,dbpedia_14,imdb,amazon_polarity,rotten_tomatoes,"
                  "yelp_review_full,cos_e/v1.11,dream,quail,quartz,social_i_qa,wiqa,cosmos_qa,qasc,quarel,sciq,"
                  "app_reviews")
T5_V11 = dict(vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
              pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
PRESETS = {
    "tiny": dict(model=dict(vocab_size=384, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                            num_heads=4), init_from="", input_length=112, target_length=96,
             compute_dtype="float32"),
    "paper_3b": dict(model=dict(d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24,
                                num_heads=32), init_from="google/t5-xl-lm-adapt", input_length=512,
                     target_length=64,
                     compute_dtype="float32"),
    "paper_11b": dict(model=dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_decoder_layers=24,
                                 num_heads=64), init_from="google/t5-xxl-lm-adapt", input_length=384,
                      target_length=64,
                      compute_dtype="bfloat16"),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f"configs/flipped_train.py:{arg}: choose one of {sorted(PRESETS)}")
    preset = PRESETS[arg]
    tiny = arg == "tiny"
    c = base()
    c.family = "flipped"
    c.init_from = preset["init_from"]
    c.model = ml_collections.ConfigDict({**T5_V11, "dropout_rate": 0.1, **preset["model"]})
    lengths = dict(max_input_length=preset["input_length"], max_target_length=preset["target_length"])
    if tiny:
        c.data = data_section(SyntheticFlippedData, **lengths)
    else:
        c.data = data_section(HuggingFaceFlippedData, datasets=TRAIN_DATASETS, tokenizer=preset["init_from"],
                              **lengths)

    c.train.num_steps = 150 if tiny else 5000
    c.train.batch_size = 8 if tiny else 240
    c.train.compute_dtype = preset["compute_dtype"]
    c.train.log_every = 25 if tiny else 50
    c.train.eval_every = 150 if tiny else 500
    c.train.checkpoint_every = 150 if tiny else 500
    c.eval.batch_size = 32
    c.eval.generate = False  # evaluation scores options; there is nothing to generate

    c.optimizer.name = "adafactor"
    c.optimizer.multiply_by_parameter_scale = False
    c.optimizer.learning_rate = 3e-3 if tiny else 5e-5
    c.optimizer.warmup_steps = 0
    c.optimizer.decay = "constant"
    c.optimizer.clip_norm = 0.5
    return c
