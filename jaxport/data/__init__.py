"""Shared data pipeline: source -> preprocess_fn (one example to fixed-shape arrays) -> batches.

    source = SyntheticTask("reverse", seed=0)            # or TsvSource, JsonlSource, TfdsSource, a list
    preprocess = Seq2SeqPreprocessor(ByteTokenizer(), max_input_length=32, max_target_length=32)
    iterator = make_iterator(source, preprocess, batch_size=64, seed=0)
    batch = next(iterator)                                # dict of numpy arrays, host-local rows
    state = iterator.get_state()                          # JSON-serializable; set_state(state) resumes
"""
from jaxport.data.iterator import EXAMPLE_MASK, BatchIterator, make_eval_iterator, make_iterator
from jaxport.data.seq2seq import Seq2SeqPreprocessor
from jaxport.data.sources import JsonlSource, TextLineSource, TfdsSource, TsvSource
from jaxport.data.synthetic import TASKS, SyntheticTask
from jaxport.data.tokenizers import ByteTokenizer, HuggingFaceTokenizer

__all__ = [
    "EXAMPLE_MASK", "TASKS", "BatchIterator", "ByteTokenizer", "HuggingFaceTokenizer", "JsonlSource",
    "Seq2SeqPreprocessor", "SyntheticTask", "TextLineSource", "TfdsSource", "TsvSource",
    "make_eval_iterator", "make_iterator",
]
