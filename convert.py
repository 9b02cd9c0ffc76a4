"""Convert checkpoints between PyTorch (Hugging Face) folders and this project's Flax folders.

    python -m convert t5 t5-small runs/t5-small-flax               # hub id or HF folder -> Flax folder
    python -m convert t5 runs/t5-small-flax runs/t5-pt --to-pytorch  # Flax folder -> PyTorch-named safetensors
    python -m convert lsg facebook/bart-base runs/lsg-bart --from-bart --max-length 16384   # BART -> LSG-BART
    python -m convert lsg runs/lsg-bart runs/lsg-bart-32k --resize --max-length 32768       # LSG-BART, longer
    python -m convert sip_finetune namednil/sip-d4-pt runs/sip-ft --from-pretraining  # SIP pre-training -> fine-tuning
"""
import argparse
import sys

from jaxport import registry

DTYPES = ("float32", "bfloat16")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=sorted(registry.FAMILIES))
    parser.add_argument("src", help="model folder (PyTorch or Flax weights) or hub repo id")
    parser.add_argument("dst", help="folder to write")
    parser.add_argument("--to-pytorch", action="store_true",
                        help="write model.safetensors with PyTorch key names instead of Flax weights")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written weights")
    parser.add_argument("--max-shard-size", default=None, help="shard the weights, e.g. 5GB (default: one file)")
    lsg = parser.add_argument_group(
        "lsg --from-bart / --resize: a plain BART checkpoint -> LSG-BART for longer inputs, or an LSG-BART one to "
        "another --max-length (the LSG fields default to the original converter's, or to the source's for an "
        "LSG-BART folder)")
    lsg.add_argument("--from-bart", action="store_true")
    lsg.add_argument("--max-length", type=int, default=4096)
    lsg.add_argument("--block-size", type=int, default=None, help="default 128")
    lsg.add_argument("--sparse-block-size", type=int, default=None, help="default 128")
    lsg.add_argument("--sparsity-factor", type=int, default=None, help="default 2")
    lsg.add_argument("--sparsity-type", default=None, help="default norm")
    lsg.add_argument("--num-global-tokens", type=int, default=None, help="default 1")
    lsg.add_argument("--global-positional-stride", type=int, default=64)
    lsg.add_argument("--mask-token-id", type=int, default=None)
    lsg.add_argument("--random-global-init", action="store_true",
                     help="global embeddings (but the first) drawn from a normal fitted to the token embeddings, "
                          "instead of the mask token's")
    lsg.add_argument("--keep-first-global-token", action="store_true",
                     help="SRC is LSG-BART: rebuild its global embeddings except the first, which is kept")
    lsg.add_argument("--resize", action="store_true",
                     help="SRC is LSG-BART: only extend or cut its position tables to --max-length")
    lsg.add_argument("--seed", type=int, default=123, help="seed of the random draws")
    sip = parser.add_argument_group("sip_finetune --from-pretraining: a sip_pretrain folder -> a sip_finetune one, "
                                    "its prefix initialised from the FST encoder's encodings of random FSTs")
    sip.add_argument("--from-pretraining", action="store_true")
    sip.add_argument("--num-precomputed-examples", type=int, default=400)
    sip.add_argument("--prefix-max-init-length", type=int, default=70)
    sip.add_argument("--num-examples", type=int, default=32)
    sip.add_argument("--prefix-length", type=int, default=50)
    sip.add_argument("--no-random-selection", action="store_true")
    sip.add_argument("--fst-seed", type=int, default=0, help="seed of the random FSTs that are encoded")
    sip.add_argument("--fst-tokenizer", default=None,
                     help="unicode_char_tokenizer_ipa.json (default: looked up), or 'builtin'")
    sip.add_argument("--fst-config", default=None,
                     help="draw the FSTs as this pre-training config does (its data.sampler and FST tokenizer), "
                          "e.g. configs/sip_pretrain.py:small; default: the original's sampler")
    args = parser.parse_args(argv)
    if (args.from_bart or args.resize) and args.family != "lsg":
        parser.error("--from-bart and --resize convert to the lsg family")
    if (args.random_global_init or args.keep_first_global_token) and not args.from_bart:
        parser.error("--random-global-init and --keep-first-global-token go with --from-bart")
    if args.from_pretraining and args.family != "sip_finetune":
        parser.error("--from-pretraining converts to the sip_finetune family")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import jax.numpy as jnp  # after argument parsing, so --help stays fast

    from jaxport import runtime
    runtime.configure()

    if args.from_bart or args.resize:
        from lsg_jax.convert import bart_to_lsg
        bart_to_lsg(args.src, args.dst, max_length=args.max_length, block_size=args.block_size,
                    sparse_block_size=args.sparse_block_size, sparsity_factor=args.sparsity_factor,
                    sparsity_type=args.sparsity_type, num_global_tokens=args.num_global_tokens,
                    global_positional_stride=args.global_positional_stride, mask_token_id=args.mask_token_id,
                    random_global_init=args.random_global_init, keep_first_global_token=args.keep_first_global_token,
                    resize=args.resize, seed=args.seed)
        print(f"wrote {args.dst}")
        return 0
    dtype = jnp.dtype(args.dtype)
    if args.from_pretraining:
        from sip_jax.convert import convert_pretraining_folder
        sampler, fst_tokenizer = None, args.fst_tokenizer
        if args.fst_config:
            from jaxport.config import load_config
            from sip_jax.fst_data import sampler_config
            data = load_config(args.fst_config).data
            sampler = sampler_config(data)
            fst_tokenizer = fst_tokenizer or data.fst_tokenizer_path
        convert_pretraining_folder(
            args.src, args.dst, pytorch=args.to_pytorch, dtype=dtype, max_shard_size=args.max_shard_size,
            num_precomputed_examples=args.num_precomputed_examples, prefix_max_init_length=args.prefix_max_init_length,
            num_examples=args.num_examples, prefix_length=args.prefix_length,
            random_selection=not args.no_random_selection, seed=args.fst_seed, fst_tokenizer_path=fst_tokenizer,
            sampler=sampler)
        print(f"wrote {args.dst}")
        return 0
    # A sip_finetune checkpoint keeps its NaN (not yet initialised) prefix: the loader initialises it on use.
    keep_prefix = {"initialize_prefix": False} if args.family == "sip_finetune" else {}
    model = registry.model_class(args.family).from_pretrained(args.src, dtype=dtype, param_dtype=dtype, **keep_prefix)
    model.save_pretrained(args.dst, pytorch=args.to_pytorch, max_shard_size=args.max_shard_size)
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
