"""A small corpus and a fast recipe for training tests."""
import pytest

from spikelm.train.config import DataConfig, ModelConfig, OptimConfig, Recipe, TrainConfig

LINES = ["First Citizen:", "Before we proceed any further, hear me speak.", "", "All:", "Speak, speak.", "",
         "First Citizen:", "You are all resolved rather to die than to famish?", ""]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES * 40) + "\n")
    return path


@pytest.fixture
def recipe(corpus, tmp_path):
    def make(**train_kw):
        kw = dict(run_dir=str(tmp_path / "run"), max_steps=6, micro_batch_size=2, grad_accum=2,
                  eval_every=3, checkpoint_every=3, log_every=1, sample_tokens=0,
                  threads=1)  # one torch thread: 2-thread OpenMP on a shared 2-core CPU stalls (5-10x slower)
        kw.update(train_kw)
        return Recipe(model=ModelConfig(flavour="debug"),
                      data=DataConfig(train_files=[str(corpus)], vocab_size=280, block_size=16),
                      optim=OptimConfig(lr=3e-3, warmup_steps=2), train=TrainConfig(**kw))
    return make


def train_debug_model(d, block_size: int, max_steps: int, warmup_steps: int, **train_kw):
    """Train the ``debug`` flavour on the test corpus (written to ``d/corpus.txt``) into
    ``d/run``; returns the run directory. ``train_kw``: further TrainConfig fields."""
    from spikelm.train.trainer import train

    (d / "corpus.txt").write_text("\n".join(LINES * 40) + "\n")
    kw = dict(run_dir=str(d / "run"), max_steps=max_steps, micro_batch_size=2, eval_every=0, checkpoint_every=0,
              sample_tokens=0, threads=1)
    kw.update(train_kw)
    train(Recipe(model=ModelConfig(flavour="debug"),
                 data=DataConfig(train_files=[str(d / "corpus.txt")], vocab_size=280, block_size=block_size),
                 optim=OptimConfig(lr=1e-2, warmup_steps=warmup_steps), train=TrainConfig(**kw)))
    return d / "run"
