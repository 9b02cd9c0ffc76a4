"""The training side's link to the FST generator (sip_jax.fst): the `data.source = "fst"` config section, where the
FST tokenizer file is, and the pre-training source and preprocessor made from that section.

The generator itself (FST sampling, the on-the-fly source, the tokenizer encoding) lives in sip_jax.fst;
this module only chooses and wires its pieces.
"""
import dataclasses
import os
from pathlib import Path

from jaxport.data import Seq2SeqData, data_source
from sip_jax.fst.settings import FST_TOKENIZER_FILE, SamplerConfig

# Where the FST tokenizer (the original's unicode_char_tokenizer_ipa.json) is looked for, in order, when
# no path is given: an environment variable, then beside the FST package, this package, the working directory.
FST_TOKENIZER_ENV = "SIP_FST_TOKENIZER"


# data.fst_tokenizer_path value that selects FSTTokenizer.builtin() instead of a file.
BUILTIN_FST_TOKENIZER = "builtin"


def load_fst_tokenizer(path: str | os.PathLike | None = None):
    """The FST tokenizer: the built-in one for "builtin", else the file at `path` (or looked up when empty)."""
    from sip_jax.fst import FSTTokenizer

    if path == BUILTIN_FST_TOKENIZER:
        return FSTTokenizer.builtin()
    return FSTTokenizer(resolve_fst_tokenizer_path(path))


def resolve_fst_tokenizer_path(path: str | os.PathLike | None = None) -> Path:
    if path:
        found = Path(path).expanduser()
        if not found.is_file():
            raise FileNotFoundError(f"no FST tokenizer file at {found}")
        return found
    here = Path(__file__).resolve().parent
    candidates = [Path(os.environ[FST_TOKENIZER_ENV])] if os.environ.get(FST_TOKENIZER_ENV) else []
    candidates += [here / "fst" / FST_TOKENIZER_FILE, here / FST_TOKENIZER_FILE, Path.cwd() / FST_TOKENIZER_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"cannot find the FST tokenizer {FST_TOKENIZER_FILE} (looked in {', '.join(map(str, candidates))}); "
        f"pass its path (data.fst_tokenizer_path / --fst-tokenizer) or set {FST_TOKENIZER_ENV}")


# The evaluation stream's seed is the training seed plus this.
EVAL_SEED_OFFSET = 1_000_003


@data_source("fst")
@dataclasses.dataclass(frozen=True, kw_only=True)
class FSTData(Seq2SeqData):
    """Pre-training examples {fst_key, input_key, target_key} drawn on the fly by the FST generator."""

    max_transitions: int  # FSTs are padded to this many transitions
    input_key: str = "input"
    target_key: str = "output"
    fst_key: str = "FST"
    seed: int = 0  # of the training stream; evaluation draws from seed + EVAL_SEED_OFFSET
    examples_per_fst: int = 1  # consecutive strings of one FST
    num_eval_examples: int = 256  # 0: no evaluation
    # fst.SamplerConfig's fields, the original's values unless set
    sampler: dict = dataclasses.field(default_factory=lambda: dataclasses.asdict(SamplerConfig()))
    fst_tokenizer_path: str = ""  # "builtin", a file, or "" to look up FST_TOKENIZER_FILE
    exclude_fsts: str = ""  # JSONL files (comma-separated) of FSTs never to draw, e.g. few-shot tasks
    num_workers: int = 0  # processes generating examples


def pretraining_seeds(cfg) -> tuple[int, int]:
    """The FST seeds of the training and evaluation streams."""
    return cfg.seed, cfg.seed + EVAL_SEED_OFFSET


def sampler_config(cfg):
    """The fst.SamplerConfig of a pre-training config's `data` section."""
    return SamplerConfig(**cfg.sampler)


def pretraining_source(cfg, split: str):
    """The on-the-fly source of pre-training examples for `split`: the training stream from `cfg.seed`, and
    `cfg.num_eval_examples` examples of another seed's stream (FSTs training is unlikely to meet) for eval.
    FSTs in the JSONL files `cfg.exclude_fsts` (comma-separated; e.g. few-shot tasks) are never drawn."""
    from sip_jax.fst import FSTPretrainingSource, canonical_forms_of_files

    sampler = sampler_config(cfg)
    seed = pretraining_seeds(cfg)[split != "train"]
    exclude_paths = [path for path in cfg.exclude_fsts.split(",") if path]
    source = FSTPretrainingSource(seed=seed, sampler=sampler, examples_per_fst=cfg.examples_per_fst,
                                  exclude=canonical_forms_of_files(exclude_paths))
    return source if split == "train" else [source[i] for i in range(cfg.num_eval_examples)]


def pretraining_preprocessor(cfg, tokenizer, num_states: int, decoder_start_token_id: int = 0):
    """example {"FST", "input", "output"} -> the seq2seq arrays plus "fst_rep" [max_transitions, 5]."""
    from sip_jax.fst import FSTSeq2SeqPreprocessor

    fst_tokenizer = load_fst_tokenizer(cfg.fst_tokenizer_path)
    if decoder_start_token_id != 0:
        raise ValueError("the FST preprocessor starts decoder inputs with token 0 (T5's); "
                         f"got decoder_start_token_id={decoder_start_token_id}")
    return FSTSeq2SeqPreprocessor(tokenizer, fst_tokenizer, cfg.max_input_length, cfg.max_target_length,
                                  num_states=num_states, max_transitions=cfg.max_transitions,
                                  input_key=cfg.input_key, target_key=cfg.target_key, fst_key=cfg.fst_key,
                                  truncate=cfg.truncate)
