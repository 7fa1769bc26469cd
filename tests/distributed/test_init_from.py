"""model.init_from under ZeRO-3 on two CPU ranks: the partitioned model, loaded module by module,
starts where a one-rank ZeRO-0 run from the same directory starts."""
import json
import subprocess
import sys

import pytest
import torch

from .conftest import LINES, env, losses, torchrun, train_args

pytestmark = pytest.mark.slow


@pytest.fixture
def source(tmp_path):
    """A spikelm debug model with weights far from any seed's init (scaled random), and a tokenizer."""
    import spikelm  # noqa: F401
    from spikelm import SpikeLMForCausalLM, flavour_config
    from spikelm.data import train_bpe_tokenizer_from_iterator

    tok = train_bpe_tokenizer_from_iterator(LINES * 40, 280, 16)
    torch.manual_seed(11)
    model = SpikeLMForCausalLM(flavour_config("debug", vocab_size=len(tok), context_length=16,
                                              eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
                                              bos_token_id=tok.eos_token_id))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    d = tmp_path / "src"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_zero3_two_ranks_start_from_the_same_weights(corpus, source, tmp_path):
    over = {"model.init_from": str(source), "train.max_steps": 2, "train.eval_every": 0, "train.checkpoint_every": 0}
    one = subprocess.run([sys.executable, "-m", "spikelm.cli", *train_args(corpus, tmp_path / "one", **over)],
                         env=env(), capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(train_args(corpus, tmp_path / "two", **over, **{"train.zero_stage": 3, "train.grad_accum": 1}))
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 2
    assert a == pytest.approx(b, abs=1e-4), (a, b)
    cfg = json.loads((tmp_path / "two" / "model_config.json").read_text())
    assert cfg["hidden_size"] == 32 and "weights of" in two.stdout
    assert a[0] == pytest.approx(_first_batch_loss(source, corpus), abs=1e-4)  # the source's weights


def _first_batch_loss(model_dir, corpus) -> float:
    """Loss of ``model_dir`` on the first global batch (4 blocks of 16, seed 1337) of train_args' runs."""
    from transformers import AutoModelForCausalLM

    from spikelm.data import PackedBlocks, load_text_splits, load_tokenizer, pack_blocks
    from spikelm.train.schedule import BatchOrder

    train_text, _ = load_text_splits([str(corpus)], None, 0.1)
    blocks = PackedBlocks(pack_blocks(train_text, load_tokenizer(str(model_dir)), 16))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    out = []
    with torch.no_grad():
        for mb in BatchOrder(len(blocks), 4, 1337).rank_micro_batches(0, 0, 1, 2):
            x = torch.stack([blocks[i] for i in mb])
            y = x[:, 1:].contiguous()
            out.append(model(input_ids=x[:, :-1], labels=y, shift_labels=y).loss.item())
    return sum(out) / len(out)
