"""Streaming data: world-size independent batches, per-rank shards, exact replay, errors."""
import json

import pytest

from spikelm.data import train_bpe_tokenizer_from_iterator
from spikelm.data.streaming import StreamingBlocks, open_stream

PARAS = [f"Speaker {i}:\nline {i} of the play, and some words {i * 7} more.\n" for i in range(400)]


@pytest.fixture
def text_file(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("\n".join(PARAS))
    return f


@pytest.fixture
def tok():
    return train_bpe_tokenizer_from_iterator(PARAS, 300, 16)


def global_batches(ds, tok, world, steps, S=4, G=8, micro=2, start=0, shuffle=8):
    """{step: sorted blocks of the global batch} gathered over all ranks of a world."""
    out = {}
    for r in range(world):
        sb = StreamingBlocks(ds, tok, 16, S, G, r, world, seed=3, shuffle_buffer=shuffle)
        for s in range(start, steps):
            mbs = sb.rank_micro_batches(s, r, world, micro)
            assert all(len(mb) == micro for mb in mbs) and len(mbs) == G // world // micro
            out.setdefault(s, []).extend(tuple(sb[i].tolist()) for mb in mbs for i in mb)
    return {s: sorted(v) for s, v in out.items()}


def test_global_batches_do_not_depend_on_the_world_size(text_file, tok):
    ds = open_stream([str(text_file)])
    one = global_batches(ds, tok, 1, 5)
    assert one == global_batches(ds, tok, 2, 5) == global_batches(ds, tok, 4, 5)
    assert all(len(v) == 8 and len(v[0]) == 17 for v in one.values())
    assert len({b for v in one.values() for b in v}) == 40  # no block twice (shuffled, not repeated)


def test_resume_replays_to_the_step(text_file, tok):
    ds = open_stream([str(text_file)])
    assert global_batches(ds, tok, 2, 7, start=4) == {s: v for s, v in global_batches(ds, tok, 2, 7).items() if s >= 4}
    sb = StreamingBlocks(ds, tok, 16, 4, 8, 0, 1, seed=3)
    sb.rank_micro_batches(3, 0, 1, 2)
    with pytest.raises(ValueError, match="forward only"):
        sb.rank_micro_batches(2, 0, 1, 2)


def test_every_token_is_a_target_once_and_blocks_overlap_by_one(text_file, tok):
    ds = open_stream([str(text_file)])
    sb = StreamingBlocks(ds, tok, 16, 1, 2, 0, 1, seed=0, shuffle_buffer=0)  # one stream, stream order
    blocks = [sb[i] for s in range(4) for mb in sb.rank_micro_batches(s, 0, 1, 2) for i in mb]
    for a, b in zip(blocks, blocks[1:]):
        assert a[-1] == b[0]
    # a text file streams as paragraphs (blank-line separated), each tokenized on its own
    ids = [t for p in PARAS[:40] for t in tok(p.rstrip("\n") + "\n\n", add_special_tokens=False)["input_ids"]]
    joined = [int(t) for b in blocks for t in b[:-1]]
    assert joined == ids[:len(joined)]


def test_each_stream_reads_only_its_files(tmp_path, tok):
    files = []
    for k in range(4):  # 4 jsonl files -> with S = 4, stream i reads file i alone
        f = tmp_path / f"part{k}.jsonl"
        f.write_text("".join(json.dumps({"text": f"file{k} doc{j} " * 6}) + "\n" for j in range(30)))
        files.append(str(f))
    ds = open_stream(files)
    assert ds.n_shards == 4
    for stream in range(4):
        sb = StreamingBlocks(ds, tok, 16, 4, 8, stream, 4, seed=0, shuffle_buffer=0)
        rows = [sb[i] for s in range(4) for mb in sb.rank_micro_batches(s, stream, 4, 2) for i in mb]
        texts = {tok.decode(r) for r in rows}
        assert all(f"file{stream}" in t and not any(f"file{o}" in t for o in range(4) if o != stream) for t in texts)
        # json records are documents: an eos after each one
        assert any(tok.eos_token_id in r.tolist() for r in rows)


def test_bad_settings_are_explained(text_file, tok, tmp_path):
    ds = open_stream([str(text_file)])
    with pytest.raises(ValueError, match="multiple of the number of ranks"):
        StreamingBlocks(ds, tok, 16, 3, 6, 0, 2, seed=0)
    with pytest.raises(ValueError, match="global batch"):
        StreamingBlocks(ds, tok, 16, 4, 6, 0, 2, seed=0)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("hi\n")
    sb = StreamingBlocks(open_stream([str(tiny)]), tok, 16, 1, 2, 0, 1, seed=0)
    with pytest.raises(ValueError, match="no complete block"):
        sb.rank_micro_batches(0, 0, 1, 2)
    with pytest.raises(FileNotFoundError):
        open_stream([str(tmp_path / "missing.txt")])
    with pytest.raises(ValueError, match="one accepted format"):
        open_stream([str(text_file), str(tmp_path / "x.jsonl")])
