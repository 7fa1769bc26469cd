"""Strided full-context evaluation: window coverage, equality with a naive token-by-token
computation (plain HF Llama and a spikelm model), exact byte counts, evaluate_files end to end."""
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from spikelm import SpikeLMConfig, SpikeLMForCausalLM
from spikelm.data import train_bpe_tokenizer_from_iterator
from spikelm.eval.perplexity import (
    evaluate_files,
    evaluate_stream,
    strided_windows,
    token_byte_lengths,
)

from ..conftest import spiking_weights

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak. Ünïcödé – ok ✓.\n" * 3


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer_from_iterator([TEXT] * 4, vocab_size=300, model_max_length=64)


def llama(vocab):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def spiking(vocab):
    torch.manual_seed(0)
    cfg = SpikeLMConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, intermediate_size=32,
                        num_attention_heads=2, context_length=64)
    return spiking_weights(SpikeLMForCausalLM(cfg).eval(), 0.5)


@pytest.mark.parametrize("T,bs,st", [(2, 4, 4), (20, 8, 8), (20, 8, 3), (21, 5, 1), (9, 8, 5)])
def test_windows_score_every_token_once(T, bs, st):
    scored = []
    for b, e, n in strided_windows(T, bs, st):
        assert e - b <= bs and 1 <= n <= e - b
        scored += list(range(e - n + 1, e + 1))  # target positions
    assert scored == list(range(1, T))


def test_windows_errors():
    with pytest.raises(ValueError):
        strided_windows(10, 4, 5)
    with pytest.raises(ValueError):
        strided_windows(1, 4, 4)


def naive(model, ids, bs, st):
    """Token by token: each target's logits from its own window prefix, one forward per token."""
    total, n = 0.0, 0
    for b, e, k in strided_windows(len(ids), bs, st):
        for p in range(e - k + 1, e + 1):
            logits = model(input_ids=ids[None, b:p]).logits[0, -1].double()
            total -= torch.log_softmax(logits, -1)[ids[p]].item()
            n += 1
    return total, n


@pytest.mark.parametrize("make", [llama, spiking], ids=["llama", "spikelm"])
@pytest.mark.parametrize("bs,st", [(8, 8), (8, 3)])
def test_strided_equals_naive(tok, make, bs, st):
    model = make(len(tok))
    ids = torch.tensor(tok(TEXT[:80])["input_ids"])[:23]
    r = evaluate_stream(model, ids, token_byte_lengths(tok), block_size=bs, stride=st, batch_size=2)
    total, n = naive(model, ids, bs, st)
    assert r["tokens"] == n == len(ids) - 1
    assert r["loss"] == pytest.approx(total / n, rel=1e-5)
    assert (r["block_size"], r["stride"]) == (bs, st)
    assert r["bytes"] == len(tok.decode(ids[1:].tolist()).encode())
    assert r["bpb"] == pytest.approx(total / (math.log(2) * r["bytes"]), rel=1e-5)
    assert (len(r["spike_rates"]) > 0) == (make is spiking)


def test_byte_lengths_exact(tok):
    lens = token_byte_lengths(tok)
    ids = tok(TEXT)["input_ids"]
    assert int(lens[ids].sum()) == len(TEXT.encode("utf-8"))
    assert lens[tok.eos_token_id] == 0


def test_evaluate_files(tok, tmp_path):
    d = tmp_path / "llama"
    llama(len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    f = tmp_path / "val.txt"
    f.write_text(TEXT)
    r = evaluate_files(d, [str(f)], block_size=16, batch_size=4, text_field="text")  # the CLI's call
    assert set(r) >= {"loss", "bpb", "perplexity", "tokens", "bytes", "spike_rates", "stride", "block_size"}
    assert r["stride"] == 16
    first = tok(TEXT.splitlines(keepends=True)[0])["input_ids"][0]
    assert r["bytes"] == len(TEXT.encode()) - token_byte_lengths(tok)[first]
    r2 = evaluate_files(d, [str(f)], block_size=16, stride=4, batch_size=4)
    assert r2["tokens"] == r["tokens"] and r2["bytes"] == r["bytes"]
    assert r2["perplexity"] == pytest.approx(math.exp(r2["loss"]))
    with pytest.raises(FileNotFoundError):
        evaluate_files(tmp_path / "nope", [str(f)])
