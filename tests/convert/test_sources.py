"""``spikelm convert`` recognises every source it reads and refuses options that do not apply."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from spikelm.cli import main
from spikelm.convert import source_kind

FIX = Path(__file__).parent / "fixtures"


def test_source_kinds(tmp_path):
    assert source_kind(FIX / "spikegpt-tiny" / "model.pth") == "spikegpt"
    assert source_kind(FIX / "spikegpt-tiny") == "spikegpt"
    assert source_kind(FIX / "spikingbrain-tiny") == "spikingbrain"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "rwkv"}))
    assert source_kind(tmp_path) == "rwkv"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert source_kind(tmp_path) == "llama"


def test_cli_converts_the_spikegpt_fixture_with_its_logits(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", str(FIX / "spikegpt-tiny" / "model.pth"), str(out), "--context-length", "32",
                 "--tokenizer", str(FIX / "spikegpt-tiny" / "tokenizer.json")]) == 0
    assert "converted spikegpt" in capsys.readouterr().out
    ids = torch.tensor(json.loads((FIX / "spikegpt-tiny" / "ids.json").read_text()))
    ref = load_file(FIX / "spikegpt-tiny" / "logits.safetensors")["logits"]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert (model(ids).logits - ref).abs().max() < 1e-4


def test_cli_converts_the_spikingbrain_fixture_exactly(tmp_path, capsys):
    assert main(["convert", str(FIX / "spikingbrain-tiny"), str(tmp_path / "out"), "--spiking", "off"]) == 0
    assert "exact: same logits as the source" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["spikegpt-tiny/model.pth"], "give --context-length N"),
    (["spikegpt-tiny/model.pth", "--context-length", "32", "--spiking", "ste"], "spiking 'ste' does not apply"),
    (["spikegpt-tiny/model.pth", "--context-length", "32", "--layout", "linear"], "takes no layout"),
    (["spikingbrain-tiny", "--context-length", "32"], "takes no context_length"),
    (["spikingbrain-tiny", "--spiking", "lif"], "spiking 'lif' does not apply"),
])
def test_options_that_do_not_apply_are_refused(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["convert", str(FIX / args[0]), str(out), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
