"""Prediction files round-trip any string a model can generate (issue 19)."""
import pytest

from jaxport.records import read_jsonl, read_tsv, write_jsonl, write_tsv

# Line breaks of every kind str.splitlines() knows, field and quote characters, and odd whitespace.
AWKWARD = ["tab\there", "new\nline", "cr\rreturn", "crlf\r\n", "\x1c\x1d\x1e", "next\x85line", "\u2028\u2029",
           "\x0b\x0c", 'say "hi"', '"', "", "  spaces  ", "back\\slash\\n", "nul\x00", "ʃiː → 🙂"]


def test_tsv_round_trips_any_string(tmp_path):
    rows = [("input", "output", "prediction")] + [(f"in {i}", text, text + "!") for i, text in enumerate(AWKWARD)]
    rows.append(("", "", ""))
    write_tsv(tmp_path / "p.tsv", rows)
    assert read_tsv(tmp_path / "p.tsv") == [list(row) for row in rows]


def test_tsv_leaves_plain_fields_unquoted(tmp_path):
    """What other tools see: plain fields as they are, one record a line."""
    write_tsv(tmp_path / "p.tsv", [("input", "output"), ("cat", "CAT")])
    assert (tmp_path / "p.tsv").read_bytes() == b"input\toutput\r\ncat\tCAT\r\n"


@pytest.mark.parametrize("text", AWKWARD)
def test_jsonl_round_trips_any_string(tmp_path, text):
    records = [{"prediction": text, "score": 1.5}, {"prediction": "next"}]
    write_jsonl(tmp_path / "p.jsonl", records)
    assert read_jsonl(tmp_path / "p.jsonl") == records
