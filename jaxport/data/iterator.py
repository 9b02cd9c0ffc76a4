"""Deterministic, resumable, multi-host batch iterator over a random-access source.

The position in the stream is just (epoch, batch index within the epoch), and the batch at any
position is a pure function of it: the epoch's order comes from a Generator seeded by
(seed, epoch). Saving and restoring the position therefore resumes exactly, and every host
computes the same global batch and keeps only its own slice of it.

Building batches can run in worker processes (`num_workers`): each builds whole batches from their
positions, so the order, and with it resuming, stays exactly that of one process.
"""
import collections
import collections.abc
import multiprocessing
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

import numpy as np

EXAMPLE_MASK = "example_mask"


class _BatchPlan:
    """Which examples make up each batch, and how a batch is built. Holds no iteration state."""

    def __init__(self, source, preprocess_fn: Callable[[dict], dict], *, batch_size: int, seed: int,
                 shuffle: bool, num_epochs: int | None, drop_remainder: bool,
                 process_index: int, process_count: int):
        if batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} is not divisible by process_count {process_count}")
        self.source = source
        self.preprocess_fn = preprocess_fn
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_epochs = num_epochs
        self.drop_remainder = drop_remainder
        local_batch_size = batch_size // process_count
        self.host_slice = slice(process_index * local_batch_size, (process_index + 1) * local_batch_size)
        self.num_examples = len(source) if isinstance(source, collections.abc.Sized) else None
        if self.num_examples is None:
            if num_epochs is not None:
                raise ValueError("num_epochs needs a source with a length; this one is infinite")
            self.batches_per_epoch = None
        else:
            full, partial = divmod(self.num_examples, batch_size)
            self.batches_per_epoch = full + int(partial > 0 and not drop_remainder)
            if self.batches_per_epoch == 0:
                raise ValueError(f"the source has {self.num_examples} examples: no batch of {batch_size} "
                                 f"(drop_remainder={drop_remainder})")
        self._cached_order = (None, None)

    def order_fingerprint(self) -> dict:
        """What fixes the sequence of global batches: a saved position only means something under it."""
        return {"seed": self.seed, "batch_size": self.batch_size, "num_examples": self.num_examples,
                "shuffle": self.shuffle, "drop_remainder": self.drop_remainder}

    def is_done(self, epoch: int) -> bool:
        return self.num_epochs is not None and epoch >= self.num_epochs

    def next_position(self, epoch: int, batch: int) -> tuple[int, int]:
        if self.batches_per_epoch is not None and batch + 1 == self.batches_per_epoch:
            return epoch + 1, 0
        return epoch, batch + 1

    def _epoch_order(self, epoch: int) -> np.ndarray:
        cached_epoch, order = self._cached_order
        if cached_epoch != epoch:
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            else:
                order = np.arange(self.num_examples)
            self._cached_order = (epoch, order)
        return order

    def global_indices(self, epoch: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Source indices of a global batch and which of them are real (the rest pad the last batch)."""
        start = batch * self.batch_size
        if self.num_examples is None:  # infinite sources are i.i.d. draws already: no shuffling
            return np.arange(start, start + self.batch_size), np.ones(self.batch_size, bool)
        indices = self._epoch_order(epoch)[start:start + self.batch_size]
        is_real = np.arange(self.batch_size) < len(indices)
        # Padding repeats a real example, so a model computes finite values on it; the mask drops it.
        padded = np.full(self.batch_size, indices[0])
        padded[:len(indices)] = indices
        return padded, is_real

    def batch(self, epoch: int, batch: int) -> dict[str, np.ndarray]:
        indices, is_real = self.global_indices(epoch, batch)
        indices, is_real = indices[self.host_slice], is_real[self.host_slice]
        examples = [self._preprocess(int(index), epoch) for index in indices]
        stacked = {key: np.stack([example[key] for example in examples]) for key in examples[0]}
        if not self.drop_remainder:
            stacked[EXAMPLE_MASK] = is_real
        return stacked

    def _preprocess(self, index: int, epoch: int) -> dict:
        example = self.source[index]
        try:
            if getattr(self.preprocess_fn, "takes_epoch", False):
                return self.preprocess_fn(example, epoch)
            return self.preprocess_fn(example)
        except Exception as error:
            raise ValueError(f"cannot preprocess example {index}: {error}") from error

    def batches_from(self, epoch: int, batch: int) -> Iterator[tuple[dict, tuple[int, int]]]:
        """Each batch from a position on, with the position that follows it."""
        while not self.is_done(epoch):
            following = self.next_position(epoch, batch)
            yield self.batch(epoch, batch), following
            epoch, batch = following


_worker_plan: "_BatchPlan | None" = None  # the plan a worker process builds batches of


def _set_worker_plan(plan: _BatchPlan) -> None:
    global _worker_plan
    _worker_plan = plan


def _worker_batch(epoch: int, batch: int) -> dict[str, np.ndarray]:
    return _worker_plan.batch(epoch, batch)


def _pooled_batches(plan: _BatchPlan, epoch: int, batch: int, num_workers: int
                    ) -> Iterator[tuple[dict, tuple[int, int]]]:
    """`plan.batches_from(epoch, batch)` with the batches built by `num_workers` processes, in order, at most
    4 * num_workers in flight (a slow batch then holds up none of the workers). Processes are spawned, not
    forked: the parent holds JAX's threads."""
    pool = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_set_worker_plan, initargs=(plan,))
    pending = collections.deque()
    position = (epoch, batch)
    try:
        while True:
            while len(pending) < 4 * num_workers and not plan.is_done(position[0]):
                following = plan.next_position(*position)
                pending.append((pool.submit(_worker_batch, *position), following))
                position = following
            if not pending:
                return
            future, following = pending.popleft()
            yield future.result(), following
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


class _Prefetcher:
    """Runs a producer in a daemon thread, a bounded number of items ahead of the consumer."""

    def __init__(self, produce: Iterator, depth: int):
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(produce,), daemon=True)
        self._thread.start()

    def _fill(self, produce: Iterator) -> None:
        try:
            for item in produce:
                if not self._put((item, None)):
                    return
        except Exception as error:  # handed to the consumer, raised where it asks for the batch
            self._put((None, error))
        finally:
            produce.close()  # a generator's cleanup (e.g. stopping worker processes) runs now

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def get(self):
        item, error = self._queue.get()
        if error is not None:
            raise error
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class BatchIterator:
    """Iterator of host-local batches (dicts of numpy arrays) with exact `get_state`/`set_state`.

    With `prefetch > 0` batches are built that many ahead in a background thread; the state still
    counts only the batches handed out, so it stays exact. With `num_workers > 0` that thread takes them
    from as many worker processes (source and preprocess_fn must pickle), for preprocessing too slow for one
    core, e.g. data generated on the fly.
    """

    def __init__(self, source, preprocess_fn: Callable[[dict], dict], *, batch_size: int, seed: int = 0,
                 shuffle: bool = True, num_epochs: int | None = None, drop_remainder: bool = True,
                 prefetch: int = 2, num_workers: int = 0, process_index: int | None = None,
                 process_count: int | None = None):
        self._prefetcher: _Prefetcher | None = None  # first, so __del__ works even if __init__ fails
        if num_workers and not prefetch:
            raise ValueError("num_workers needs prefetch > 0 (the workers are read from the prefetch thread)")
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        self._plan = _BatchPlan(source, preprocess_fn, batch_size=batch_size, seed=seed, shuffle=shuffle,
                                num_epochs=num_epochs, drop_remainder=drop_remainder,
                                process_index=process_index, process_count=process_count)
        self._prefetch = prefetch
        self._num_workers = num_workers
        self._position = (0, 0)

    @property
    def batches_per_epoch(self) -> int | None:
        """Batches in one pass over the source; None for an infinite source."""
        return self._plan.batches_per_epoch

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._plan.is_done(self._position[0]):
            raise StopIteration
        if not self._prefetch:
            batch = self._plan.batch(*self._position)
            self._position = self._plan.next_position(*self._position)
            return batch
        if self._prefetcher is None:
            produce = (_pooled_batches(self._plan, *self._position, self._num_workers) if self._num_workers
                       else self._plan.batches_from(*self._position))
            self._prefetcher = _Prefetcher(produce, self._prefetch)
        try:
            batch, self._position = self._prefetcher.get()
        except Exception:
            self.close()  # the producer has stopped; a later call retries from the same position
            raise
        return batch

    def get_state(self) -> dict:
        """JSON-serializable position after the last batch returned (the same on every host)."""
        epoch, batch = self._position
        return {"epoch": epoch, "batch_in_epoch": batch, **self._plan.order_fingerprint()}

    def set_state(self, state: dict) -> None:
        expected = self._plan.order_fingerprint()
        mismatched = {key: (state.get(key), value) for key, value in expected.items() if state.get(key) != value}
        if mismatched:
            raise ValueError(f"state was saved under different settings (saved, now): {mismatched}")
        self.close()  # batches prefetched from the old position are stale
        self._position = (state["epoch"], state["batch_in_epoch"])

    def close(self) -> None:
        """Stops the prefetch thread, if any; iterating again starts a new one."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def __del__(self):
        self.close()


def make_iterator(source, preprocess_fn: Callable[[dict], dict], *, batch_size: int, seed: int = 0,
                  shuffle: bool = True, num_epochs: int | None = None, prefetch: int = 2, num_workers: int = 0,
                  process_index: int | None = None, process_count: int | None = None) -> BatchIterator:
    """Training batches: reshuffled every epoch, each epoch's incomplete last batch dropped.

    A preprocess_fn whose `takes_epoch` is true is called as fn(example, epoch): its random choices (masks) can
    differ on every pass over an example and stay a function of the position, which resuming restores."""
    return BatchIterator(source, preprocess_fn, batch_size=batch_size, seed=seed, shuffle=shuffle,
                         num_epochs=num_epochs, drop_remainder=True, prefetch=prefetch, num_workers=num_workers,
                         process_index=process_index, process_count=process_count)


def make_eval_iterator(source, preprocess_fn: Callable[[dict], dict], *, batch_size: int, prefetch: int = 2,
                       process_index: int | None = None, process_count: int | None = None) -> BatchIterator:
    """One pass in source order; the last batch is padded and `batch["example_mask"]` marks real rows."""
    return BatchIterator(source, preprocess_fn, batch_size=batch_size, shuffle=False, num_epochs=1,
                         drop_remainder=False, prefetch=prefetch,
                         process_index=process_index, process_count=process_count)
