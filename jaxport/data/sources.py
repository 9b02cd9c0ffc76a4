"""Random-access example sources: `len(source)` and `source[i] -> dict` of raw fields.

File sources index line offsets once and read lines on demand, so multi-gigabyte corpora are not
held in memory. Any Python list of dicts is a valid source too (handy for small eval sets).
"""
import json
import os
from collections.abc import Callable, Sequence

import numpy as np


def _is_blank(line: bytes) -> bool:
    return not line.strip()


class _LineFile:
    """Non-blank lines of a UTF-8 file, by position, remembering each one's 1-based line number."""

    def __init__(self, path: str | os.PathLike, check_line: Callable[[bytes], str | None] | None = None):
        self.path = os.fspath(path)
        starts, ends, numbers = [], [], []
        offset = 0
        with open(self.path, "rb") as file:
            for number, line in enumerate(file, start=1):
                if not _is_blank(line):
                    problem = check_line(line) if check_line else None
                    if problem:
                        raise ValueError(f"{self.path}, line {number}: {problem}")
                    starts.append(offset)
                    ends.append(offset + len(line))
                    numbers.append(number)
                offset += len(line)
        self._starts = np.array(starts, np.int64)
        self._ends = np.array(ends, np.int64)
        self._numbers = np.array(numbers, np.int64)

    def __len__(self) -> int:
        return len(self._starts)

    def line_number(self, index: int) -> int:
        return int(self._numbers[index])

    def __getitem__(self, index: int) -> str:
        start, end = int(self._starts[index]), int(self._ends[index])
        # pread has no shared file position, so a prefetch thread and the main thread can both read.
        fd = os.open(self.path, os.O_RDONLY)
        try:
            raw = os.pread(fd, end - start, start)
        finally:
            os.close(fd)
        try:
            return raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as error:
            raise ValueError(f"{self.path}, line {self.line_number(index)}: not UTF-8 ({error})") from None


class TsvSource:
    """Lines of `field_1<TAB>field_2...`; every line is checked for its field count up front."""

    def __init__(self, path: str | os.PathLike, fields: Sequence[str] = ("inputs", "targets")):
        self.fields = tuple(fields)
        self._lines = _LineFile(path, check_line=self._field_count_problem)

    def _field_count_problem(self, line: bytes) -> str | None:
        count = line.rstrip(b"\r\n").count(b"\t") + 1
        if count != len(self.fields):
            return f"expected {len(self.fields)} tab-separated fields {self.fields}, got {count}"
        return None

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, index: int) -> dict[str, str]:
        return dict(zip(self.fields, self._lines[index].split("\t"), strict=True))


class JsonlSource:
    """One JSON object per line, keeping only `fields` (required) and `optional_fields` (kept where present).

    Lines are parsed when read (parsing a large corpus twice at start-up would be slow), so a bad
    line is reported, with file and line number, when its example is first used.
    """

    def __init__(self, path: str | os.PathLike, fields: Sequence[str], optional_fields: Sequence[str] = ()):
        self.fields = tuple(fields)
        self.optional_fields = tuple(optional_fields)
        self._lines = _LineFile(path)

    def where(self, index: int) -> str:
        """`path, line N` of the example at `index`, for error messages."""
        return f"{self._lines.path}, line {self._lines.line_number(index)}"

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, index: int) -> dict:
        where = self.where(index)
        try:
            record = json.loads(self._lines[index])
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: invalid JSON ({error})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        missing = [field for field in self.fields if field not in record]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}")
        return {field: record[field] for field in (*self.fields, *self.optional_fields) if field in record}


class TextLineSource:
    """One example per non-blank line, as `{field: line}`."""

    def __init__(self, path: str | os.PathLike, field: str = "text"):
        self.field = field
        self._lines = _LineFile(path)

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, index: int) -> dict[str, str]:
        return {self.field: self._lines[index]}


class Subset:
    """The examples of `source` at `indices`, in that order."""

    def __init__(self, source, indices: Sequence[int]):
        self.source = source
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.source[self.indices[index]]


class Concatenation:
    """The examples of several sources, one after the other."""

    def __init__(self, sources):
        self.sources = list(sources)
        self._ends = np.cumsum([len(source) for source in self.sources])

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} of {len(self)}")
        which = int(np.searchsorted(self._ends, index, side="right"))
        return self.sources[which][index - (int(self._ends[which - 1]) if which else 0)]


def first(source, count: int):
    """The first `count` examples of a finite source; all of them for 0."""
    return Subset(source, range(count)) if 0 < count < len(source) else source


def _decode_text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


class TfdsSource:
    """A split of a TensorFlow Datasets dataset, read by random access from array_record files.

    Reading goes through `builder.as_data_source`, which needs no TensorFlow. Text features come
    back as `str`. With `download=True` an unprepared dataset is downloaded and prepared as
    array_record first (whether that works without TensorFlow depends on the dataset's builder).
    """

    def __init__(self, name: str, split: str, *, data_dir: str | os.PathLike | None = None,
                 download: bool = False, fields: Sequence[str] | None = None):
        import tensorflow_datasets as tfds  # heavy import, only for users of TFDS

        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError:
            # Its own message lists every registered dataset, burying the point.
            raise ValueError(f"TFDS dataset {name!r} is neither registered in tensorflow_datasets "
                             f"nor prepared under data_dir={data_dir}") from None
        if not builder.is_prepared():
            if not download:
                raise FileNotFoundError(
                    f"TFDS dataset {name!r} is not prepared in {builder.data_dir}: pass download=True, "
                    f"or run `tfds build {name} --file_format=array_record --data_dir=...`")
            builder.download_and_prepare(file_format="array_record")
        available = list(builder.info.features.keys())
        self.fields = tuple(fields) if fields is not None else tuple(available)
        unknown = [field for field in self.fields if field not in available]
        if unknown:
            raise ValueError(f"TFDS dataset {name!r} has no feature(s) {unknown}; it has {available}")
        self._examples = builder.as_data_source(split)
        self.identity = f"tfds:{builder.data_dir}:{split}"  # names the dataset's version and the split's examples

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, index: int) -> dict:
        example = self._examples[index]
        return {field: _decode_text(example[field]) for field in self.fields}
