"""`python -m convert sip_finetune` options and modes (hooks found through jaxport/registry.py). Light: building
the command line imports no JAX."""
import argparse


def add_convert_options(parser: argparse.ArgumentParser) -> None:
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


def run_convert_mode(args: argparse.Namespace) -> bool:
    """--from-pretraining: convert_pretraining_folder; without it, False (a plain conversion)."""
    if not args.from_pretraining:
        return False
    # Here, not at the top: the options alone must not load JAX and the models.
    import jax.numpy as jnp

    from jaxport.config import load_config
    from sip_jax.convert import convert_pretraining_folder
    from sip_jax.fst_data import sampler_config

    sampler, fst_tokenizer = None, args.fst_tokenizer
    if args.fst_config:
        data = load_config(args.fst_config).data
        sampler = sampler_config(data)
        fst_tokenizer = fst_tokenizer or data.fst_tokenizer_path
    convert_pretraining_folder(
        args.src, args.dst, pytorch=args.to_pytorch, dtype=jnp.dtype(args.dtype), max_shard_size=args.max_shard_size,
        num_precomputed_examples=args.num_precomputed_examples, prefix_max_init_length=args.prefix_max_init_length,
        num_examples=args.num_examples, prefix_length=args.prefix_length,
        random_selection=not args.no_random_selection, seed=args.fst_seed, fst_tokenizer_path=fst_tokenizer,
        sampler=sampler)
    return True
