"""Convert checkpoints between PyTorch (Hugging Face) folders and this project's Flax folders.

    python -m convert t5 t5-small runs/t5-small-flax               # hub id or HF folder -> Flax folder
    python -m convert t5 runs/t5-small-flax runs/t5-pt --to-pytorch  # Flax folder -> PyTorch-named safetensors
    python -m convert lsg facebook/bart-base runs/lsg-bart --from-bart --max-length 16384   # BART -> LSG-BART
    python -m convert lsg runs/lsg-bart runs/lsg-bart-32k --resize --max-length 32768       # LSG-BART, longer
    python -m convert sip_finetune namednil/sip-d4-pt runs/sip-ft --from-pretraining  # SIP pre-training -> fine-tuning

A family's own options (below the common ones) and the conversions they select come from its convert module,
found through jaxport/registry.py.
"""
import argparse
import sys

from jaxport import registry

DTYPES = ("float32", "bfloat16")
UNSET = object()  # stands for a family option that the command line did not give


def family_option_parsers() -> list[tuple[argparse.ArgumentParser, tuple[str, ...]]]:
    """A parser holding only the argument group that a module of family hooks adds, for each such module, with
    the families those options belong to."""
    parsers = []
    for hooks, families in registry.convert_clis():
        options = argparse.ArgumentParser(add_help=False)
        hooks.add_convert_options(options)
        parsers.append((options, families))
    return parsers


def build_parser(family_parsers: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m convert", usage="%(prog)s FAMILY SRC DST [options]",
                                     description=__doc__, parents=family_parsers,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=sorted(registry.FAMILIES))
    parser.add_argument("src", help="model folder (PyTorch or Flax weights) or hub repo id")
    parser.add_argument("dst", help="folder to write")
    parser.add_argument("--to-pytorch", action="store_true",
                        help="write model.safetensors with PyTorch key names instead of Flax weights")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written weights")
    parser.add_argument("--max-shard-size", default=None, help="shard the weights, e.g. 5GB (default: one file)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    family_parsers = family_option_parsers()
    parser = build_parser([options for options, _ in family_parsers])
    defaults = [(vars(options.parse_args([])), families) for options, families in family_parsers]
    # Family options start UNSET, so that one given with its default value still counts as given.
    args = parser.parse_args(argv, argparse.Namespace(**{dest: UNSET for d, _ in defaults for dest in d}))
    misplaced = []
    for option_defaults, families in defaults:
        for dest, default in option_defaults.items():
            if getattr(args, dest) is UNSET:
                setattr(args, dest, default)
            elif args.family not in families:
                misplaced.append(f"--{dest.replace('_', '-')} ({' / '.join(families)})")
    if misplaced:
        parser.error(f"not options of the {args.family} family: {', '.join(misplaced)}")
    hooks = registry.convert_cli(args.family)
    if hooks is not None and hasattr(hooks, "check_convert_options"):
        try:
            hooks.check_convert_options(args)
        except ValueError as e:
            parser.error(str(e))
    return args


def convert_plain(args: argparse.Namespace) -> None:
    """The family's model class converts SRC into DST (jaxport.hf.PretrainedModel.convert: a tensor at a time)."""
    import jax.numpy as jnp  # here, not at the top: --help and argument errors answer without loading JAX

    registry.model_class(args.family).convert(args.src, args.dst, dtype=jnp.dtype(args.dtype), pytorch=args.to_pytorch,
                                              max_shard_size=args.max_shard_size)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from jaxport import runtime  # loads JAX: after the arguments are checked

    runtime.configure()
    hooks = registry.convert_cli(args.family)
    if hooks is None or not hooks.run_convert_mode(args):
        convert_plain(args)
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
