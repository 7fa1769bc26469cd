"""The step bench (``python -m spikelm.bench.step``): a ``debug`` run reports every section with
numbers, its category times fit in the step, the launch counter is exact on known code, and
bad input is one line with exit 2."""
import json
import os
import subprocess
import sys

import pytest
import torch

from spikelm.bench import launches, profile_categories, step

SECTIONS = ("## Throughput", "## Time by category", "## Kernel launches per block", "## Host syncs")


def test_launch_counter_counts_known_code_exactly():
    x = torch.randn(8, 8, requires_grad=True)
    assert launches.count_launches(lambda: x * 2 + 1, cuda=False).total == 2   # aten::mul, aten::add
    # views, reshapes of contiguous tensors and no-op casts launch nothing
    assert launches.count_launches(lambda: x.view(64).t().reshape(8, 8).to(torch.float32), cuda=False).total == 0
    n = launches.count_launches(lambda: torch.sigmoid(x @ x).sum(), cuda=False)
    assert (n.total, dict(n.by_name)) == (3, {"aten::mm": 1, "aten::sigmoid": 1, "aten::sum": 1})
    # where with a scalar branch calls where again inside: one launch
    assert launches.count_launches(lambda: torch.where(x > 0, 0.0, x), cuda=False).total == 2   # gt, where


def test_block_launches_of_a_known_module():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8, bias=False)

        def forward(self, x):
            return (self.lin(x) * 2,)

    counts = launches.block_launches(Block(), torch.randn(2, 3, 8), interpret=False)
    assert counts["fwd"].total == 2                        # mm, mul
    # + mul backward (1), mm backward: grad input and grad weight (2); grads cleared: no accumulation
    assert counts["fwd_bwd"].total == 5


def test_categorize_claims_by_name():
    c = profile_categories.categorize
    assert c("aten::mm") == "matmul"
    assert c("spikelm::wkv4") == c("WKV4TorchFunctionBackward") == "recurrent kernels"
    assert c("spikelm::lif_multistep") == c("LIFTorchFunction") == "neurons"
    assert c("Optimizer.step#AdamW.step") == c("spikelm.bench::optimizer_step") == "optimizer"
    assert c("c10d::allreduce_") == "communication"
    assert c("aten::mul") is None


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-m", "spikelm.bench.step", "debug", "--steps", "2", "--warmup", "1",
                           "--out", str(tmp / "r.md"), "--json", str(tmp / "r.json")],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, (tmp / "r.md").read_text(), json.loads((tmp / "r.json").read_text())


def test_debug_run_reports_every_section_with_numbers(debug_run):
    stdout, md, res = debug_run
    assert md in stdout
    for section in SECTIONS:
        assert section in md
    e = res["eager"]
    assert e["tokens_per_s"] > 0 and e["step_ms"] > 0
    assert e["mfu"] is None and "n/a (CPU peak unknown)" in md
    assert e["syncs_per_step"] >= 0 and e["activation_bytes_per_token"] > 0
    label = "rwkv4+channel_mix (SpikeGPT)"
    for path in ("cpu", "gpu"):     # the CPU training path and our Triton kernels (interpreted)
        n = e["launches"][path][label]
        assert 0 < n["fwd"] < n["fwd_bwd"]
    assert f"| {label} | fwd+bwd | {e['launches']['gpu'][label]['fwd_bwd']} |" in md


def test_category_times_fit_in_the_step(debug_run):
    prof = debug_run[2]["eager"]["profile"]
    times = prof["categories"]
    assert set(times) == set(profile_categories.ORDER)
    assert all(t >= 0 for t in times.values())
    assert times["recurrent kernels"] > 0 and times["neurons"] > 0 and times["matmul"] > 0
    assert times["optimizer"] > 0
    busy = sum(t for k, t in times.items() if k != profile_categories.IDLE)
    assert busy <= prof["wall_s"] * 1.001
    assert sum(times.values()) == pytest.approx(prof["wall_s"], rel=1e-3)


@pytest.mark.parametrize("argv, fragment", [
    (["no-such-recipe", "--steps", "1"], "no-such-recipe"),
    (["debug", "--set", "train.no_such_key=1"], "no_such_key"),
])
def test_bad_input_is_one_line_and_exit_2(argv, fragment, capsys):
    assert step.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err and err.startswith("python -m spikelm.bench.step: error:")


def test_bad_set_syntax_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        step.parse_args(["debug", "--set", "block_size"])
    assert e.value.code == 2
    assert "SECTION.KEY=VALUE" in capsys.readouterr().err


@pytest.mark.slow
def test_compile_column_or_its_reason(tmp_path):
    """``--compile`` adds the compiled column side by side, or says in one line why it failed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "spikelm.bench.step", "debug", "--compile", "--steps", "1",
                           "--warmup", "2", "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True, env=env, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "r.json").read_text())
    if "compiled_error" in res:
        assert f"- compiled: failed: {res['compiled_error']}" in proc.stdout
    else:
        assert res["compiled"]["tokens_per_s"] > 0 and "| compiled/eager |" in proc.stdout
        assert res["compiled_speedup"] == pytest.approx(res["compiled"]["tokens_per_s"] / res["eager"]["tokens_per_s"])


def test_scaling_baseline_is_the_ann_twin():
    from spikelm.bench import scaling

    assert scaling.default_baseline("shakespeare") == "ann-shakespeare"
    assert scaling.default_baseline("debug") == "ann-debug"
    assert scaling.default_baseline("hybrid-debug") is None


def test_scaling_refuses_an_unknown_recipe(capsys):
    from spikelm.bench import scaling

    assert scaling.main(["no-such-recipe"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such-recipe" in err


@pytest.mark.slow
def test_scaling_debug_two_ranks(tmp_path):
    from spikelm.bench import scaling

    assert scaling.main(["debug", "--steps", "1", "--warmup", "1", "--baseline", "none",
                         "--json", str(tmp_path / "s.json")]) == 0
    r = json.loads((tmp_path / "s.json").read_text())["recipes"]["debug"]
    assert min(r["tokens_per_s"]) > 0 and r["speedup"] == pytest.approx(r["tokens_per_s"][1] / r["tokens_per_s"][0])
