"""Synthetic seq2seq tasks made on the fly: no download, infinite, and trivially resumable.

Example i is drawn from a numpy Generator seeded by (seed, i), so any example can be rebuilt from
its index alone. The sources have no `len`: the batch iterator reads them in index order.
"""
import dataclasses

import numpy as np

TASKS = {
    "copy": lambda text: text,
    "reverse": lambda text: text[::-1],
    "sort": lambda text: "".join(sorted(text)),
}


@dataclasses.dataclass(frozen=True)
class SyntheticTask:
    """`{"inputs": random string, "targets": TASKS[task](inputs)}` with lengths in [min, max]."""

    task: str
    seed: int = 0
    alphabet: str = "abcdefghij"
    min_length: int = 1
    max_length: int = 16

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown synthetic task {self.task!r}; choose from {sorted(TASKS)}")
        if not 0 < self.min_length <= self.max_length:
            raise ValueError(f"need 0 < min_length <= max_length, got {self.min_length}, {self.max_length}")

    def __getitem__(self, index: int) -> dict[str, str]:
        rng = np.random.default_rng([self.seed, index])
        length = rng.integers(self.min_length, self.max_length, endpoint=True)
        letters = rng.integers(len(self.alphabet), size=length)
        inputs = "".join(self.alphabet[letter] for letter in letters)
        return {"inputs": inputs, "targets": TASKS[self.task](inputs)}
