"""python -m train --config configs/NAME.py[:ARG] --workdir DIR [--config.KEY=VALUE ...] [--num-processes N]

Rerunning the same command resumes from the last complete checkpoint in DIR. One process uses every local device;
--num-processes N starts one process per GPU instead (jaxport.launch).
"""
import argparse
import logging
import sys

from jaxport import config as config_lib
from jaxport import launch, registry, runtime, sharding, trainer


def main(argv=None) -> dict:
    overrides, rest = config_lib.split_config_args(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file, optionally with :ARG for get_config")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl and TensorBoard logs")
    parser.add_argument("--num-processes", type=int, default=1, help="one process per GPU: processes to start")
    args = parser.parse_args(rest)
    if args.num_processes < 1:
        parser.error(f"--num-processes {args.num_processes}: at least 1")
    # Our progress messages at INFO; the libraries' (orbax, absl) only from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", force=True)
    logging.getLogger("jaxport").setLevel(logging.INFO)
    try:
        config = config_lib.load_config(args.config, overrides)
    except config_lib.ConfigError as e:
        parser.error(str(e))
    if args.num_processes > 1:  # this process only launches, and ends with the run's exit status
        sys.exit(launch.launch([sys.executable, "-m", "train", "--config", args.config, "--workdir", args.workdir,
                                *(f"--config.{override}" for override in overrides)], args.num_processes))
    runtime.configure()
    sharding.maybe_initialize_distributed()
    with runtime.matmul_precision(config.train.matmul_precision):
        return trainer.train(config, args.workdir, registry.task(config.family, config))


if __name__ == "__main__":
    main()
