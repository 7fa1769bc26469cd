"""Instruction data: jsonl errors, chat rendering, loss masking, padded vs packed rows, the shipped QA set."""
import json
from pathlib import Path

import pytest
import torch

from spikelm.finetune import (
    DEFAULT_CHAT_TEMPLATE,
    IGNORE_INDEX,
    InstructionDataset,
    encode_example,
    ensure_chat_template,
    read_jsonl,
    shakespeare_qa_path,
)

from .conftest import MAX_LEN

QA = {"prompt": 'Who says: "To think upon you."?', "response": "Menenius."}


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- jsonl reading and bad input ------------------------------------------------------------

def test_read_jsonl_skips_malformed_lines_with_file_line_and_count(tmp_path):
    f = _write(tmp_path / "data.jsonl", [json.dumps(QA), '{"prompt": "a", "response": ', "", "[1, 2]",
                                         json.dumps(QA)])
    records, warnings = read_jsonl(f, on_error="skip")
    assert records == [QA, QA]
    assert [r.where for r in records] == [f"{f}:1", f"{f}:5"]
    assert warnings[0].startswith(f"{f}:2: invalid JSON")
    assert warnings[1].startswith(f"{f}:4: expected a JSON object")
    assert warnings[-1] == f"{f}: skipped 2 malformed line(s) of 4"


def test_read_jsonl_abort_names_file_and_line(tmp_path):
    f = _write(tmp_path / "data.jsonl", [json.dumps(QA), json.dumps(QA), "{oops}"])
    with pytest.raises(ValueError, match=rf"^{f}:3: invalid JSON"):
        read_jsonl(f, on_error="abort")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_missing_field_is_named_with_file_and_line(tmp_path, tok):
    f = _write(tmp_path / "d.jsonl", [json.dumps(QA), json.dumps({"prompt": "Who?"}),
                                      json.dumps({"messages": [{"role": "user"}]}), json.dumps({"question": "x"})])
    with pytest.raises(ValueError, match=rf"^{f}:2: missing field 'response'"):
        InstructionDataset(f, tok, max_length=MAX_LEN, on_error="abort")
    ds = InstructionDataset(f, tok, max_length=MAX_LEN, on_error="skip")
    assert ds.num_examples == 1 and ds.num_skipped == 3
    assert any(w.startswith(f"{f}:2: missing field 'response'") for w in ds.warnings)
    assert any(w.startswith(f"{f}:3: messages[0]: missing field 'content'") for w in ds.warnings)
    assert any(w.startswith(f"{f}:4: missing field 'prompt' and 'response', or 'messages'") for w in ds.warnings)
    bad_only = _write(tmp_path / "bad.jsonl", [json.dumps({"question": "x"})])
    with pytest.raises(ValueError, match="no usable instruction example"):
        InstructionDataset(bad_only, tok, max_length=MAX_LEN)


def test_messages_need_a_chat_template_and_an_assistant_turn(tok):
    tok.chat_template = None
    with pytest.raises(ValueError, match="needs a chat template"):
        encode_example({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, tok)
    ensure_chat_template(tok)
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
    with pytest.raises(ValueError, match="no 'assistant' turn"):
        encode_example({"messages": [{"role": "user", "content": "hi"}]}, tok)
    with pytest.raises(ValueError, match="role 'bot'"):
        encode_example({"messages": [{"role": "bot", "content": "hi"}]}, tok)


# --- rendering and masking ------------------------------------------------------------------

def test_prompt_response_chat_labels_only_the_answer_and_eos(tok):
    ex = encode_example(QA, tok)
    ids, labels = ex["input_ids"], ex["labels"]
    assert len(ids) == len(labels)
    # the prompt is exactly what the pipeline feeds the model: the chat with the generation prompt
    prompt_ids = tok.apply_chat_template([{"role": "user", "content": QA["prompt"]}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]
    n = len(prompt_ids)
    assert ids[:n] == prompt_ids
    assert labels[:n] == [IGNORE_INDEX] * n
    assert labels[n:] == ids[n:]
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids[n:-1]) == QA["response"]


def test_raw_prompt_response_without_template(tok):
    ex = encode_example(QA, tok, chat=False)
    p = tok(QA["prompt"], add_special_tokens=False)["input_ids"]
    r = tok(QA["response"], add_special_tokens=False)["input_ids"]
    assert ex["input_ids"] == p + r + [tok.eos_token_id]
    assert ex["labels"] == [IGNORE_INDEX] * len(p) + r + [tok.eos_token_id]


def test_multi_turn_masks_system_and_user_turns(tok):
    msgs = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Who is Romeo?"},
            {"role": "assistant", "content": "A Montague."}, {"role": "user", "content": "And Juliet?"},
            {"role": "assistant", "content": "A Capulet."}]
    ex = encode_example({"messages": msgs}, tok)
    kept = [t for t in ex["labels"] if t != IGNORE_INDEX]
    eos = tok.eos_token
    assert tok.decode(kept, skip_special_tokens=False) == f"A Montague.{eos}A Capulet.{eos}"
    assert tok.decode(ex["input_ids"], skip_special_tokens=False) == tok.apply_chat_template(msgs, tokenize=False)


def test_template_breaking_the_prefix_property_is_refused(tok):
    # the generation prompt says "<|bot|>" but assistant turns render as "<|assistant|>"
    ensure_chat_template(tok, DEFAULT_CHAT_TEMPLATE.replace("'<|assistant|>\\n'", "'<|bot|>\\n'"))
    with pytest.raises(ValueError, match="token prefix"):
        encode_example(QA, tok)
    with pytest.raises(ValueError, match="token prefix"):  # not skipped as a bad record: the template is wrong
        InstructionDataset([QA, QA], tok, max_length=MAX_LEN, on_error="skip")


def test_loss_masking_puts_no_gradient_on_prompt_tokens(tok, pretrained):
    ds = InstructionDataset([QA, {"prompt": "Complete: O Romeo, Romeo ...", "response": "wherefore art thou Romeo?"}],
                            tok, max_length=64, packing="pad")
    batch = {k: torch.stack([ds[i][k] for i in range(len(ds))]) for k in ds[0]}
    labels = batch["labels"]
    out = pretrained(**batch, use_cache=False)
    out.logits.retain_grad()
    out.loss.backward()
    grad = out.logits.grad  # [B, L, V]; logits[:, t] predict labels[:, t + 1]
    target = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1)
    masked = target == IGNORE_INDEX
    assert masked.any() and (~masked).any()
    assert torch.equal(grad[masked], torch.zeros_like(grad[masked]))  # exactly zero on prompt and padding
    assert (grad[~masked].abs().sum(-1) > 0).all()
    # and the loss is the mean cross-entropy over the response tokens only
    logp = torch.log_softmax(out.logits.detach().float(), -1)
    nll = -logp[~masked].gather(-1, target[~masked][:, None]).squeeze(-1)
    torch.testing.assert_close(out.loss.detach(), nll.mean(), rtol=1e-5, atol=1e-6)
    # prompt tokens in the input are labelled -100, response tokens and the closing eos are not
    row = ds[0]
    ex = encode_example(QA, tok)
    n = int(row["attention_mask"].sum())
    assert row["labels"][:n].tolist() == ex["labels"] and row["labels"][n:].eq(IGNORE_INDEX).all()


# --- padded vs packed -----------------------------------------------------------------------

def _records():
    return read_jsonl(shakespeare_qa_path("val"))[0][:20]


def test_padded_rows(tok):
    ds = InstructionDataset(_records(), tok, max_length=MAX_LEN, packing="pad")
    assert len(ds) == ds.num_examples == 20
    for i in range(len(ds)):
        row = ds[i]
        assert all(v.shape == (MAX_LEN,) and v.dtype == torch.long for v in row.values())
        n = int(row["attention_mask"].sum())
        assert row["attention_mask"][:n].all() and not row["attention_mask"][n:].any()  # right padding
        assert row["input_ids"][n:].eq(tok.pad_token_id).all() and row["labels"][n:].eq(IGNORE_INDEX).all()
        assert row["input_ids"][n - 1] == tok.eos_token_id


def test_packed_and_padded_train_on_the_same_targets_with_the_same_loss(tok, pretrained):
    recs = _records()
    pad = InstructionDataset(recs, tok, max_length=MAX_LEN, packing="pad")
    pack = InstructionDataset(recs, tok, max_length=MAX_LEN, packing="pack")
    assert len(pack) < len(pad) and pack.num_target_tokens() == pad.num_target_tokens()
    assert [k for spans in pack.layout for k, _, _ in spans] == list(range(20))

    def example(ds, k):
        for r, spans in enumerate(ds.layout):
            for kk, a, b in spans:
                if kk == k:
                    return ds[r], a, b

    # the same (input, label) pairs, example by example
    for k in range(20):
        (ra, a0, b0), (rb, a1, b1) = example(pad, k), example(pack, k)
        assert torch.equal(ra["input_ids"][a0:b0], rb["input_ids"][a1:b1])
        assert torch.equal(ra["labels"][a0:b0], rb["labels"][a1:b1])
        assert rb["labels"][a1] == IGNORE_INDEX  # never trained on: nothing in the example predicts it
    # per-example loss with the model: identical for examples that start a packed row (fresh
    # state, as in a padded row); later examples see the state the earlier ones left (documented)
    def nll(logits, labels):  # per-example loss; logits[t] predict labels[t + 1]
        return torch.nn.functional.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=IGNORE_INDEX)

    pretrained.eval()
    with torch.no_grad():
        rows_a = {k: torch.stack([pad[i][k] for i in range(len(pad))]) for k in pad[0]}
        rows_b = {k: torch.stack([pack[i][k] for i in range(len(pack))]) for k in pack[0]}
        logits_a = pretrained(input_ids=rows_a["input_ids"], attention_mask=rows_a["attention_mask"],
                              use_cache=False).logits
        logits_b = pretrained(input_ids=rows_b["input_ids"], attention_mask=rows_b["attention_mask"],
                              use_cache=False).logits
    firsts = 0
    for r, spans in enumerate(pack.layout):
        for k, a, b in spans:
            (_, a0, b0), i = example(pad, k), k  # padded row i holds example k
            la = nll(logits_a[i, a0:b0], rows_a["labels"][i, a0:b0])
            lb = nll(logits_b[r, a:b], rows_b["labels"][r, a:b])
            if a == 0:
                torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
                firsts += 1
            assert torch.isfinite(lb)
    assert firsts == len(pack)


def test_overlong_examples_truncate_or_skip_with_counts(tok):
    long = {"prompt": "Say it.", "response": "Romeo " * 80}
    prompt_only = {"prompt": "Romeo " * 80, "response": "yes"}
    recs = [QA, long, prompt_only]
    assert len(encode_example(QA, tok)["input_ids"]) <= 48
    ds = InstructionDataset(recs, tok, max_length=48, overlong="truncate")
    assert (ds.num_examples, ds.num_truncated, ds.num_skipped) == (2, 1, 1)
    assert ds.warnings[-1] == ("records: 2 example(s) longer than max_length=48: 1 truncated, "
                               "1 skipped (the prompt alone fills max_length)")
    assert ds[1]["attention_mask"].all()
    ds = InstructionDataset(recs, tok, max_length=48, overlong="skip")
    assert (ds.num_examples, ds.num_truncated, ds.num_skipped) == (1, 0, 2)
    assert ds.warnings[-1] == "records: 2 example(s) longer than max_length=48: skipped"
    with pytest.raises(ValueError, match="packing must be"):
        InstructionDataset(recs, tok, max_length=48, packing="concat")


# --- the shipped QA set ---------------------------------------------------------------------

def test_shipped_qa_set_is_reproducible_small_and_fits_the_default_context(tok):
    from spikelm.data import tiny_shakespeare_path
    from spikelm.finetune.make_shakespeare_qa import build

    train, val = build(open(tiny_shakespeare_path(), encoding="utf-8").read())
    for split, recs in (("train", train), ("val", val)):
        path = Path(shakespeare_qa_path(split))
        assert path.stat().st_size < 200_000
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
        assert path.read_text(encoding="utf-8") == text  # regenerated byte for byte
    assert len(train) == 200 and len(val) == 50
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in val}
    ds = InstructionDataset(shakespeare_qa_path("train"), tok, max_length=MAX_LEN)
    assert ds.warnings == [] and ds.num_examples == 200 and ds.num_truncated == 0


def test_read_jsonl_keeps_records_with_unicode_line_separators_and_a_bom(tmp_path):
    """JSON strings may hold U+2028 / U+0085 unescaped (json.dumps(ensure_ascii=False) writes them),
    and editors may start a file with a byte-order mark: neither loses a record."""
    recs = [{"prompt": "a\u2028b", "response": "x"}, {"prompt": "x\x85y", "response": "z"}, {"prompt": "p", "response": "r"}]
    f = tmp_path / "u.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in recs), encoding="utf-8-sig")
    got, warnings = read_jsonl(f)
    assert [dict(r) for r in got] == recs and warnings == []

