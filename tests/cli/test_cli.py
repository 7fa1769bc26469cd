"""The ``spikelm`` command: bad input gives one clear error and exit status 2; generate and eval work."""
import json
import subprocess
import sys

import pytest

from spikelm.cli import main
from spikelm.data import train_bpe_tokenizer_from_iterator
from spikelm.models import SpikeLMForCausalLM, flavour_config

TEXT = ["ROMEO:\nBut soft, what light through yonder window breaks?\n", "JULIET:\nAy me.\n"] * 30


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    tok = train_bpe_tokenizer_from_iterator(TEXT, vocab_size=290, model_max_length=24)
    cfg = flavour_config("debug", vocab_size=len(tok), context_length=24, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.eos_token_id)
    SpikeLMForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _err(capsys, argv):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_unknown_recipe_key(capsys, tmp_path):
    err = _err(capsys, ["train", "debug", "--train.max_stepz", "3", f"--train.run_dir={tmp_path}/r"])
    assert "max_stepz" in err and not (tmp_path / "r").exists()


def test_wrong_type(capsys, tmp_path):
    err = _err(capsys, ["train", "debug", "--train.max_steps", "many", f"--train.run_dir={tmp_path}/r"])
    assert "train.max_steps" in err and "int" in err


def test_unknown_recipe_lists_shipped(capsys):
    err = _err(capsys, ["train", "no-such-recipe"])
    assert "shakespeare" in err and "debug" in err


def test_bad_value(capsys):
    err = _err(capsys, ["train", "debug", "--train.zero_stage", "5"])
    assert "zero_stage must be 0, 1, 2 or 3" in err


def test_missing_data_file(capsys, tmp_path):
    err = _err(capsys, ["train", "debug", f"--data.train_files=[{tmp_path}/nope.txt]", f"--train.run_dir={tmp_path}/r"])
    assert "nope.txt" in err and not (tmp_path / "r").exists()


def test_empty_corpus(capsys, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    err = _err(capsys, ["train", "debug", f"--data.train_files=[{tmp_path}/empty.txt]", f"--train.run_dir={tmp_path}/r"])
    assert "empty" in err.lower() and not (tmp_path / "r").exists()


def test_block_larger_than_corpus(capsys, tmp_path):
    (tmp_path / "small.txt").write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n" * 20)
    err = _err(capsys, ["train", "debug", f"--data.train_files=[{tmp_path}/small.txt]", "--data.block_size=4096",
                        f"--train.run_dir={tmp_path}/r"])
    assert "block_size" in err and not (tmp_path / "r").exists()


def test_run_dir_with_a_run_is_not_overwritten(capsys, tmp_path):
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    err = _err(capsys, ["train", "debug", f"--train.run_dir={run}"])
    assert "--resume" in err and "--overwrite" in err
    assert (run / "metrics.jsonl").read_text() == "{}\n"


def test_generate_rejects_a_dir_without_a_causal_lm(capsys, tmp_path):
    err = _err(capsys, ["generate", str(tmp_path), "hi"])
    assert "no config.json" in err
    # a llama (the ANN baseline) is accepted; an image model is not
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    err = _err(capsys, ["generate", str(tmp_path), "hi"])
    assert "'resnet'" in err and "causal language model" in err


def test_generate_takes_a_long_prompt_file(capsys, model_dir, tmp_path):
    """A spikelm model has a recurrent state: a prompt beyond the training context (24 tokens) is
    prefilled (in chunks when longer than config.prefill_chunk_tokens), not refused."""
    prompt = tmp_path / "long.txt"
    prompt.write_text("But soft, what light " * 20)
    assert main(["generate", str(model_dir), "--prompt-file", str(prompt), "--max-new-tokens", "4", "--greedy"]) == 0
    assert capsys.readouterr().out.startswith("But soft, what light " * 20)
    assert "exactly one" in _err(capsys, ["generate", str(model_dir), "hi", "--prompt-file", str(prompt)])
    assert "exactly one" in _err(capsys, ["generate", str(model_dir)])
    assert "cannot read --prompt-file" in _err(capsys, ["generate", str(model_dir), "--prompt-file", str(tmp_path / "no")])


def test_generate_prints_text(capsys, model_dir):
    assert main(["generate", str(model_dir), "ROMEO:", "--max-new-tokens", "5", "--greedy"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")


def test_eval_reports_bpb(capsys, model_dir, tmp_path):
    f = tmp_path / "val.txt"
    f.write_text("".join(TEXT))
    assert main(["eval", str(model_dir), str(f), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["tokens"] > 0 and res["bpb"] > 0 and res["perplexity"] > 1
    assert set(res["spike_rates"]) == {"layers.0.att", "layers.0.ffn", "layers.1.att", "layers.1.ffn"}


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "spikelm.cli", "train", "--list-recipes"], capture_output=True,
                         text=True, check=True)
    assert "shakespeare" in out.stdout.split()


def test_deepspeed_launcher_local_rank_argument_is_ignored(capsys):
    assert main(["--local_rank=0", "train", "--list-recipes"]) == 0
    assert "debug" in capsys.readouterr().out.split()
