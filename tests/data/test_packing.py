"""Tokenize + pack into overlapping blocks (Arrow cache), corpus stats, PackedBlocks; offline."""

import json
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from spikelm.data import (
    PackedBlocks,
    corpus_stats,
    load_documents,
    load_text_splits,
    pack_blocks,
    train_bpe_tokenizer_from_iterator,
)

TEXT = "".join(f"Speaker {i % 3}:\nLine {i} of verse, naïve and brûlée — 東京 {i * 7}.\n\n" for i in range(60))


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer_from_iterator(TEXT.splitlines(keepends=True), vocab_size=320, model_max_length=32)


@pytest.fixture
def text_file(write_corpus):
    return write_corpus(TEXT)


@pytest.fixture
def jsonl_file(tmp_path):
    docs = [TEXT[i : i + 150] for i in range(0, 1500, 150)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return str(path), docs


def stream_of(ds, tok) -> list[int]:
    """Reference token stream: each row's tokens, EOS after each document end."""
    out = []
    for text, end in zip(ds["text"][:], ds["doc_end"][:]):
        out += tok(text, add_special_tokens=False)["input_ids"]
        if end:
            out.append(tok.eos_token_id)
    return out


@pytest.mark.parametrize("block_size", [1, 7, 32])
def test_overlap_by_one_covers_every_target_once(text_file, tok, block_size):
    ds = load_documents([text_file])
    packed = pack_blocks(ds, tok, block_size)
    stream = stream_of(ds, tok)
    n = (len(stream) - 1) // block_size
    assert packed.column_names == ["input_ids"] and len(packed) == n > 0
    blocks = packed["input_ids"][:]
    assert all(len(b) == block_size + 1 for b in blocks)
    for i, b in enumerate(blocks):
        assert b == stream[i * block_size : i * block_size + block_size + 1]
    # inputs block[:-1], targets block[1:]: each token of stream[1 : n*bs + 1] is a target once
    targets = [t for b in blocks for t in b[1:]]
    assert targets == stream[1 : n * block_size + 1]
    assert [t for b in blocks for t in b[:-1]] == stream[: n * block_size]
    assert len(stream) - (n * block_size + 1) < block_size  # only a short tail is dropped


def test_eos_at_document_ends(jsonl_file, tok, tmp_path):
    path, docs = jsonl_file
    ds = load_documents([path])
    packed = pack_blocks(ds, tok, 16)
    blocks = packed["input_ids"][:]
    stream = [t for b in blocks for t in b[:-1]] + [blocks[-1][-1]]
    eos = tok.eos_token_id
    expected = []
    for d in docs:
        expected += tok(d, add_special_tokens=False)["input_ids"] + [eos]
    assert stream == expected[: len(stream)]
    # a text file is one document: a single EOS, at its very end
    txt = tmp_path / "one.txt"
    txt.write_text("a\nb\nc\n")
    rows = load_documents([str(txt)])
    packed = pack_blocks(rows, tok, 1)
    flat = [b[0] for b in packed["input_ids"][:]] + [packed["input_ids"][:][-1][1]]
    assert flat.count(eos) == 1 and flat[-1] == eos


def test_cached_and_deterministic(text_file, tok, tmp_path, monkeypatch):
    import datasets

    train, _ = load_text_splits([text_file])
    first = pack_blocks(train, tok, 8)
    assert first.cache_files and all(Path(f["filename"]).exists() for f in first.cache_files)
    again = pack_blocks(*load_text_splits([text_file])[:1], tok, 8)
    assert again._fingerprint == first._fingerprint  # found again in the Arrow cache
    assert again.cache_files == first.cache_files
    # a fresh cache in another directory gives the same blocks, in the same order
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "other_cache"))
    fresh = pack_blocks(load_text_splits([text_file])[0], tok, 8)
    assert fresh.cache_files != first.cache_files
    assert fresh["input_ids"][:] == first["input_ids"][:]


def test_num_proc_gives_same_blocks(jsonl_file, tok):
    ds = load_documents([jsonl_file[0]])
    assert pack_blocks(ds, tok, 8, num_proc=2)["input_ids"][:] == pack_blocks(ds, tok, 8)["input_ids"][:]


def test_corpus_stats(jsonl_file, text_file, tok):
    path, docs = jsonl_file
    stats = corpus_stats(load_documents([path]), tok)
    n_tokens = sum(len(tok(d, add_special_tokens=False)["input_ids"]) for d in docs)  # no EOS
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    assert stats == {"num_bytes": n_bytes, "num_tokens": n_tokens, "bytes_per_token": n_bytes / n_tokens}
    train, val = load_text_splits([text_file])
    s_train, s_val = corpus_stats(train, tok), corpus_stats(val, tok)
    assert s_train["num_bytes"] + s_val["num_bytes"] == len(TEXT.encode("utf-8"))
    assert s_train["bytes_per_token"] > 1.0  # BPE merged something


def test_packed_blocks_torch(text_file, tok):
    packed = pack_blocks(load_documents([text_file]), tok, 8)
    blocks = PackedBlocks(packed)
    assert len(blocks) == len(packed) and blocks.block_size == 8
    x = blocks[0]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.int64 and x.shape == (9,)
    assert x.tolist() == packed[0]["input_ids"]
    assert torch.equal(blocks[-1], blocks[len(blocks) - 1])
    with pytest.raises(IndexError, match="out of range"):
        blocks[len(blocks)]
    loader = torch.utils.data.DataLoader(blocks, batch_size=4, shuffle=False)
    batch = next(iter(loader))
    assert batch.shape == (4, 9) and batch.dtype == torch.int64
    assert torch.equal(batch[1], blocks[1])
    assert torch.equal(batch[0, 1:][-1], batch[1, 0])  # consecutive blocks overlap by one


# ----------------------------------------------------------------------------- errors


def test_too_few_tokens(tmp_path, tok):
    path = tmp_path / "short.txt"
    path.write_text("hi")
    ds = load_documents([str(path)])
    n = len(tok("hi", add_special_tokens=False)["input_ids"]) + 1  # + EOS
    with pytest.raises(ValueError, match=rf"has {n} tokens .*block_size=64.*smaller block_size or more data"):
        pack_blocks(ds, tok, 64)


@pytest.mark.parametrize("block_size", [0, -3, 2.5, True])
def test_bad_block_size(text_file, tok, block_size):
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        pack_blocks(load_documents([text_file]), tok, block_size)


def test_bad_inputs(text_file, tok):
    ds = load_documents([text_file])
    no_eos = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer)
    with pytest.raises(ValueError, match="no eos_token"):
        pack_blocks(ds, no_eos, 8)
    with pytest.raises(ValueError, match="columns 'text' and 'doc_end'"):
        pack_blocks(ds.remove_columns("doc_end"), tok, 8)
    with pytest.raises(ValueError, match="column 'input_ids'"):
        PackedBlocks(ds)
