"""Write a fine-tuned SIP model's predictions for the test TSV, with their scores.

    python -m sip_jax.predict --config configs/sip_finetune.py --workdir runs/sip_ft [--config.KEY=VALUE ...]
    python -m sip_jax.predict --config configs/sip_finetune.py --model runs/sip_ft/export --out preds.tsv

The model comes from the last checkpoint in WORKDIR/checkpoints (the same config as the training run), or from a
saved folder with --model. Test examples: data.test_path (or, with data.num_train > 0, the rows of the training
TSV that training did not use). Predictions go to --out, else data.predictions_path, else WORKDIR/predictions.tsv;
the scores (exact-match accuracy, edit distance, edit distance per gold character) to test_metrics.json beside.
"""
import argparse
import json
import sys
from pathlib import Path

from jaxport import config as config_lib


def main(argv=None) -> dict:
    overrides, rest = config_lib.split_config_args(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m sip_jax.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", help="training workdir: its last checkpoint is the model")
    parser.add_argument("--model", help="a saved model folder (save_pretrained / train.export_dir) instead")
    parser.add_argument("--out", help="predictions file (TSV)")
    args = parser.parse_args(rest)
    if not (args.workdir or args.model):
        parser.error("give --workdir (checkpoint) or --model (folder)")
    config = config_lib.load_config(args.config, overrides)
    if config.family != "sip_finetune":
        parser.error(f"predictions are for sip_finetune configs, not {config.family!r}")
    from sip_jax.modeling import SIPFinetuningModel
    from sip_jax.tasks import finetuning_source, get_task, predict_tsv

    task = get_task(config)
    if args.model:
        model = SIPFinetuningModel.from_pretrained(args.model)
    else:
        from jaxport.trainer import model_from_checkpoint
        model, _ = model_from_checkpoint(config, task, args.workdir)
    source = finetuning_source(config.data, "test")
    if source is None:
        parser.error("no test data: set --config.data.test_path (or data.num_train with the training TSV)")
    out = args.out or config.data.predictions_path or str(Path(args.workdir or args.model) / "predictions.tsv")
    metrics = predict_tsv(task, model, config, source, out)
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main()
