"""Pre-training examples made on the fly: an infinite random-access source for jaxport's iterator.

`FSTPretrainingSource(seed)[i]` is a pure function of (seed, i): FST number `i // examples_per_fst`
is the first usable candidate drawn from a generator seeded by (seed, that number), sampled as the
original samples its FSTs, and the (input, output) pair comes from pynini's random walk seeded by
(seed, i). The source has no `len`, so `jaxport.data.make_iterator` reads it in index order and
resumes exactly from a saved position.

Differences from the files of `generate_dataset`: FSTs are not de-duplicated against each other (a
random-access source cannot know what earlier indices drew; about 3% of the original's candidates
are duplicates, mostly two-state machines), but FSTs whose canonical form is in `exclude` (e.g. the
dev and test FSTs, `dataset.canonical_forms_of_files`) are skipped, so held-out FSTs stay unseen.
"""
import collections
import hashlib
import random
import threading
from collections.abc import Iterable

from sip_jax.fst.settings import MAX_RANDGEN_SEED, SamplerConfig
from sip_jax.fst.transitions import canonical_form


def derive_seed(seed: int, kind: str, index: int) -> int:
    """A 128-bit seed for the `index`-th draw of `kind`, the same in every process and Python run."""
    digest = hashlib.blake2b(f"{seed}/{kind}/{index}".encode(), digest_size=16).digest()
    return int.from_bytes(digest, "little")


class FSTPretrainingSource:
    """`src[i] -> {"FST": [(from, in, out, to, is_final), ...], "input": str, "output": str, "task_id": int}`.

    `examples_per_fst` consecutive indices share one FST (the original has 5 pairs per FST; 1, the
    default, gives every example its own FST); `task_id` is the FST's number. jaxport's iterator
    reads an infinite source in index order, so with k > 1 a batch holds runs of k examples of one
    FST (the original shuffles its 5 pairs apart). The last `cache_size` FSTs are kept, so the k
    indices of one FST cost one FST draw.
    """

    def __init__(self, seed: int = 0, sampler: SamplerConfig = SamplerConfig(), *, examples_per_fst: int = 1,
                 exclude: Iterable[tuple] = (), max_tries: int = 10_000, cache_size: int = 256):
        if examples_per_fst < 1:
            raise ValueError(f"examples_per_fst must be positive, got {examples_per_fst}")
        self.seed = seed
        self.sampler = sampler
        self.examples_per_fst = examples_per_fst
        self.exclude = frozenset(exclude)
        self.max_tries = max_tries
        self.cache_size = cache_size
        self._init_cache()

    def _init_cache(self):
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self):  # pynini objects do not pickle: worker processes rebuild their cache
        state = self.__dict__.copy()
        del state["_cache"], state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_cache()

    def task(self, fst_index: int):
        """The `fst_index`-th FST (a `machine.FSTTask`)."""
        with self._lock:
            if fst_index in self._cache:
                self._cache.move_to_end(fst_index)
                return self._cache[fst_index]
        task = self._draw_task(fst_index)
        with self._lock:
            self._cache[fst_index] = task
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return task

    def _draw_task(self, fst_index: int):
        from sip_jax.fst import machine

        rng = random.Random(derive_seed(self.seed, "fst", fst_index))
        for _ in range(self.max_tries):
            fst, alphabet = machine.sample_candidate(rng, self.sampler)
            if not machine.is_usable(fst, self.sampler):
                continue
            task = machine.FSTTask(fst, alphabet, self.sampler)
            if self.exclude and canonical_form(task.transitions) in self.exclude:
                continue
            if task.has_strings():
                return task
        raise RuntimeError(f"no usable FST in {self.max_tries} candidates for FST {fst_index} (seed {self.seed}); "
                           "check the sampler settings")

    def __getitem__(self, index: int) -> dict:
        if isinstance(index, bool) or not isinstance(index, int):
            import numpy as np

            if not isinstance(index, np.integer):
                raise TypeError(f"source indices are ints, got {type(index).__name__}")
            index = int(index)
        if index < 0:
            raise IndexError(f"an infinite source has no negative index ({index})")
        fst_index = index // self.examples_per_fst
        task = self.task(fst_index)
        walk_seed = derive_seed(self.seed, "pair", index) % (MAX_RANDGEN_SEED + 1)
        text_in, text_out = task.sample(walk_seed)
        return {"FST": list(task.transitions), "input": text_in, "output": text_out, "task_id": fst_index}

    def alphabet(self, index: int) -> str:
        """The alphabet of example `index`'s FST (what its special arcs read)."""
        return self.task(index // self.examples_per_fst).alphabet
