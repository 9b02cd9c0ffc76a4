"""FLIPPED's examples and how they become arrays (the original's T0/Datasets_end2end.py, `channel` and `ul_loss`).

An example, as FLIPPED reads it, is {input, label, options, instruction}: the template's rendered input with T5
sentinels where its literal chunks were, the gold label, the label options, and the instruction (the chunks after
their sentinels; flipped_jax.templates). Each option becomes one encoder input, `flipped_input(input, option)`:

    input: {input}\\n output: {option}

and the decoder's target is the instruction, with </s>.

Training (`TrainPreprocessor`): per example the gold label's input and one wrong label's, the wrong label drawn
uniformly among the other options (the original's `random.choice` over the other indices), anew each time the
example is drawn. Evaluation (`OptionsPreprocessor`): every option's input, K slots, the empty ones masked.

Sources: `Mixture` samples training examples from several datasets in proportion to their sizes, each capped (the
original keeps 500,000 examples of a larger dataset, shuffled with seed 42), a random template per draw;
`jsonl_datasets` reads files of {input, label, options, instruction[, dataset]} rows; `hf_examples` reads a
Hugging Face `datasets` split, when that package is installed.
"""
import collections
import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxport.data import JsonlSource
from jaxport.seq2seq import shift_right

FIELDS = ("input", "label", "options", "instruction")
DATASET_FIELD = "dataset"  # optional in JSONL rows: the dataset an example belongs to (its accuracy's name)
CAP_SHUFFLE_SEED = 42  # the original shuffles a dataset with this seed before keeping its first `cap` examples


def flipped_input(input_text: str, label: str) -> str:
    """The encoder's text for one label option, as the original writes it."""
    return f"input: {input_text}\n output: {label}"


def gold_index(example: dict) -> int:
    """The index of the example's label among its options, or a ValueError naming the example."""
    options = example["options"]
    if not isinstance(options, list) or len(options) < 2:
        raise ValueError(f"{example.get('where', 'an example')}: needs a list of at least 2 options, got {options!r}")
    if example["label"] not in options:
        raise ValueError(f"{example.get('where', 'an example')}: label {example['label']!r} is not one of its "
                         f"options {options}")
    return options.index(example["label"])


def wrong_index(num_options: int, gold: int, rng: np.random.Generator) -> int:
    """A wrong option, uniformly among the others."""
    return int(rng.choice([i for i in range(num_options) if i != gold]))


@dataclasses.dataclass(frozen=True)
class Encoder:
    """Texts to fixed-length int32 ids (with the tokenizer's </s>) and their masks. A text longer than its limit is
    an error naming the example, unless `truncate`."""

    tokenizer: object
    max_input_length: int
    max_target_length: int
    truncate: bool = False

    def encode(self, text: str, max_length: int, what: str, example: dict) -> tuple[np.ndarray, np.ndarray]:
        ids = self.tokenizer.encode(text, max_length if self.truncate else None)
        if len(ids) > max_length:
            raise ValueError(f"{example.get('where', 'an example')}: its {what} is {len(ids)} tokens long, more than "
                             f"the limit of {max_length} (raise the limit or set truncate)")
        padded = np.full(max_length, self.tokenizer.pad_id, np.int32)
        padded[:len(ids)] = ids
        return padded, (np.arange(max_length) < len(ids)).astype(np.int32)

    def inputs(self, example: dict, options: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """input_ids and attention_mask [len(options), max_input_length]."""
        encoded = [self.encode(flipped_input(example["input"], option), self.max_input_length, "input", example)
                   for option in options]
        return np.stack([ids for ids, _ in encoded]), np.stack([mask for _, mask in encoded])

    def instruction(self, example: dict, text: str) -> tuple[np.ndarray, np.ndarray]:
        return self.encode(text, self.max_target_length, "instruction", example)


@dataclasses.dataclass(frozen=True)
class TrainPreprocessor:
    """example (with `draw`, an int fixing its wrong label) -> input_ids, attention_mask [2, L] (gold label's input,
    then the wrong label's), labels (the instruction), decoder_input_ids, decoder_attention_mask [T]."""

    encoder: Encoder
    decoder_start_token_id: int = 0
    seed: int = 0

    def __call__(self, example: dict) -> dict[str, np.ndarray]:
        gold = gold_index(example)
        wrong = wrong_index(len(example["options"]), gold, np.random.default_rng([self.seed, example["draw"]]))
        input_ids, attention_mask = self.encoder.inputs(example, [example["options"][gold],
                                                                  example["options"][wrong]])
        labels, label_mask = self.encoder.instruction(example, example["instruction"])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "decoder_input_ids": shift_right(labels, self.decoder_start_token_id, self.encoder.tokenizer.pad_id),
                "decoder_attention_mask": label_mask}


@dataclasses.dataclass(frozen=True)
class OptionsPreprocessor:
    """example -> input_ids, attention_mask [K, L], instruction_ids, instruction_mask [K, T] (the instruction, or
    the example's list of one instruction per option), option_mask [K], label (gold index), dataset (index in
    `datasets`). Options past the example's are empty slots."""

    encoder: Encoder
    num_options: int
    datasets: tuple[str, ...] = ()

    def __call__(self, example: dict) -> dict[str, np.ndarray]:
        gold, options = gold_index(example), example["options"]
        if len(options) > self.num_options:
            raise ValueError(f"{example.get('where', 'an example')}: {len(options)} options, more than the "
                             f"{self.num_options} slots")
        instructions = example["instruction"]
        instructions = [instructions] * len(options) if isinstance(instructions, str) else instructions
        if len(instructions) != len(options):
            raise ValueError(f"{example.get('where', 'an example')}: {len(instructions)} instructions for "
                             f"{len(options)} options")
        slots = np.arange(self.num_options) < len(options)
        padded = [options[i] if slot else "" for i, slot in enumerate(slots)]
        input_ids, attention_mask = self.encoder.inputs(example, padded)
        encoded = [self.encoder.instruction(example, instructions[min(i, len(options) - 1)])
                   for i in range(self.num_options)]
        input_ids[~slots], attention_mask[~slots] = self.encoder.tokenizer.pad_id, 0
        dataset = example.get(DATASET_FIELD, "")
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "instruction_ids": np.stack([ids for ids, _ in encoded]),
                "instruction_mask": np.stack([mask for _, mask in encoded]), "option_mask": slots.astype(np.int32),
                "label": np.int32(gold), "dataset": np.int32(self.datasets.index(dataset) if dataset in
                                                             self.datasets else 0)}


# ---------------------------------------------------------------------------------------------------------------
# Sources


class JsonlExamples:
    """A JSONL file of {input, label, options, instruction[, dataset]} rows; `where` names file and line."""

    def __init__(self, path: str):
        self.source = JsonlSource(path, fields=FIELDS, optional_fields=(DATASET_FIELD,))

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        return {**self.source[index], "where": self.source.where(index)}


def jsonl_datasets(path: str, default_name: str) -> dict[str, list[dict]]:
    """The rows of a JSONL file grouped by their `dataset` field (default_name where it is missing), in file order."""
    groups = collections.defaultdict(list)
    examples = JsonlExamples(path)
    for index in range(len(examples)):
        example = examples[index]
        groups[example.get(DATASET_FIELD, default_name)].append({DATASET_FIELD: default_name, **example})
    return dict(groups)


@dataclasses.dataclass(frozen=True)
class MixtureDataset:
    """One dataset of a mixture: raw examples and the templates to render them with, or (templates empty) examples
    already in FLIPPED's form."""

    name: str
    examples: Sequence[dict]
    templates: tuple = ()


class Mixture:
    """An endless stream of training examples in FLIPPED's form. Example i: a dataset drawn in proportion to its size
    capped at `cap`, one of its first `cap` examples (of a seed-42 permutation when it has more), a random template;
    all from a generator seeded by (seed, i), so any example can be rebuilt from its index (resuming exactly).
    `draw` (= i) fixes its wrong label (TrainPreprocessor)."""

    def __init__(self, datasets: Sequence[MixtureDataset], cap: int = 500_000, seed: int = 0):
        if not datasets:
            raise ValueError("a training mixture needs at least one dataset")
        self.datasets = list(datasets)
        sizes = np.array([min(len(d.examples), cap) for d in self.datasets], np.float64)
        if not sizes.all():
            raise ValueError(f"empty dataset(s) in the mixture: {[d.name for d in self.datasets if not d.examples]}")
        self.weights = sizes / sizes.sum()
        self.kept = [np.random.default_rng(CAP_SHUFFLE_SEED).permutation(len(d.examples))[:cap]
                     if len(d.examples) > cap else None for d in self.datasets]
        self.sizes = sizes.astype(np.int64)
        self.seed = seed

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        which = int(rng.choice(len(self.datasets), p=self.weights))
        dataset, position = self.datasets[which], int(rng.integers(self.sizes[which]))
        row = position if self.kept[which] is None else int(self.kept[which][position])
        example = dataset.examples[row]
        where = example.get("where", f"{dataset.name}, example {row}")
        if dataset.templates:
            template = dataset.templates[int(rng.integers(len(dataset.templates)))]
            where = f"{where} with template {template.name!r}"
            example = template.flipped(example)
        return {**example, "where": where, "draw": index, DATASET_FIELD: dataset.name}


def hf_examples(name: str, split: str) -> Sequence[dict]:
    """A split of a Hugging Face dataset `name` ("path" or "path/config", as the original names them) through the
    `datasets` package, which is not a dependency of this project: install it to read these."""
    try:
        import datasets
    except ImportError:
        raise ImportError(f"reading {name!r} needs the Hugging Face `datasets` package (pip install datasets); "
                          "or give the examples as JSONL") from None
    path, _, config = name.partition("/")
    return datasets.load_dataset(path, config or None, split=split)
