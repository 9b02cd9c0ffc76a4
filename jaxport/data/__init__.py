"""Shared data pipeline: source -> preprocess_fn (one example to fixed-shape arrays) -> batches.

    source = SyntheticTask("reverse", seed=0)            # or TsvSource, JsonlSource, TfdsSource, a list
    preprocess = Seq2SeqPreprocessor(ByteTokenizer(), max_input_length=32, max_target_length=32)
    iterator = make_iterator(source, preprocess, batch_size=64, seed=0)
    batch = next(iterator)                                # dict of numpy arrays, host-local rows
    state = iterator.get_state()                          # JSON-serializable; set_state(state) resumes

Language-model corpora (jaxport.data.corpus): documents -> one token stream (cached on disk) -> TokenWindows.

A config's `data` section is typed by its source (jaxport.data.sections): `make_source(config.data, "train")`.
"""
from jaxport.data.corpus import TokenWindows, next_token_example, token_stream
from jaxport.data.iterator import EXAMPLE_MASK, BatchIterator, make_eval_iterator, make_iterator
from jaxport.data.sections import (
    JsonlData,
    LanguageModelData,
    LanguageModelJsonlData,
    LanguageModelTextData,
    LanguageModelTfdsData,
    Seq2SeqData,
    SyntheticData,
    TfdsData,
    TsvData,
    data_section,
    data_source,
    make_source,
)
from jaxport.data.seq2seq import Seq2SeqPreprocessor
from jaxport.data.sources import (
    Concatenation,
    JsonlSource,
    Subset,
    TextLineSource,
    TfdsSource,
    TsvSource,
    first,
)
from jaxport.data.synthetic import TASKS, SyntheticTask
from jaxport.data.tokenizers import ByteTokenizer, HuggingFaceTokenizer, load_tokenizer

__all__ = [
    "EXAMPLE_MASK", "TASKS", "BatchIterator", "ByteTokenizer", "Concatenation", "HuggingFaceTokenizer", "JsonlData",
    "JsonlSource", "LanguageModelData", "LanguageModelJsonlData", "LanguageModelTextData", "LanguageModelTfdsData",
    "Seq2SeqData", "Seq2SeqPreprocessor", "Subset", "SyntheticData", "SyntheticTask", "TextLineSource", "TfdsData",
    "TfdsSource", "TokenWindows", "TsvData", "TsvSource", "data_section", "data_source", "first", "load_tokenizer",
    "make_eval_iterator", "make_iterator", "make_source", "next_token_example", "token_stream",
]
