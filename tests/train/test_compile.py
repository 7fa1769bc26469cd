"""``train.compile``: every layout's blocks compile without a graph break (the recurrent kernels
are custom ops), compiled training repeats eager training, and the result generates.

In the full suite these tests run in a fresh interpreter (``test_in_a_fresh_process``): after
hundreds of other tests in one process (the Triton interpreter, other compiled code, the
harness's scipy/sklearn) Dynamo once crashed with a segfault while tracing here, which a fresh
process never did. ``SPIKELM_COMPILE_TESTS=here`` runs them in the calling process.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spikelm.models.flavours import flavour_config
from spikelm.models.modeling_spikelm import SpikeLMForCausalLM
from spikelm.train.compile import block_list, compile_blocks
from spikelm.train.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    Recipe,
    TrainConfig,
)
from spikelm.train.trainer import train

from .conftest import LINES

# (flavour, layout keys): SpikeGPT (rwkv4 + channel_mix + LIF, and with PLIF), Spikformer SSA, SDSA, GLA with
# adaptive spiking, SWA, and SpikingBrain's GLA/SWA hybrid
LAYOUTS = {
    "rwkv4": ("debug", {}),
    "rwkv4-plif": ("debug", {"neuron": "plif"}),
    "ssa": ("spikformer-debug", {}),
    "sdsa": ("debug", {"mixer_types": "sdsa"}),
    "gla": ("hybrid-debug", {"mixer_types": "gla"}),
    "swa": ("hybrid-debug", {"mixer_types": "swa"}),
    "hybrid": ("hybrid-debug", {}),
}


HERE = os.environ.get("SPIKELM_COMPILE_TESTS") == "here"
in_child = pytest.mark.skipif(not HERE, reason="runs in a fresh process: test_in_a_fresh_process")


@pytest.mark.slow
@pytest.mark.skipif(HERE, reason="this is the fresh process")
def test_in_a_fresh_process():
    env = dict(os.environ, SPIKELM_COMPILE_TESTS="here", OMP_NUM_THREADS="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)  # set by this process's one-rank group; the child makes its own
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1500, check=False)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and " failed" not in r.stdout, r.stdout[-3000:]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@in_child
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_block_compiles_fullgraph_and_matches_eager(layout):
    flavour, keys = LAYOUTS[layout]
    torch.manual_seed(0)
    model = SpikeLMForCausalLM(flavour_config(flavour, vocab_size=64, **keys))
    for block in block_list(model):
        x = torch.randn(2, 13, model.config.hidden_size, requires_grad=True)  # 13: not a chunk multiple
        y_ref, state_ref = block(x)
        (g_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
        compiled = torch.compile(block, fullgraph=True)  # a graph break raises here
        y, state = compiled(x)
        (g,) = torch.autograd.grad(y.square().sum(), x)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)
        for a, b in zip(torch.utils._pytree.tree_leaves(state), torch.utils._pytree.tree_leaves(state_ref)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _recipe(tmp_path, name, flavour, keys, compile_):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(LINES * 40) + "\n")
    return Recipe(model=ModelConfig(flavour=flavour, **keys),
                  data=DataConfig(train_files=[str(corpus)], vocab_size=280, block_size=16),
                  optim=OptimConfig(lr=3e-3, warmup_steps=1),
                  train=TrainConfig(run_dir=str(tmp_path / name), max_steps=5, micro_batch_size=2, grad_accum=2,
                                    eval_every=0, checkpoint_every=0, log_every=5, sample_tokens=0, threads=1,
                                    compile=compile_))


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@in_child
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_compiled_training_equals_eager_and_generates(layout, tmp_path):
    from transformers import AutoModelForCausalLM

    flavour, keys = LAYOUTS[layout]
    eager = train(_recipe(tmp_path, "eager", flavour, keys, False))
    compiled = train(_recipe(tmp_path, "compiled", flavour, keys, True))
    assert len(_losses(tmp_path / "compiled")) == 5
    assert _losses(tmp_path / "compiled") == pytest.approx(_losses(tmp_path / "eager"), abs=1e-5)
    assert compiled["val"]["loss"] == pytest.approx(eager["val"]["loss"], abs=1e-5)
    # the export holds the eager parameter names: it loads and generates without torch.compile
    model = AutoModelForCausalLM.from_pretrained(compiled["final_dir"])
    ids = torch.tensor([[1, 2, 3]])
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)
    ref = AutoModelForCausalLM.from_pretrained(eager["final_dir"]).generate(ids, max_new_tokens=4, do_sample=False)
    assert out.tolist() == ref.tolist()


@in_child
def test_compile_blocks_counts_and_keeps_parameter_names():
    model = SpikeLMForCausalLM(flavour_config("debug", vocab_size=64))
    names = [n for n, _ in model.named_parameters()]
    assert compile_blocks(model) == model.config.num_hidden_layers
    assert [n for n, _ in model.named_parameters()] == names


def test_compile_rejects_zero3_in_one_line():
    with pytest.raises(ValueError, match="train.compile needs train.zero_stage 0, 1 or 2"):
        from spikelm.train.config import validate_recipe

        validate_recipe(Recipe(train=TrainConfig(compile=True, zero_stage=3)))


def test_block_list_of_a_model_without_blocks_is_one_clear_error():
    with pytest.raises(ValueError, match="has no block list"):
        block_list(torch.nn.Linear(2, 2))
