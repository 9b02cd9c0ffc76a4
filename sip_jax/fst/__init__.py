"""SIP's FST pre-training data: random deterministic FSTs, their strings, splits, and model encoding.

    from jaxport.data import ByteTokenizer
    from sip_jax.fst import *
    data = generate_dataset(seed=55, splits=SplitConfig(num_fsts=1000))  # the original's procedure
    data.write("data/pretrain")                        # {train,dev,test,easy_dev}_pretrain_s4.jsonl
    held_out = canonical_forms(data.examples["dev"] + data.examples["test"])
    source = FSTPretrainingSource(seed=0, exclude=held_out)             # infinite, random access
    example = source[12345]                            # {"FST": [...], "input": ..., "output": ..., "task_id": ...}
    simulate(example["FST"], example["input"], source.alphabet(12345))  # == example["output"]; None if rejected
    preprocess = FSTSeq2SeqPreprocessor(ByteTokenizer(), FSTTokenizer(path), 71, 106)  # + "fst_rep" (100, 5)

Command line: `python -m sip_jax.fst.generate --out DIR --num-fsts N --seed S` (see --help),
`python -m sip_jax.fst.fewshot --config CONFIG --out DIR` (few-shot tasks of unseen FSTs) and
`python -m sip_jax.fst.bench` (examples per second of the on-the-fly source on one core).

Why pynini. SIP's generator (sip/data_gen/gen_pretrain.py in namednil/sip) is written against
pynini/OpenFst, and three of its steps have behaviour that a re-implementation would have to copy
detail by detail to give the same data: OpenFst's transducer minimisation (outputs pushed towards
the start, then acceptor minimisation, then the original's rule of falling back to the unminimised
FST when that created epsilon inputs or changed a special arc), the random walk of `pynini.randgen`
over the FST composed with a bounded closure (the closure's epsilon arcs decide how likely each
length is), and easy-dev sampling from a `pynini.difference` machine. pynini 2.1.7 installs from
PyPI as a manylinux wheel for CPython 3.11 (about 165 MB, OpenFst included, no other dependency),
so this package uses it for exactly the operations the original uses it for, and draws its own
random numbers from a `random.Random` in the original's order. The result is checked, not assumed:
with the original's seed it writes byte-identical files to the original script (checked at 300,
3,000 and the full 50,000 FSTs; the 300-FST checksums are a test). Only generation imports pynini
(`machine`, used by `dataset` and `source` when they sample); the transition format, the
independent simulator, canonical forms and the tokenizer encoding are plain Python
(`transitions`, `encoding`), so checks and training-side code run without it.
"""
from sip_jax.fst.dataset import (
    SPLITS,
    FSTDataset,
    canonical_forms,
    canonical_forms_of_files,
    generate_dataset,
    read_jsonl,
    write_jsonl,
)
from sip_jax.fst.encoding import FSTSeq2SeqPreprocessor, FSTTokenizer, encode_transitions, pad_transitions
from sip_jax.fst.settings import NUM_STATES, VOCAB, SamplerConfig, SplitConfig
from sip_jax.fst.source import FSTPretrainingSource
from sip_jax.fst.transitions import Transition, canonical_form, check_transitions, final_states, graph_hash, simulate


def __getattr__(name):  # pynini is imported when generation first needs it, not with the package
    if name == "FSTTask":
        from sip_jax.fst.machine import FSTTask

        return FSTTask
    raise AttributeError(f"module 'sip_jax.fst' has no attribute {name!r}")


__all__ = ["NUM_STATES", "SPLITS", "VOCAB", "FSTDataset", "FSTPretrainingSource", "FSTSeq2SeqPreprocessor",
           "FSTTask", "FSTTokenizer", "SamplerConfig", "SplitConfig", "Transition", "canonical_form",
           "canonical_forms", "canonical_forms_of_files", "check_transitions", "encode_transitions", "final_states",
           "generate_dataset", "graph_hash", "pad_transitions", "read_jsonl", "simulate", "write_jsonl"]
