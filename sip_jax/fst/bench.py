"""Examples per second of the on-the-fly source on one core: `python -m sip_jax.fst.bench`.

Times `FSTPretrainingSource[i]` alone and followed by the model preprocessing (ByT5 bytes plus the
FST tokenizer), and says how many such workers keep up with a training step of `--step-ms`
milliseconds on batches of `--batch-size`.
"""
import argparse
import json
import math
import os
import time

from sip_jax.fst.source import FSTPretrainingSource


def measure(num_examples: int = 2000, seed: int = 0, examples_per_fst: int = 1, tokenizer_path: str | None = None,
            step_ms: float = 70.0, batch_size: int = 32) -> dict:
    source = FSTPretrainingSource(seed, examples_per_fst=examples_per_fst)
    source[0]  # builds the cached length filter
    start = time.perf_counter()
    examples = [source[i] for i in range(1, num_examples + 1)]
    raw = num_examples / (time.perf_counter() - start)
    result = {"examples_per_fst": examples_per_fst, "examples": num_examples, "source_examples_per_s": round(raw)}
    rate = raw
    if tokenizer_path:
        from jaxport.data.tokenizers import ByteTokenizer
        from sip_jax.fst.encoding import FSTSeq2SeqPreprocessor, FSTTokenizer

        preprocess = FSTSeq2SeqPreprocessor(ByteTokenizer(), FSTTokenizer(tokenizer_path), max_input_length=80,
                                            max_target_length=80)
        start = time.perf_counter()
        for example in examples:
            preprocess(example)
        preprocess_s = (time.perf_counter() - start) / num_examples
        rate = 1.0 / (1.0 / raw + preprocess_s)
        result["with_preprocessing_examples_per_s"] = round(rate)
    needed = batch_size / (step_ms / 1000.0)
    result.update({"needed_examples_per_s": round(needed), "step_ms": step_ms, "batch_size": batch_size,
                   "workers_to_keep_up": math.ceil(needed / rate)})
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sip_jax.fst.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--num-examples", type=int, default=2000)
    parser.add_argument("--examples-per-fst", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--tokenizer", default=os.environ.get("SIP_FST_TOKENIZER"),
                        help="FST tokenizer json, to time the preprocessing too")
    parser.add_argument("--step-ms", type=float, default=70.0)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    for per_fst in args.examples_per_fst:
        print(json.dumps(measure(args.num_examples, examples_per_fst=per_fst, tokenizer_path=args.tokenizer,
                                 step_ms=args.step_ms, batch_size=args.batch_size)))


if __name__ == "__main__":
    main()
