"""Helpers that launch real multi-process runs (torchrun, gloo, CPU) of the debug model."""
import json
import os
import socket
import subprocess
import sys

import pytest

LINES = ["First Citizen:", "Before we proceed any further, hear me speak.", "", "All:", "Speak, speak.", "",
         "First Citizen:", "You are all resolved rather to die than to famish?", ""]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
             TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)  # the in-process tests set these; child launches must not inherit them
    return e


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES * 40) + "\n")
    return path


def train_args(corpus, run_dir, **over) -> list[str]:
    kw = {"data.train_files": f"[{corpus}]", "data.vocab_size": 280, "data.block_size": 16,
          "train.run_dir": str(run_dir), "train.max_steps": 4, "train.micro_batch_size": 2, "train.grad_accum": 2,
          "train.eval_every": 2, "train.checkpoint_every": 2, "train.sample_tokens": 0, "train.threads": 1,
          "train.collective_timeout_s": 60, "optim.warmup_steps": 1}
    kw.update(over)
    return ["train", "debug", *[f"--{k}={v}" for k, v in kw.items()]]


def torchrun(args: list[str], nproc: int = 2, timeout: int = 240, extra: list[str] | None = None, **popen):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           *(extra or ["--master_port", str(free_port())]), "-m", "spikelm.cli", *args]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, **popen)


def losses(run_dir) -> list[float]:
    return [json.loads(l)["loss"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def one_rank_run(d, args_fn) -> tuple:
    """A 1-rank baseline in ``d``: the test corpus written to ``d/corpus.txt`` and
    ``spikelm train *args_fn(corpus, d / "run")`` run to completion. Returns ``(corpus, run dir)``."""
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(LINES * 40) + "\n")
    out = subprocess.run([sys.executable, "-m", "spikelm.cli", *args_fn(corpus, d / "run")], env=env(),
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return corpus, d / "run"
