"""Tokenizer training (byte-level BPE) and loading; offline, on small generated corpora."""

import json

import pytest
from transformers import PreTrainedTokenizerFast

from spikelm.data import load_tokenizer, train_bpe_tokenizer, train_bpe_tokenizer_from_iterator

CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n"
    "Café crème, naïve façade, Übermut, señor, 東京, Ελληνικά.\n"
) * 20

ROUND_TRIP = [
    "",
    "hello world",
    "  leading and trailing spaces  ",
    "Café crème brûlée — naïve façade",
    "日本語のテキストと中文",
    "emoji 🎉🚀 and flags 🇫🇷, ZWJ 👩‍👩‍👧",
    "combining: e\u0301 a\u0308, RTL: שלום עולם مرحبا",
    "tabs\tand\r\nwindows newlines\n\n\nand a NUL \x00 byte",
    "special token text <|endoftext|> inside",
]


@pytest.fixture
def corpus_file(write_corpus):
    return write_corpus(CORPUS)


@pytest.fixture
def tok(corpus_file):
    return train_bpe_tokenizer([corpus_file], vocab_size=320, model_max_length=64)


def test_trained_tokenizer_settings(tok):
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == tok.eos_token
    assert tok.eos_token_id == tok.pad_token_id == 0
    assert tok.model_max_length == 64
    assert 257 < len(tok) <= 320  # 256 bytes + eos + some merges
    assert len(tok("Speak, speak.")["input_ids"]) < len("Speak, speak.")  # merges were learned
    # calling the tokenizer adds no special tokens
    ids = tok("hear me")["input_ids"]
    assert ids == tok("hear me", add_special_tokens=False)["input_ids"] and tok.eos_token_id not in ids


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_any_utf8(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_deterministic(corpus_file):
    a = train_bpe_tokenizer([corpus_file], vocab_size=320, model_max_length=64)
    b = train_bpe_tokenizer([corpus_file], vocab_size=320, model_max_length=64)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    c = train_bpe_tokenizer_from_iterator(CORPUS.splitlines(keepends=True), vocab_size=320, model_max_length=64)
    assert c.backend_tokenizer.to_str() == a.backend_tokenizer.to_str()  # file lines == iterator


def test_custom_eos_and_jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": line, "id": i}) + "\n" for i, line in enumerate(CORPUS.splitlines())))
    tok = train_bpe_tokenizer([str(path)], vocab_size=300, model_max_length=8, eos_token="</s>", text_field="body")
    assert tok.eos_token == tok.pad_token == "</s>" and tok.eos_token_id == 0
    assert "{" not in "".join(tok.convert_ids_to_tokens(range(257, len(tok))))  # trained on text, not JSON


def test_save_and_load_round_trip(tok, tmp_path):
    out = tmp_path / "tok"
    tok.save_pretrained(out)
    loaded = load_tokenizer(str(out))
    assert isinstance(loaded, PreTrainedTokenizerFast)
    assert loaded.model_max_length == 64 and loaded.eos_token == loaded.pad_token == "<|endoftext|>"
    for text in ROUND_TRIP:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert loaded(text, add_special_tokens=False)["input_ids"] == ids
        assert loaded.decode(ids) == text


def test_train_errors(tmp_path, corpus_file):
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        train_bpe_tokenizer([corpus_file], vocab_size=100, model_max_length=64)
    with pytest.raises(ValueError, match="model_max_length"):
        train_bpe_tokenizer([corpus_file], vocab_size=300, model_max_length=0)
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        train_bpe_tokenizer([missing], vocab_size=300, model_max_length=64)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty corpus"):
        train_bpe_tokenizer([str(empty)], vocab_size=300, model_max_length=64)


def test_load_tokenizer_errors(tmp_path):
    not_tok = tmp_path / "not_a_tokenizer"
    not_tok.mkdir()
    (not_tok / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="not a tokenizer directory") as e:
        load_tokenizer(str(not_tok))
    assert str(not_tok) in str(e.value) and "tokenizer.json" in str(e.value)

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a tokenizer directory"):
        load_tokenizer(str(a_file))

    missing = str(tmp_path / "missing_dir")
    with pytest.raises(ValueError, match="does not exist") as e:
        load_tokenizer(missing)
    assert missing in str(e.value)


def test_load_tokenizer_hub_offline():
    with pytest.raises(ValueError, match="offline") as e:
        load_tokenizer("some-org/some-tokenizer")
    assert "some-org/some-tokenizer" in str(e.value) and "not a local directory" in str(e.value)
