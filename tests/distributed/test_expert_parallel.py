"""Expert parallelism (train.expert_parallel_size) on 2 CPU ranks (gloo): the losses of a 1-rank
run with the same global batch under ZeRO 0/1/2, checkpoints with one file per expert, exact
resume, the export (live and from the checkpoint) loading without DeepSpeed, and bad input."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import spikelm  # noqa: F401  (registers the Auto classes)
from spikelm import flavour_config
from spikelm.train.expert_parallel import check_expert_parallel

from .conftest import env, losses, one_rank_run, torchrun, train_args

pytestmark = pytest.mark.slow


def moe_args(corpus, run_dir, **over) -> list[str]:
    args = train_args(corpus, run_dir, **over)
    args[1] = "moe-debug"  # 1 shared + top-1 of 4 routed experts in layer 1
    return args


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """Baseline: 1 rank holding all experts, micro-batch 2 x 2 accumulation = global batch 4."""
    corpus, run = one_rank_run(tmp_path_factory.mktemp("one"), moe_args)
    return corpus, losses(run), run


def logits(model_dir, ids):
    m = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return m(ids).logits


@pytest.mark.parametrize("stage", [1, 2])
def test_two_ranks_with_ep_2_match_one_rank(one_rank, stage, tmp_path):
    corpus, base, base_run = one_rank
    run = tmp_path / "run"
    over = {"train.zero_stage": stage, "train.grad_accum": 1, "train.expert_parallel_size": 2}
    out = torchrun(moe_args(corpus, run, **over))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 of 4 experts per rank" in out.stdout
    two = losses(run)
    assert len(two) == len(base) == 4
    for a, b in zip(base, two):
        assert abs(a - b) < 1e-4 * max(1.0, abs(a)), (base, two)
    names = sorted(p.name for p in (run / "checkpoints" / "step4").iterdir())
    assert [n for n in names if "expert" in n] == [f"layer_0_expert_{e}_mp_rank_00_model_states.pt" for e in range(4)]
    ids = torch.randint(0, 280, (2, 12))
    ref = logits(base_run / "final", ids)
    assert torch.allclose(logits(run / "final", ids), ref, atol=1e-4)
    exp = subprocess.run([sys.executable, "-m", "spikelm.cli", "export", str(run), str(tmp_path / "hf")], env=env(),
                         capture_output=True, text=True, timeout=120)
    assert exp.returncode == 0, exp.stderr[-3000:]
    assert torch.allclose(logits(tmp_path / "hf", ids), logits(run / "final", ids), atol=1e-6)
    if stage == 2:  # the export is the plain model: it loads with DeepSpeed blocked
        code = ("import sys; sys.modules['deepspeed'] = None; import torch, spikelm; "
                "from transformers import AutoModelForCausalLM; "
                f"m = AutoModelForCausalLM.from_pretrained({str(run / 'final')!r}); "
                "print(type(m).__name__, sum(1 for n, _ in m.named_parameters() if '.experts.' in n))")
        res = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stdout.split()[-2:] == ["SpikeLMForCausalLM", str(4 * 3)]  # 4 experts x 3 projections


def test_ep_resume_is_exact(one_rank, tmp_path):
    corpus, base, _ = one_rank
    run = tmp_path / "run"
    over = {"train.zero_stage": 0, "train.grad_accum": 1, "train.expert_parallel_size": 2}
    assert torchrun(moe_args(corpus, run, **over)).returncode == 0
    full = losses(run)
    assert full == pytest.approx(base, rel=1e-4)  # ZeRO 0 (plain data parallelism) too
    ckpt = run / "checkpoints"
    shutil.rmtree(ckpt / "step4")
    (ckpt / "latest").write_text("step2")
    out = torchrun(moe_args(corpus, run, **over) + ["--resume"])
    assert out.returncode == 0, out.stderr[-3000:]
    again = {json.loads(l)["step"]: json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines()}
    assert [again[s] for s in (3, 4)] == pytest.approx(full[2:], abs=1e-6)


def test_bad_expert_parallel_settings_are_one_line(tmp_path, corpus, capsys):
    cfg = flavour_config("moe-debug", vocab_size=300)
    with pytest.raises(ValueError, match=r"must divide the number of ranks \(3\)"):
        check_expert_parallel(cfg, 2, 3, 0, 0)
    with pytest.raises(ValueError, match=r"must divide num_experts \(4\)"):
        check_expert_parallel(cfg, 3, 3, 0, 0)
    with pytest.raises(ValueError, match="needs MoE layers"):
        check_expert_parallel(flavour_config("hybrid-debug", vocab_size=300), 2, 2, 0, 0)
    from spikelm.cli import main

    for over, msg in [({"train.expert_parallel_size": 2}, "must divide the number of ranks (1)"),
                      ({"train.expert_parallel_size": 2, "train.zero_stage": 3}, "needs train.zero_stage 0, 1 or 2"),
                      ({"train.expert_parallel_size": 0}, "train.expert_parallel_size must be >= 1")]:
        assert main(moe_args(corpus, tmp_path / "bad", **over)) == 2  # in this process: one rank
        assert msg in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
