"""`python -m convert lsg` options and modes (hooks found through jaxport/registry.py). Light: building the
command line imports no JAX."""
import argparse


def add_convert_options(parser: argparse.ArgumentParser) -> None:
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


def check_convert_options(args: argparse.Namespace) -> None:
    if (args.random_global_init or args.keep_first_global_token) and not args.from_bart:
        raise ValueError("--random-global-init and --keep-first-global-token go with --from-bart")


def run_convert_mode(args: argparse.Namespace) -> bool:
    """--from-bart or --resize: bart_to_lsg; without them, False (a plain conversion)."""
    if not (args.from_bart or args.resize):
        return False
    from lsg_jax.convert import bart_to_lsg  # here, not at the top: the options alone must not load the converter

    bart_to_lsg(args.src, args.dst, max_length=args.max_length, block_size=args.block_size,
                sparse_block_size=args.sparse_block_size, sparsity_factor=args.sparsity_factor,
                sparsity_type=args.sparsity_type, num_global_tokens=args.num_global_tokens,
                global_positional_stride=args.global_positional_stride, mask_token_id=args.mask_token_id,
                random_global_init=args.random_global_init, keep_first_global_token=args.keep_first_global_token,
                resize=args.resize, seed=args.seed)
    return True
