"""Two CPU ranks (gloo) under ZeRO 1/2/3 reproduce a one-rank run with the same global batch."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import spikelm  # noqa: F401  (registers the Auto classes)

from .conftest import env, losses, one_rank_run, torchrun, train_args

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """Baseline: 1 rank, micro-batch 2 x 2 accumulation = global batch 4."""
    corpus, run = one_rank_run(tmp_path_factory.mktemp("one"), train_args)
    return corpus, losses(run)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_two_ranks_match_one_rank(one_rank, stage, tmp_path):
    corpus, base = one_rank
    run = tmp_path / "run"
    # 2 ranks x micro-batch 2 x 1 accumulation = the same global batch of 4
    out = torchrun(train_args(corpus, run, **{"train.zero_stage": stage, "train.grad_accum": 1}))
    assert out.returncode == 0, out.stderr[-3000:]
    two = losses(run)
    assert len(two) == len(base) == 4
    for a, b in zip(base, two):
        assert abs(a - b) < 1e-4 * max(1.0, abs(a)), (base, two)
    if stage == 3:  # the consolidated export of a ZeRO-3 checkpoint equals the live model's export
        exp = subprocess.run([sys.executable, "-m", "spikelm.cli", "export", str(run), str(tmp_path / "hf")],
                             env=env(), capture_output=True, text=True, timeout=120)
        assert exp.returncode == 0, exp.stderr[-3000:]
        a = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
        b = AutoModelForCausalLM.from_pretrained(run / "final").eval()
        ids = torch.randint(0, 280, (2, 12))
        with torch.no_grad():
            assert torch.allclose(a(ids).logits, b(ids).logits, atol=1e-5)


def test_two_nodes_on_localhost(corpus, tmp_path):
    """Two torchrun agents (one per "node") meet through a c10d rendezvous on loopback."""
    from .conftest import free_port

    port = free_port()
    run = tmp_path / "run"
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
               "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
               "--rdzv_id", "spikelm-test", "-m", "spikelm.cli",
               *train_args(corpus, run, **{"train.grad_accum": 1, "train.zero_stage": 2})]
        procs.append(subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step4"
    assert len(losses(run)) == 4


def test_accelerate_launch_with_the_shipped_config(one_rank, tmp_path):
    """`accelerate launch --config_file launch/accelerate.yaml` places the ranks (torch.distributed
    environment); spikelm's DeepSpeed engine does the rest: the same losses as one rank."""
    from pathlib import Path

    from .conftest import free_port

    corpus, base = one_rank
    run = tmp_path / "run"
    cfg = Path(__file__).resolve().parents[2] / "launch" / "accelerate.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg), "--num_processes", "2",
           "--main_process_port", str(free_port()), "-m", "spikelm.cli",
           *train_args(corpus, run, **{"train.zero_stage": 2, "train.grad_accum": 1})]
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run / "final" / "training_summary.json").read_text())["world_size"] == 2
    for a, b in zip(base, losses(run), strict=True):
        assert abs(a - b) < 1e-4 * max(1.0, abs(a)), (base, losses(run))


def test_streamed_data_two_ranks_match_one_rank(corpus, tmp_path):
    """data.streaming: each rank reads only its streams, and 2 ranks see the same global batches
    (so the same losses) as 1 rank."""
    from spikelm.data import load_documents, train_bpe_tokenizer_from_iterator

    tok = train_bpe_tokenizer_from_iterator(load_documents([str(corpus)])["text"], 280, 16)
    tok.save_pretrained(tmp_path / "tok")
    stream = {"data.streaming": "true", "data.stream_shards": 2, "data.shuffle_buffer": 8,
              "data.val_files": f"[{corpus}]", "data.tokenizer": str(tmp_path / "tok"),
              "train.grad_accum": 1, "train.zero_stage": 2}
    one = subprocess.run([sys.executable, "-m", "spikelm.cli", *train_args(corpus, tmp_path / "one",
                          **{**stream, "train.micro_batch_size": 4})], env=env(), capture_output=True, text=True,
                         timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(train_args(corpus, tmp_path / "two", **stream))  # 2 ranks x micro-batch 2
    assert two.returncode == 0, two.stderr[-3000:]
    assert "data: 2 streams of train" in one.stdout and "data: 2 streams of train" in two.stdout
    for a, b in zip(losses(tmp_path / "one"), losses(tmp_path / "two"), strict=True):
        assert abs(a - b) < 1e-4 * max(1.0, abs(a)), (losses(tmp_path / "one"), losses(tmp_path / "two"))
