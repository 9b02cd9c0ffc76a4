"""LSG-BART's training task (configs/lsg_arxiv.py): long-document summarisation on the shared seq2seq task.

Teacher-forced loss as jaxport.tasks.Seq2SeqTask; at each evaluation summaries are also generated (beam search
through the model's `generate`, with config.eval.generation) and scored with ROUGE-1/2/L/Lsum, through the trainer's
`predict` / `score_predictions` hook, which writes them to WORKDIR/predictions_STEP.jsonl.

The tokenizer is config.data.tokenizer, else the one in the init_from folder (BART's, for LSG-BART); its pad, eos and
bos ids must be the model's. Inputs longer than the model's position table are cut when data.truncate is set and
refused otherwise, with the model's own message.
"""
import dataclasses
import functools
import logging
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxport import data
from jaxport.seq2seq import cut_at_eos
from jaxport.tasks import Seq2SeqTask, make_tokenizer
from lsg_jax.configuration import LSGBartConfig
from lsg_jax.modeling import LSGBartForConditionalGeneration

log = logging.getLogger(__name__)

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# Files of a transformers tokenizer; a folder with none of them has no tokenizer to read.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json", "sentencepiece.bpe.model")


def get_task(config) -> "SummarizationTask":
    return SummarizationTask(config)


# ---------------------------------------------------------------------------------------------------------------
# ROUGE


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> str:
    """One sentence a line, as rougeLsum expects. The original (transformers' run_summarization) splits with
    nltk.sent_tokenize, whose punkt model is a separate download; this splits lines after . ! or ?, which changes
    rougeLsum only where punkt would split differently (abbreviations), and never ROUGE-1/2/L."""
    return "\n".join(s for line in text.strip().splitlines() for s in _SENTENCE_END.split(line.strip()) if s)


@functools.cache
def _rouge_scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError as error:
        raise ImportError("ROUGE needs the rouge-score package: pip install rouge-score") from error
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE F1 x 100 of one summary, with stemming (as the `evaluate` rouge metric the original reports)."""
    scores = _rouge_scorer().score(split_sentences(reference), split_sentences(prediction))
    return {name: 100.0 * scores[name].fmeasure for name in ROUGE_TYPES}


# ---------------------------------------------------------------------------------------------------------------
# Configuration checks


def summarization_tokenizer(config, model_config: LSGBartConfig):
    """data.tokenizer, else the init_from folder's tokenizer, checked against the model's special ids."""
    name = config.data.tokenizer or config.init_from
    if not name:
        raise ValueError("no tokenizer: set data.tokenizer (a folder or hub id, e.g. facebook/bart-base, whose "
                         "tokenizer LSG-BART uses) or init_from to a folder holding tokenizer files")
    folder = Path(name).expanduser()
    if folder.is_dir() and not any((folder / file).is_file() for file in TOKENIZER_FILES):
        raise ValueError(f"{name} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): set data.tokenizer to a "
                         "folder or hub id, e.g. facebook/bart-base (a plain `python -m convert lsg` copies no "
                         "tokenizer; `--from-bart` does)")
    tokenizer = make_tokenizer(name)
    problems = [f"{what} {ours} where the model has {theirs}" for what, ours, theirs in (
        ("pad id", tokenizer.pad_id, model_config.pad_token_id),
        ("eos id", tokenizer.eos_id, model_config.eos_token_id))
        if ours != theirs]
    if tokenizer.vocab_size > model_config.vocab_size:
        problems.append(f"{tokenizer.vocab_size} tokens where the model has vocab_size={model_config.vocab_size}")
    first = list(tokenizer.encode("a"))[:1]
    bos = model_config.forced_bos_token_id
    if bos is not None and first != [bos]:  # generation forces bos after the start token: labels must begin with it
        problems.append(f"texts start with {first} where the model's forced_bos_token_id is {bos}")
    if problems:
        raise ValueError(f"tokenizer {name} does not fit config.model: " + "; ".join(problems))
    return tokenizer


def input_limit(model_config: LSGBartConfig, length: int, truncate: bool) -> int:
    """How many input tokens the model takes for inputs padded to `length`: `length` when it fits; the model's
    limit with truncate; without truncate, the model's error (naming max_position_embeddings and the block size)."""
    model = nnx.eval_shape(lambda: LSGBartForConditionalGeneration(model_config, rngs=nnx.Rngs(0)))
    ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
    return jax.eval_shape(lambda ids: model.prepare_inputs(ids, truncation=truncate)[0], ids).shape[1]


# ---------------------------------------------------------------------------------------------------------------
# The task


class SummarizationTask(Seq2SeqTask):
    def __init__(self, config):
        model_config = LSGBartConfig.from_dict(config.model.to_dict())
        tokenizer = summarization_tokenizer(config, model_config)
        super().__init__(config, LSGBartForConditionalGeneration, LSGBartConfig, tokenizer=tokenizer)
        self.tokenizer = tokenizer
        cfg = config.data
        try:
            limit = input_limit(self.model_config, cfg.max_input_length, cfg.truncate)
        except ValueError as error:
            raise ValueError(f"data.max_input_length={cfg.max_input_length} with data.truncate=False: {error}") \
                from None
        if limit < cfg.max_input_length:  # truncate: cut by the tokenizer (which keeps eos), not by the model
            log.warning("data.max_input_length=%d is more than the model takes: articles are cut to %d tokens",
                        cfg.max_input_length, limit)
            self.preprocess = dataclasses.replace(self.preprocess, max_input_length=limit)
        self.generation = config.eval.generation.to_dict() if "generation" in config.eval else {}

    def pretrained_params(self, config):
        params = super().pretrained_params(config)
        if params is None:
            return None
        # Settings without a shape of their own (block sizes, sparsity, dropout) are taken from config.model.
        from jaxport.hf import read_config, resolve_folder
        saved = LSGBartConfig.from_dict(read_config(resolve_folder(config.init_from))).to_dict()
        differences = [f"{key}={value!r} (init_from: {saved[key]!r})" for key, value in
                       self.model_config.to_dict().items() if key in saved and saved[key] != value and key != "extra"]
        if differences:
            log.warning("config.model differs from init_from's config.json; training uses config.model's %s",
                        ", ".join(differences))
        return params

    def source(self, config, split: str):
        """Seq2SeqTask's, pointing to JSONL files when the TFDS dataset is not prepared."""
        cfg = config.data
        try:
            return data.make_source(cfg, split)
        except FileNotFoundError as error:
            if cfg.source != "tfds":
                raise
            raise FileNotFoundError(f"{error}\nOr read JSONL files of {{{cfg.input_key!r}: ..., {cfg.target_key!r}: "
                                    "...} lines: --config.data.source=jsonl --config.data.train_path=... "
                                    "--config.data.eval_path=...") from None

    # --- generation-based evaluation (jaxport.trainer.Task.predict / score_predictions) ---------------------------

    def predict(self, model, batch):
        """Beam-searched summaries [B, max_length]: decoder start token first, pad after eos."""
        return model.generate(batch["input_ids"], batch["attention_mask"], **self.generation).sequences

    def score_predictions(self, batch, predictions):
        eos = self.tokenizer.eos_id
        generated = [cut_at_eos(row[1:], eos) for row in np.asarray(predictions)]
        texts = [self.tokenizer.decode(ids) for ids in generated]
        references = [self.tokenizer.decode(row[mask > 0])
                      for row, mask in zip(batch["labels"], batch["decoder_attention_mask"], strict=True)]
        per_example = [rouge(text, reference) for text, reference in zip(texts, references, strict=True)]
        scores = {name: np.array([s[name] for s in per_example]) for name in ROUGE_TYPES}
        scores["gen_len"] = np.array([len(ids) for ids in generated], np.float64)
        records = [{"prediction": text, "reference": reference, **{k: round(v, 4) for k, v in s.items()}}
                   for text, reference, s in zip(texts, references, per_example, strict=True)]
        return scores, records
