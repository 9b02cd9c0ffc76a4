"""Files of records that round-trip any string: TSV (predictions tables) and JSON lines (prediction records).

Read them back with these functions, not with `str.splitlines()`: that also breaks lines at characters a model may
generate (\\x1c-\\x1e, \\x85, \\u2028, \\u2029, \\v, \\f) and that these formats leave as they are.
"""
import csv
import json
import os
from collections.abc import Iterable, Sequence


class TsvDialect(csv.Dialect):
    """Tab-separated fields, RFC 4180 quoting (what spreadsheets and pandas.read_csv(sep="\\t") read): a field holding
    a tab, a quote or a line break is quoted, its quotes doubled. Records end in \\r\\n, because the csv module quotes
    a bare \\r only when it is part of the line terminator."""
    delimiter = "\t"
    quotechar = '"'
    doublequote = True
    escapechar = None
    quoting = csv.QUOTE_MINIMAL
    lineterminator = "\r\n"
    skipinitialspace = False
    strict = True


def write_tsv(path: str | os.PathLike, rows: Iterable[Sequence[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as file:
        csv.writer(file, TsvDialect).writerows(rows)


def read_tsv(path: str | os.PathLike) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as file:
        return list(csv.reader(file, TsvDialect))


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """One JSON object a line, non-ASCII characters as they are (json escapes \\n and \\r inside strings)."""
    with open(path, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8", newline="\n") as file:  # lines end at \n alone
        return [json.loads(line) for line in file]
