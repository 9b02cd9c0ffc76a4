"""Convert checkpoints between PyTorch (Hugging Face) folders and this project's Flax folders.

    python -m convert t5 t5-small runs/t5-small-flax               # hub id or HF folder -> Flax folder
    python -m convert t5 runs/t5-small-flax runs/t5-pt --to-pytorch  # Flax folder -> PyTorch-named safetensors
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import jax.numpy as jnp  # after argument parsing, so --help stays fast

    dtype = jnp.dtype(args.dtype)
    model = registry.model_class(args.family).from_pretrained(args.src, dtype=dtype, param_dtype=dtype)
    model.save_pretrained(args.dst, pytorch=args.to_pytorch, max_shard_size=args.max_shard_size)
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
