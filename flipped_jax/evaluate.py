"""Zero-shot evaluation of a FLIPPED model: accuracy per dataset by option scoring.

    python -m flipped_jax.evaluate --model FOLDER --data FILE

FILE holds JSONL rows {input, label, options, instruction[, dataset]} (flipped_jax.data; `instruction` may be a
list, one per option); rows without `dataset` count under the file's name. With --templates DIR, --data names
Hugging Face datasets instead (comma-separated, e.g. super_glue/rte,super_glue/cb; the card's evaluation tasks are
EVAL_DATASETS), rendered with every classification template of DIR/NAME/templates.yaml (promptsource's format),
whose accuracies are averaged per dataset, as the paper reports them. The tokenizer is the model folder's unless
--tokenizer names one.
"""
import argparse
import collections
import json
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from flipped_jax import data as flipped_data
from flipped_jax.modeling import FlippedModel
from flipped_jax.scoring import masked_predictions, option_log_likelihoods
from flipped_jax.templates import load_templates
from jaxport import data
from jaxport.tasks import make_tokenizer

# The card's held-out tasks (Hugging Face names, as the original reads them) and the split it scores: ANLI's
# rounds are splits of `anli`; Story Cloze needs its files by hand (the original's data_dir).
EVAL_DATASETS = {
    "super_glue/rte": "validation", "super_glue/cb": "validation", "anli/r1": "dev_r1", "anli/r2": "dev_r2",
    "anli/r3": "dev_r3", "super_glue/copa": "validation", "hellaswag": "validation",
    "story_cloze/2016": "validation", "winogrande/winogrande_xl": "validation", "super_glue/wsc.fixed": "validation",
    "super_glue/wic": "validation",
}


def jsonl_rows(path: str) -> list[dict]:
    return [row for rows in flipped_data.jsonl_datasets(path, Path(path).stem).values() for row in rows]


def templated_rows(name: str, templates_dir: str) -> list[dict]:
    """Every example of the dataset's evaluation split under every classification template, the template's name in
    `dataset` (NAME/TEMPLATE)."""
    split = EVAL_DATASETS.get(name, "validation")
    hf_name = "anli" if name.startswith("anli/") else name
    examples = flipped_data.hf_examples(hf_name, split)
    rows = []
    for template in load_templates(Path(templates_dir) / hf_name):
        rows += [{**template.flipped(example), "dataset": f"{name}/{template.name}",
                  "where": f"{name} {split} example {i} with template {template.name!r}"}
                 for i, example in enumerate(examples)]
    return rows


def accuracies(model, rows: list[dict], tokenizer, *, max_input_length: int, max_target_length: int,
               batch_size: int = 32, truncate: bool = False) -> dict[str, float]:
    """Accuracy of `rows` (FLIPPED's form) per value of their `dataset` field, in order of first appearance."""
    names = tuple(dict.fromkeys(row.get(flipped_data.DATASET_FIELD, "") for row in rows))
    num_options = max(len(row["options"]) for row in rows)
    encoder = flipped_data.Encoder(tokenizer, max_input_length, max_target_length, truncate)
    batches = data.make_eval_iterator(rows, flipped_data.OptionsPreprocessor(encoder, num_options, names),
                                      batch_size=batch_size, process_index=0, process_count=1)
    graphdef, state = nnx.split(model)

    @jax.jit
    def predict(state, batch):
        model = nnx.merge(graphdef, state)
        scores = option_log_likelihoods(model, batch["input_ids"], batch["attention_mask"], batch["instruction_ids"],
                                        batch["instruction_mask"])
        return masked_predictions(scores, batch["option_mask"])[1]

    correct, total = collections.Counter(), collections.Counter()
    for batch in batches:
        real = batch.pop(data.EXAMPLE_MASK)
        hits = np.asarray(predict(state, batch)) == batch["label"]
        for dataset, hit in zip(batch["dataset"][real], hits[real], strict=True):
            correct[names[dataset]] += int(hit)
            total[names[dataset]] += 1
    return {name: correct[name] / total[name] for name in names}


def mean_over_templates(scores: dict[str, float]) -> dict[str, float]:
    """{NAME/TEMPLATE: accuracy} -> {NAME: mean over its templates}."""
    groups = collections.defaultdict(list)
    for key, value in scores.items():
        groups[key.rsplit("/", 1)[0]].append(value)
    return {name: float(np.mean(values)) for name, values in groups.items()}


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a FLIPPED (T5) folder or hub id")
    parser.add_argument("--data", required=True, help="JSONL file, or with --templates dataset names")
    parser.add_argument("--templates", default="", help="promptsource's templates folder")
    parser.add_argument("--tokenizer", default="", help="default: the model folder's")
    parser.add_argument("--max-input-length", type=int, default=512)
    parser.add_argument("--max-target-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--truncate", action="store_true", help="cut texts past the limits instead of failing")
    parser.add_argument("--output", default="", help="write the accuracies there as JSON")
    args = parser.parse_args(argv)
    model = FlippedModel.from_pretrained(args.model)
    tokenizer = make_tokenizer(args.tokenizer or args.model)
    if args.templates:
        rows = [row for name in args.data.split(",") for row in templated_rows(name, args.templates)]
    else:
        rows = jsonl_rows(args.data)
    scores = accuracies(model, rows, tokenizer, max_input_length=args.max_input_length,
                        max_target_length=args.max_target_length, batch_size=args.batch_size, truncate=args.truncate)
    if args.templates:
        scores = mean_over_templates(scores)
    for name, value in scores.items():
        print(f"{name}\t{value:.4f}")
    if args.output:
        Path(args.output).write_text(json.dumps(scores, indent=2) + "\n")
    return scores


if __name__ == "__main__":
    main(sys.argv[1:])
