"""Writes SIP's FST pre-training files: `python -m sip_jax.fst.generate --out DIR --num-fsts N --seed S`.

Defaults are the original's (sip/data_gen/gen_pretrain.py in namednil/sip): 50,000 FSTs, seed 55,
2-4 states, alphabets of 5-25 letters, inputs of 1-35 letters, 5 pairs per FST; files
`{train,dev,test,easy_dev}_pretrain_s4.jsonl` in DIR.
"""
import argparse
import json
import time

from sip_jax.fst.dataset import SPLITS, default_name, generate_dataset
from sip_jax.fst.settings import SamplerConfig, SplitConfig


def _parser() -> argparse.ArgumentParser:
    sampler, splits = SamplerConfig(), SplitConfig()
    parser = argparse.ArgumentParser(prog="python -m sip_jax.fst.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-fsts", type=int, default=splits.num_fsts, help="distinct FSTs to collect")
    parser.add_argument("--seed", type=int, default=55)
    parser.add_argument("--name", default=None, help="file stem (default pretrain_s<max-states>)")
    parser.add_argument("--with-alphabet", action="store_true",
                        help="also write each FST's alphabet (field 'alphabet'; the original's loader ignores it)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    group = parser.add_argument_group("FST sampling")
    for name in ("min_states", "max_states", "min_vocab_size", "max_vocab_size", "min_input_length",
                 "max_input_length"):
        group.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(sampler, name))
    for name in ("p_special", "p_drop_letter", "id_prob"):
        group.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(sampler, name))
    group.add_argument("--allow-acyclic", action="store_true", help="keep FSTs without cycles too")
    group = parser.add_argument_group("splits")
    for name in ("attempts_per_fst", "examples_per_fst", "max_dev_fsts", "max_test_fsts", "max_easy_dev_fsts"):
        group.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(splits, name))
    for name in ("train_fraction", "dev_fraction", "test_fraction"):
        group.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(splits, name))
    return parser


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    try:
        sampler = SamplerConfig(min_states=args.min_states, max_states=args.max_states,
                                min_vocab_size=args.min_vocab_size, max_vocab_size=args.max_vocab_size,
                                min_input_length=args.min_input_length, max_input_length=args.max_input_length,
                                p_special=args.p_special, p_drop_letter=args.p_drop_letter, id_prob=args.id_prob,
                                require_cycle=not args.allow_acyclic)
        splits = SplitConfig(num_fsts=args.num_fsts, attempts_per_fst=args.attempts_per_fst,
                             examples_per_fst=args.examples_per_fst, train_fraction=args.train_fraction,
                             dev_fraction=args.dev_fraction, test_fraction=args.test_fraction,
                             max_dev_fsts=args.max_dev_fsts, max_test_fsts=args.max_test_fsts,
                             max_easy_dev_fsts=args.max_easy_dev_fsts)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    start = time.perf_counter()
    dataset = generate_dataset(args.seed, sampler, splits, progress=not args.quiet)
    paths = dataset.write(args.out, args.name or default_name(sampler), with_alphabet=args.with_alphabet)
    summary = {
        "seed": args.seed, "candidates_drawn": dataset.candidates_drawn,
        "seconds": round(time.perf_counter() - start, 1),
        "files": {split: {"path": paths[split], "examples": len(dataset.examples[split]),
                          "fsts": len({e["task_id"] for e in dataset.examples[split]})} for split in SPLITS},
    }
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
