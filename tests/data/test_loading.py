"""Corpus loading with `datasets`: formats, document ends, the byte split, errors; offline."""

import gzip
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spikelm.data import load_documents, load_text_splits, split_by_bytes, tiny_shakespeare_path

REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE_DIR = REPO / "recipes" / "data" / "tinyshakespeare"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def write(path: Path, text: str) -> str:
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def joined(ds) -> str:
    return "".join(ds["text"][:])


def test_text_file_is_one_document_of_lines(tmp_path):
    text = "line one\nline two\n\nlast line without newline"
    ds = load_documents([write(tmp_path / "a.txt", text)])
    assert ds.column_names == ["text", "doc_end"]
    assert ds["text"][:] == ["line one\n", "line two\n", "\n", "last line without newline"]
    assert ds["doc_end"][:] == [False, False, False, True]


def test_files_in_order_with_document_ends(tmp_path):
    a = write(tmp_path / "a.md", "# A\nalpha\n")
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "doc b1", "id": 1}, {"text": "", "id": 2}, {"text": "doc b2", "id": 3}])
    table = pa.table({"text": ["doc c1", "doc c2 ü"], "meta": [1, 2]})
    pq.write_table(table, tmp_path / "c.parquet")
    d = write(tmp_path / "d.text", "delta\n")
    ds = load_documents([a, b, str(tmp_path / "c.parquet"), d])
    assert ds["text"][:] == ["# A\n", "alpha\n", "doc b1", "doc b2", "doc c1", "doc c2 ü", "delta\n"]
    assert ds["doc_end"][:] == [False, True, True, True, True, True, True]  # empty json row dropped


def test_text_field_and_json_array(tmp_path):
    rows = [{"content": "first", "n": 1}, {"content": "second", "n": 2}]
    j = tmp_path / "docs.json"
    j.write_text(json.dumps(rows))
    pq.write_table(pa.table({"content": ["third"], "n": [3]}), tmp_path / "more.parquet")
    ds = load_documents([str(j), str(tmp_path / "more.parquet")], text_field="content")
    assert ds.column_names == ["text", "doc_end"]
    assert ds["text"][:] == ["first", "second", "third"] and all(ds["doc_end"][:])


def test_compressed_files(tmp_path):
    with gzip.open(tmp_path / "a.txt.gz", "wt", encoding="utf-8") as f:
        f.write("zipped\ntext\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "zipped doc"}) + "\n")
    ds = load_documents([str(tmp_path / "a.txt.gz"), str(tmp_path / "b.jsonl.gz")])
    assert ds["text"][:] == ["zipped\n", "text\n", "zipped doc"]
    assert ds["doc_end"][:] == [False, True, True]


def test_byte_split_mid_line(tmp_path):
    lines = [f"line {i:02d} é!\n" for i in range(20)]  # 12 bytes each ("é" is 2 bytes)
    text = "".join(lines)
    data = text.encode()
    assert len(data) == 240
    path = write(tmp_path / "a.txt", text)

    # boundary on a line end: int(240 * 0.9) = 216 = 18 whole lines
    train, val = load_text_splits([path], val_fraction=0.1)
    assert joined(train).encode() == data[:216] and joined(val).encode() == data[216:]
    assert train["text"][:] == lines[:18] and val["text"][:] == lines[18:]
    assert train["doc_end"][:] == [False] * 18 and val["doc_end"][:] == [False, True]

    # boundary inside a line: int(240 * 0.67) = 160 = 13 lines (156 bytes) + 4 bytes of line 13
    train, val = load_text_splits([path], val_fraction=0.33)
    assert joined(train).encode() == data[:160] and joined(val).encode() == data[160:]
    assert train["text"][:][-1] == "line" and train["doc_end"][:][-1] is False
    assert val["text"][:][0] == " 13 é!\n" and val["doc_end"][:][-1] is True
    assert len(train) == 14 and len(val) == 7  # the cut line appears once on each side


def test_byte_split_moves_back_to_character_start(tmp_path):
    text = "é" * 10  # 20 bytes; 0.85 * 20 -> k = 17, inside the 9th "é" (bytes 16, 17)
    train, val = load_text_splits([write(tmp_path / "a.txt", text)], val_fraction=0.15)
    assert joined(train) == "é" * 8 and joined(val) == "é" * 2


def test_byte_split_across_documents(tmp_path):
    rows = [{"text": "a" * 30}, {"text": "b" * 30}, {"text": "c" * 40}]
    train, val = load_text_splits([write_jsonl(tmp_path / "d.jsonl", rows)], val_fraction=0.5)
    assert train["text"][:] == ["a" * 30, "b" * 20] and train["doc_end"][:] == [True, False]
    assert val["text"][:] == ["b" * 10, "c" * 40] and val["doc_end"][:] == [True, True]
    # split_by_bytes is the same rule on an already loaded dataset
    docs = load_documents([str(tmp_path / "d.jsonl")])
    t2, v2 = split_by_bytes(docs, 0.5)
    assert t2["text"][:] == train["text"][:] and v2["text"][:] == val["text"][:]


def test_val_files(tmp_path):
    train, val = load_text_splits(
        [write(tmp_path / "train.txt", "train text\n")], [write(tmp_path / "val.txt", "val text\n")]
    )
    assert joined(train) == "train text\n" and joined(val) == "val text\n"
    assert train["doc_end"][:] == [True] and val["doc_end"][:] == [True]


def test_tiny_shakespeare_bundled_and_split():
    path = SHAKESPEARE_DIR / "input.txt"
    assert Path(tiny_shakespeare_path()).resolve() == path.resolve()
    data = path.read_bytes()
    assert len(data) == 1_115_394
    assert hashlib.sha256(data).hexdigest() == SHAKESPEARE_SHA256
    readme = (SHAKESPEARE_DIR / "README.md").read_text()
    assert SHAKESPEARE_SHA256 in readme and "karpathy/char-rnn" in readme and "public domain" in readme

    train, val = load_text_splits([str(path)])
    train_bytes, val_bytes = joined(train).encode(), joined(val).encode()
    # nanoGPT's shakespeare_char split: data[:int(n * 0.9)], here exactly, mid-line
    assert len(train_bytes) == int(len(data) * 0.9) == 1_003_854
    assert len(val_bytes) == 111_540
    assert train_bytes == data[:1_003_854] and val_bytes == data[1_003_854:]
    assert train.num_rows == 35_526 and val.num_rows == 4_475  # 40,000 lines + the cut one
    assert sum(train["doc_end"][:]) == 0 and val["doc_end"][:][-1] is True


# ----------------------------------------------------------------------------- errors


def test_missing_file_named(tmp_path):
    good = write(tmp_path / "a.txt", "x\n")
    missing = str(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="train file not found") as e:
        load_text_splits([good, missing])
    assert missing in str(e.value)
    with pytest.raises(FileNotFoundError, match="validation file not found") as e:
        load_text_splits([good], [missing])
    assert missing in str(e.value)


def test_unknown_extension_lists_accepted(tmp_path):
    path = write(tmp_path / "data.csv", "a,b\n")
    with pytest.raises(ValueError, match="unknown extension") as e:
        load_text_splits([path])
    msg = str(e.value)
    assert "data.csv" in msg and all(ext in msg for ext in (".txt", ".jsonl", ".parquet", ".md"))


def test_directory_rejected(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        load_text_splits([str(tmp_path)])


def test_missing_text_field_lists_fields(tmp_path):
    j = write_jsonl(tmp_path / "d.jsonl", [{"body": "x", "id": 1}])
    with pytest.raises(ValueError, match="text field 'text' not found") as e:
        load_text_splits([j])
    assert "body" in str(e.value) and "id" in str(e.value) and "d.jsonl" in str(e.value)
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(ValueError, match="text field 'body' not found") as e:
        load_text_splits([str(tmp_path / "p.parquet")], text_field="body")
    assert "content" in str(e.value)
    j2 = write_jsonl(tmp_path / "n.jsonl", [{"text": 1}, {"text": 2}])
    with pytest.raises(ValueError, match="not strings"):
        load_text_splits([j2])


def test_malformed_json_named(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(ValueError, match="bad.jsonl"):
        load_text_splits([path])


def test_empty_corpus(tmp_path):
    with pytest.raises(ValueError, match="empty corpus"):
        load_text_splits([write(tmp_path / "empty.txt", "")])
    with pytest.raises(ValueError, match="empty corpus"):
        load_text_splits([write_jsonl(tmp_path / "e.jsonl", [{"text": ""}, {"text": None}])])
    with pytest.raises(ValueError, match="empty corpus"):
        load_text_splits([write(tmp_path / "t.txt", "x\n")], [write(tmp_path / "v.txt", "")])


@pytest.mark.parametrize("fraction", [0, 1, 0.0, 1.0, -0.1, 1.5, "0.1"])
def test_val_fraction_range(tmp_path, fraction):
    with pytest.raises(ValueError, match="val_fraction must be strictly between 0 and 1"):
        load_text_splits([write(tmp_path / "a.txt", "some text\n")], val_fraction=fraction)


def test_corpus_too_small_to_split(tmp_path):
    with pytest.raises(ValueError, match="too small to split"):
        load_text_splits([write(tmp_path / "a.txt", "x")], val_fraction=0.1)


def test_hub_name_offline_is_clear():
    with pytest.raises(FileNotFoundError, match="offline") as e:
        load_text_splits(["some-org/some-corpus"])
    msg = str(e.value)
    assert "some-org/some-corpus" in msg and "not a local file" in msg and "Hub" in msg
