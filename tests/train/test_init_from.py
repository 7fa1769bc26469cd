"""ANN baseline (model.arch llama), init_from (continual pretraining from a saved model), WSD schedule."""
import json
import math
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from spikelm.cli import load_recipe
from spikelm.train.trainer import train
from spikelm.train.schedule import BatchOrder, lr_factor


def _recs(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_ann_debug_recipe_trains_a_llama(corpus, tmp_path):
    r = load_recipe("ann-debug", [f"--data.train_files=[{corpus}]", "--data.block_size=16", "--data.vocab_size=280",
                                  f"--train.run_dir={tmp_path / 'ann'}", "--train.max_steps=10",
                                  "--train.eval_every=0", "--train.checkpoint_every=0", "--train.log_every=1",
                                  "--optim.lr=1e-2", "--optim.warmup_steps=2", "--train.sample_tokens=0",
                                  "--train.threads=1"])
    assert r.model.arch == "llama"
    summary = train(r)
    losses = [x["loss"] for x in _recs(tmp_path / "ann")]
    assert len(losses) == 10 and losses[-1] < losses[0] - 0.5, losses
    assert all(x["spike_rate"] is None for x in _recs(tmp_path / "ann"))
    assert summary["val"]["loss"] < losses[0] and summary["model_flops_per_token"] > 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ann" / "final")
    assert isinstance(model, LlamaForCausalLM) and model.config.max_position_embeddings == 16
    assert sum(p.numel() for p in model.parameters()) == summary["parameters"]
    # `spikelm export` of the ANN run's checkpoint: a plain Llama directory with the same weights
    from spikelm.generation import generate_text
    from spikelm.train.export import export_checkpoint

    out = export_checkpoint(tmp_path / "ann", tmp_path / "exported")
    again = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(again, LlamaForCausalLM) and not (out / "README.md").exists()
    ids = torch.tensor([[3, 5, 7, 11]])
    torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
    assert generate_text(out, "the", max_new_tokens=4, greedy=True).startswith("the")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A spikelm debug model trained for a few steps on the test corpus: (final dir, first loss)."""
    from .conftest import train_debug_model

    run = train_debug_model(tmp_path_factory.mktemp("source"), block_size=16, max_steps=4, warmup_steps=2,
                            grad_accum=2, log_every=1)
    return run / "final", _recs(run)[0]["loss"]


def _first_batch_loss(model_dir, recipe) -> float:
    """The loss of ``model_dir``'s model on the first optimizer step's micro-batches of ``recipe``."""
    from spikelm.data import PackedBlocks, load_text_splits, load_tokenizer, pack_blocks

    r, t = recipe, recipe.train
    tok = load_tokenizer(str(model_dir))
    train_text, _ = load_text_splits(r.data.train_files, None, r.data.val_fraction)
    blocks = PackedBlocks(pack_blocks(train_text, tok, r.data.block_size))
    order = BatchOrder(len(blocks), t.micro_batch_size * t.grad_accum, t.seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    losses = []
    with torch.no_grad():
        for mb in order.rank_micro_batches(0, 0, 1, t.micro_batch_size):
            x = torch.stack([blocks[i] for i in mb])
            y = x[:, 1:].contiguous()
            losses.append(model(input_ids=x[:, :-1], labels=y, shift_labels=y).loss.item())
    return sum(losses) / len(losses)


def test_init_from_starts_at_the_source_models_loss_and_resumes(recipe, source, tmp_path):
    src = shutil.copytree(source[0], tmp_path / "src")
    r = recipe(run_dir=str(tmp_path / "cont"), max_steps=4, eval_every=0, checkpoint_every=2, seed=7)
    r.model.init_from = str(src)
    r.data.vocab_size = 999  # ignored: the tokenizer is the model directory's
    r.optim.schedule = "wsd"
    train(r)
    full = _recs(tmp_path / "cont")
    expected = _first_batch_loss(src, r)
    assert full[0]["loss"] == pytest.approx(expected, abs=1e-5)
    # the trained weights are used: well below the random init's first loss
    assert expected < source[1] - 0.3
    saved = json.loads((tmp_path / "cont" / "model_config.json").read_text())
    assert saved["hidden_size"] == 32 and saved["model_type"] == "spikelm"
    # crash after the step-2 checkpoint, then resume: the same losses (init_from is not re-read)
    shutil.rmtree(tmp_path / "cont" / "checkpoints" / "step4")
    shutil.rmtree(tmp_path / "cont" / "final")
    (tmp_path / "cont" / "checkpoints" / "latest").write_text("step2")
    shutil.move(src, tmp_path / "moved")
    train(r, resume=True)
    resumed = _recs(tmp_path / "cont")
    assert [x["loss"] for x in resumed] == [x["loss"] for x in full]


def test_init_from_errors_write_nothing(recipe, source, tmp_path):
    src = source[0]
    r = recipe(run_dir=str(tmp_path / "bad"))
    r.model.init_from = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="init_from"):
        train(r)
    r.model.init_from = str(src)
    r.model.arch = "llama"
    with pytest.raises(ValueError, match="model.arch"):
        train(r)
    r.model.arch = "spikelm"
    other = tmp_path / "other-tok"
    from spikelm.data import train_bpe_tokenizer_from_iterator

    train_bpe_tokenizer_from_iterator(["a different corpus entirely"] * 50, 270, 16).save_pretrained(other)
    r.data.tokenizer = str(other)
    with pytest.raises(ValueError, match="does not match the tokenizer"):
        train(r)
    r.data.tokenizer = None
    r.model.overrides = {"vocab_size": 512}
    with pytest.raises(ValueError, match="belong to the weights"):
        train(r)
    r.model.overrides = {}
    r.data.block_size = 100
    with pytest.raises(ValueError, match="context length"):
        train(r)
    assert not (tmp_path / "bad").exists()


def test_init_from_under_zero3_starts_at_the_source_models_loss(recipe, source, tmp_path):
    """ZeRO-3 builds the model partitioned and loads it module by module; stage 0 loads it whole
    (previous test): both start from the source's loss on the first batch."""
    r = recipe(run_dir=str(tmp_path / "z3"), max_steps=1, eval_every=0, checkpoint_every=0, zero_stage=3)
    r.model.init_from = str(source[0])
    train(r)
    assert _recs(tmp_path / "z3")[0]["loss"] == pytest.approx(_first_batch_loss(source[0], r), abs=1e-5)


def test_wsd_schedule():
    f = [lr_factor(s, 10, 100, 0.1, "wsd", 0.2) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0
    assert all(x == 1.0 for x in f[10:80])  # stable
    assert f[80] < 1.0 and f[99] == pytest.approx(0.1)  # linear decay over the last 20 steps
    assert all(a > b for a, b in zip(f[80:], f[81:]))
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(50, 10, 100, 0.1, "step")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A small random transformers Llama (GQA, 64-token context) saved with a BPE tokenizer of the test corpus."""
    from transformers import LlamaConfig

    from spikelm.data import train_bpe_tokenizer_from_iterator

    from .conftest import LINES

    d = tmp_path_factory.mktemp("llama")
    tok = train_bpe_tokenizer_from_iterator(LINES * 40, 280, 64)
    torch.manual_seed(5)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(d, max_shard_size="40KB")  # sharded: index + several files
    tok.save_pretrained(d)
    return d


def test_init_from_an_ann_converts_it_exactly(recipe, llama_dir, tmp_path):
    """softmax layout, no spiking: the converted spikelm model is the Llama (exact conversion), so the
    first training loss is the Llama's loss on that batch; the conversion is kept in run_dir/converted."""
    r = recipe(run_dir=str(tmp_path / "conv"), max_steps=2, eval_every=0, checkpoint_every=0)
    r.model.init_from = str(llama_dir)
    r.model.convert_layout, r.model.convert_spiking = "softmax", "off"
    train(r)
    assert json.loads((tmp_path / "conv" / "converted" / "config.json").read_text())["model_type"] == "spikelm"
    first = _recs(tmp_path / "conv")[0]["loss"]
    assert first == pytest.approx(_first_batch_loss(llama_dir, r), abs=1e-4)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "conv" / "final").config.mixer_types == ["swa", "swa"]
    # SpikingBrain's hybrid layout with spiking trains from the same directory
    r = recipe(run_dir=str(tmp_path / "hyb"), max_steps=2, eval_every=0, checkpoint_every=0)
    r.model.init_from, r.model.convert_layout, r.model.convert_gla_memory = str(llama_dir), "hybrid", 1.5
    train(r)
    report = json.loads((tmp_path / "hyb" / "converted" / "conversion_report.json").read_text())
    assert report["spiking"] == "ste" and report["gla_init"]["memory_tokens"] == 1.5
    assert all(math.isfinite(x["loss"]) for x in _recs(tmp_path / "hyb"))


def test_init_from_conversion_errors(recipe, llama_dir, source, tmp_path):
    r = recipe(run_dir=str(tmp_path / "bad"))
    r.model.init_from, r.model.convert_layout = str(llama_dir), "zigzag"
    with pytest.raises(ValueError, match="conversion to spikelm failed.*zigzag"):
        train(r)
    assert not (tmp_path / "bad").exists()
    r.model.init_from = str(source[0])
    with pytest.raises(ValueError, match="already a spikelm model"):
        train(r)
    r.model.init_from, r.model.convert_layout = str(llama_dir), None
    with pytest.raises(ValueError, match="convert_layout"):
        train(r)  # a llama directory with model.arch spikelm and no conversion


def test_init_from_a_hub_id_is_looked_up_and_explained_offline(recipe):
    r = recipe()
    r.model.init_from = "someone/some-spiking-model"  # not a local path: a Hub model id (tests run offline)
    with pytest.raises(FileNotFoundError, match="model.init_from.*Hub model id.*offline"):
        train(r)
