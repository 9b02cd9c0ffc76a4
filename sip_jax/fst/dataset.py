"""SIP's pre-training data as files: distinct random FSTs split into train/dev/test plus easy-dev.

`generate_dataset` runs the original's procedure (sip/data_gen/gen_pretrain.py:108-256 in
namednil/sip): draw candidate FSTs until more than `num_fsts` distinct ones are collected, shuffle
them, and give each FST, in turn, to train (80%), dev (10%, at most 1000) or test (10%, at most
1000) with 5 sampled (input, output) pairs; the first 1000 training FSTs also get 5 pairs each for
easy-dev whose inputs differ from that FST's training inputs. Dev and test therefore hold FSTs that
training never sees; easy-dev holds training FSTs with unseen strings. With the same seed and
settings it draws the same random numbers as the original and writes the same files, byte for byte
(checked against the original script with pynini 2.1.7: seed 55 at 300, 3,000 and the full 50,000 FSTs).

Easy-dev strings are much shorter than training strings (mean input length 5.0 against 15.6 in the
full data): the original samples them through `sigma_star`, a closure that puts after every
letter a final state with a single epsilon arc, so the walk stops there about as often as it goes
on. This is the original's behaviour, kept.

Files are JSON lines `{"FST": [[from, in, out, to, is_final], ...], "input": ..., "output": ...,
"task_id": n}`, named `{split}_{name}.jsonl`, so the original's `load_fst_jsonl` reads them.
"""
import dataclasses
import json
import os
import random
from collections.abc import Iterable

from sip_jax.fst.settings import SamplerConfig, SplitConfig
from sip_jax.fst.transitions import canonical_form, check_transitions, graph_hash

SPLITS = ("train", "dev", "test", "easy_dev")


def default_name(sampler: SamplerConfig = SamplerConfig()) -> str:
    """The original's file stem, `pretrain_s4` for at most 4 states (gen_pretrain.py:125)."""
    return f"pretrain_s{sampler.max_states}"


class _Collection:
    """Distinct FSTs in the original's order (utils.py:94-138 `FSTCollection`).

    FSTs are grouped by the original's cheap `graph_hash`; within a group, one isomorphic to a member
    is dropped (canonical forms stand in for `pywrapfst.isomorphic`: equal for deterministic FSTs
    exactly when isomorphic). Like the original, the size counts distinct hashes, not FSTs, and
    the listing goes group by group in order of each group's first FST.
    """

    def __init__(self):
        self._groups: dict[int, list[tuple]] = {}

    def add(self, transitions, *payload) -> bool:
        group = self._groups.setdefault(graph_hash(transitions), [])
        form = canonical_form(transitions)
        if any(form == member[0] for member in group):
            return False
        group.append((form, *payload))
        return True

    def __len__(self) -> int:
        return len(self._groups)

    def items(self) -> list[tuple]:
        return [member[1:] for group in self._groups.values() for member in group]


@dataclasses.dataclass
class FSTDataset:
    """Examples per split (`train`, `dev`, `test`, `easy_dev`) and the alphabet of every task id."""

    examples: dict[str, list[dict]]
    alphabets: dict[int, str]
    seed: int
    sampler: SamplerConfig
    splits: SplitConfig
    candidates_drawn: int = 0

    def write(self, out_dir: str | os.PathLike, name: str | None = None, *, with_alphabet: bool = False) -> dict:
        """Writes `{split}_{name}.jsonl` for every split; returns {split: path}.

        `with_alphabet` adds each task's alphabet as a field "alphabet" (the original's loader ignores
        unknown fields; the independent simulator needs it to decide what a special arc reads).
        """
        name = default_name(self.sampler) if name is None else name
        os.makedirs(out_dir, exist_ok=True)
        paths = {}
        for split in SPLITS:
            paths[split] = os.path.join(out_dir, f"{split}_{name}.jsonl")
            examples = self.examples[split]
            if with_alphabet:
                examples = [{**example, "alphabet": self.alphabets[example["task_id"]]} for example in examples]
            write_jsonl(paths[split], examples)
        return paths


def generate_dataset(seed: int = 55, sampler: SamplerConfig = SamplerConfig(), splits: SplitConfig = SplitConfig(),
                     progress: bool = False) -> FSTDataset:
    """The original's pre-training data for `seed` (its own is 55, gen_pretrain.py:111); see the module doc."""
    from sip_jax.fst import machine  # pynini is only needed to generate

    rng = random.Random(seed)
    attempts = splits.attempts_per_fst * splits.num_fsts
    # The original draws one seed per attempt up front and never uses them (gen_pretrain.py:121);
    # drawing them too keeps every later random number the same as the original's.
    for _ in range(attempts):
        machine.draw_randgen_seed(rng)
    collection = _Collection()
    drawn = 0
    for _ in _progress(range(attempts), progress, "sampling FSTs"):
        fst, alphabet = machine.sample_candidate(rng, sampler)
        drawn += 1
        if machine.is_usable(fst, sampler):
            collection.add(machine.fst_transitions(fst), fst, alphabet)
        if len(collection) > splits.num_fsts:  # gen_pretrain.py:152-153
            break
    tasks = collection.items()
    rng.shuffle(tasks)
    if len(tasks) < splits.num_fsts:
        raise ValueError(f"only {len(tasks)} distinct usable FSTs in {attempts} candidates, fewer than "
                         f"num_fsts={splits.num_fsts}; raise attempts_per_fst or loosen the sampler settings")
    order = list(range(min(splits.num_fsts, len(tasks))))
    rng.shuffle(order)  # unused, as in the original (gen_pretrain.py:164-165); keeps the stream aligned
    total = len(order)
    quota = {"train": int(splits.train_fraction * total),
             "dev": min(splits.max_dev_fsts, int(splits.dev_fraction * total)),
             "test": min(splits.max_test_fsts, int(splits.test_fraction * total))}
    quota["easy_dev"] = min(splits.max_easy_dev_fsts, quota["train"])
    counts = dict.fromkeys(SPLITS, 0)
    examples = {split: [] for split in SPLITS}
    alphabets = {}
    task_id = 0
    for fst, alphabet in _progress(tasks, progress, "sampling strings"):
        task = machine.FSTTask(fst, alphabet, sampler)
        if not task.has_strings():  # gen_pretrain.py:196-199
            continue
        task_id += 1
        transitions = [list(t) for t in task.transitions]
        pairs = [task.sample(machine.draw_randgen_seed(rng)) for _ in range(splits.examples_per_fst)]
        split = next((s for s in ("train", "dev", "test") if counts[s] < quota[s]), None)
        if split is None:
            break
        counts[split] += 1
        alphabets[task_id] = alphabet
        examples[split].extend({"FST": transitions, "input": i, "output": o, "task_id": task_id} for i, o in pairs)
        # The original's test is `curr_train <= num_train_ex` after counting this FST, which (as easy-dev
        # holds at most as many FSTs as train) picks exactly the first training FSTs (gen_pretrain.py:239).
        if split == "train" and counts["easy_dev"] < quota["easy_dev"]:
            counts["easy_dev"] += 1
            seen = {i for i, _ in pairs}
            for _ in range(splits.examples_per_fst):
                i, o = task.sample_unseen(machine.draw_randgen_seed(rng), seen)
                assert i not in seen
                examples["easy_dev"].append({"FST": transitions, "input": i, "output": o, "task_id": task_id})
    return FSTDataset(examples, alphabets, seed, sampler, splits, drawn)


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    import tqdm

    return tqdm.tqdm(iterable, desc=desc)


def write_jsonl(path: str | os.PathLike, examples: Iterable[dict]) -> None:
    """One `json.dumps` line per example, as the original writes them (non-ASCII escaped)."""
    with open(path, "w") as file:
        for example in examples:
            file.write(json.dumps(example))
            file.write("\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The examples of a file, each FST as a list of tuples; a bad line is named with its number."""
    examples = []
    with open(path) as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                example = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: invalid JSON ({error})") from None
            missing = [key for key in ("FST", "input", "output") if key not in example]
            if missing:
                raise ValueError(f"{where}: missing field(s) {missing}")
            try:
                example["FST"] = check_transitions(example["FST"])
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
            examples.append(example)
    return examples


def canonical_forms(examples: Iterable[dict]) -> set[tuple]:
    """The canonical forms of the FSTs in `examples` (to keep them out of on-the-fly training)."""
    return {canonical_form(example["FST"]) for example in examples}


def canonical_forms_of_files(paths: Iterable[str | os.PathLike]) -> set[tuple]:
    forms = set()
    for path in paths:
        forms |= canonical_forms(read_jsonl(path))
    return forms
