"""Training from streamed data (data.streaming): trains, resumes exactly, explains bad settings."""
import json
import shutil

import pytest

from spikelm.data import load_documents, train_bpe_tokenizer_from_iterator
from spikelm.train.config import validate_recipe
from spikelm.train.trainer import train


@pytest.fixture
def streaming_recipe(recipe, corpus, tmp_path):
    tok = train_bpe_tokenizer_from_iterator(load_documents([str(corpus)])["text"], 280, 16)
    tok.save_pretrained(tmp_path / "tok")

    def make(**kw):
        r = recipe(**kw)
        r.data.streaming, r.data.stream_shards, r.data.shuffle_buffer = True, 2, 8
        r.data.val_files, r.data.tokenizer = [str(corpus)], str(tmp_path / "tok")
        return r
    return make


def _recs(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_streamed_training_learns_and_resumes_exactly(streaming_recipe, tmp_path):
    run = tmp_path / "run"
    summary = train(streaming_recipe(max_steps=8, eval_every=4, checkpoint_every=4))
    full = _recs(run)
    assert full[-1]["loss"] < full[0]["loss"] and summary["val"]["loss"] < full[0]["loss"]
    assert full[0]["epoch"] is None  # a stream's length is unknown
    # crash right after the step-4 checkpoint, then resume: the streams are replayed to step 4
    shutil.rmtree(run / "checkpoints" / "step8")
    shutil.rmtree(run / "final")
    (run / "checkpoints" / "latest").write_text("step4")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full[:4]))
    train(streaming_recipe(max_steps=8, eval_every=4, checkpoint_every=4), resume=True)
    resumed = _recs(run)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]


def test_streaming_settings_are_checked(streaming_recipe):
    r = streaming_recipe()
    r.data.val_files = None
    with pytest.raises(ValueError, match="needs data.val_files"):
        validate_recipe(r)
    r = streaming_recipe()
    r.data.tokenizer = None
    with pytest.raises(ValueError, match="trained tokenizer"):
        validate_recipe(r)
    r = streaming_recipe(micro_batch_size=3, grad_accum=1)  # global batch 3, 2 streams
    with pytest.raises(ValueError, match="multiple of data.stream_shards"):
        train(r)
