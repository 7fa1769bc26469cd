"""What a run reports while it trains: TensorBoard scalars, ``metrics.jsonl`` (one record per
step) and the tqdm progress bar, behind one context manager (:class:`RunLog`) that also drops
the records of steps a resumed run redoes."""
from __future__ import annotations

import json
from pathlib import Path

METRICS = "metrics.jsonl"
"""File of the run directory with one JSON record per optimizer step."""


def spike_rate_tensors(module) -> dict:
    """``SpikeLMModel.spike_rate_tensors()`` of the last forward pass of a (possibly peft-wrapped)
    causal LM, ``{site: 0-dim tensor}`` on the device, not read (sites ending in ``.sparsity`` are
    adaptive-spiking input sparsities); ``{}`` for a model without spikes (the Llama baseline)."""
    backbone = _backbone(module)
    return backbone.spike_rate_tensors() if hasattr(backbone, "spike_rate_tensors") else {}


def _backbone(module):
    """The ``SpikeLMModel`` (``.model``) of a possibly peft-wrapped causal LM, or None."""
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    return getattr(base, "model", None)


MOE_PREFIX = "moe."
"""Prefix of the routing statistics among :func:`step_stat_tensors`' keys."""
EXTRA_PREFIX = "extra."
"""Prefix of the trainer's other per-step values (``extra.distill_kl``, ``extra.spike_rate_penalty``):
written to ``metrics.jsonl`` and TensorBoard (``train/...``) under the rest of the name."""


def step_stat_tensors(module) -> dict:
    """What the trainer reads of a step besides its loss, ``{name: 0-dim tensor}`` on the device:
    :func:`spike_rate_tensors`, and for MoE layers their routing statistics
    (``SpikeLMModel.moe_stat_tensors``) under ``"moe.layers.{i}.{load_balance|z_loss|dropped}"``
    and ``"moe.layers.{i}.expert_load.{e}"`` (share of the kept assignments of expert ``e``)."""
    out = dict(spike_rate_tensors(module))
    backbone = _backbone(module)
    stats = backbone.moe_stat_tensors() if hasattr(backbone, "moe_stat_tensors") else {}
    for name, t in stats.items():
        if t.dim() == 0:
            out[MOE_PREFIX + name] = t
        else:
            out.update({f"{MOE_PREFIX}{name}.{e}": v for e, v in enumerate(t.unbind(0))})
    return out


def moe_summary(stats: dict[str, float]) -> dict[str, float]:
    """Means over the MoE layers of the routing statistics in ``stats`` (:func:`step_stat_tensors`
    keys, read): ``{"moe_load_balance", "moe_z_loss", "moe_dropped", "moe_max_load"}`` (the
    largest expert share, 1/E when balanced); ``{}`` without MoE layers."""
    out = {}
    for stat in ("load_balance", "z_loss", "dropped"):
        vals = [v for k, v in stats.items() if k.startswith(MOE_PREFIX) and k.endswith("." + stat)]
        if vals:
            out[f"moe_{stat}"] = sum(vals) / len(vals)
    loads: dict[str, float] = {}
    for k, v in stats.items():
        if k.startswith(MOE_PREFIX) and ".expert_load." in k:
            layer = k.split(".expert_load.")[0]
            loads[layer] = max(loads.get(layer, 0.0), v)
    if loads:
        out["moe_max_load"] = sum(loads.values()) / len(loads)
    return out


def trim_metrics(path: Path, last_step: int) -> None:
    """Keep the records of ``path`` up to ``last_step`` (a resumed run redoes the later ones)."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
        path.write_text("".join(line + "\n" for line in kept))


class RunLog:
    """TensorBoard + ``metrics.jsonl`` + tqdm for one run; every method is a no-op off rank 0.

    Use as ``with RunLog(run_dir, rank, max_steps, start_step, log_every) as log: ...``.
    Entering trims ``metrics.jsonl`` to ``start_step`` and opens the writers; leaving closes them.

    Args:
        run_dir: the run directory (``tb/`` and ``metrics.jsonl`` are written there).
        rank: the process rank (only rank 0 writes). max_steps, start_step: the bar's range.
        log_every: TensorBoard scalars every this many steps (0: only at the last step).
    """

    def __init__(self, run_dir: Path, rank: int, max_steps: int, start_step: int, log_every: int):
        self.run_dir, self.active = Path(run_dir), rank == 0
        self.max_steps, self.start_step, self.log_every = max_steps, start_step, log_every
        self.writer = self.file = self.bar = None
        self.last_eval: dict | None = None

    def __enter__(self) -> RunLog:
        from tqdm.auto import tqdm

        if self.active:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"))
            if self.start_step:
                trim_metrics(self.run_dir / METRICS, self.start_step)
            self.file = open(self.run_dir / METRICS, "a")
        self.bar = tqdm(total=self.max_steps, initial=self.start_step, disable=not self.active, desc="train",
                        unit="step", dynamic_ncols=True)
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        for f in (self.writer, self.file):
            if f is not None:
                f.close()

    def write(self, msg: str) -> None:
        """Print a line above the progress bar (rank 0)."""
        if self.active:
            self.bar.write(msg)

    def step(self, rec: dict, rates: dict[str, float]) -> None:
        """Report optimizer step ``rec["step"]``: TensorBoard (loss, lr, tokens/s, per-site spike
        rates and input sparsities, MoE routing statistics, every ``log_every`` steps), the bar,
        and — with :meth:`record` — the jsonl line. ``rates``: :func:`step_stat_tensors`' keys,
        read. Adds the mean ``spike_rate`` / ``input_sparsity`` and :func:`moe_summary` to ``rec``."""
        done = rec["step"]
        moe = {k[len(MOE_PREFIX):]: v for k, v in rates.items() if k.startswith(MOE_PREFIX)}
        extra = {k[len(EXTRA_PREFIX):]: v for k, v in rates.items() if k.startswith(EXTRA_PREFIX)}
        rates = {k: v for k, v in rates.items() if not k.startswith((MOE_PREFIX, EXTRA_PREFIX))}
        fired = {k: v for k, v in rates.items() if not k.endswith(".sparsity")}
        sparsity = {k[:-len(".sparsity")]: v for k, v in rates.items() if k.endswith(".sparsity")}
        if self.writer is not None and (self.log_every and done % self.log_every == 0 or done == self.max_steps):
            for key in ("loss", "lr", "tokens_per_s"):
                self.writer.add_scalar(f"train/{key}", rec[key], done)
            for key, v in extra.items():  # e.g. distill_kl
                self.writer.add_scalar(f"train/{key}", v, done)
            for name, v in fired.items():
                self.writer.add_scalar(f"spike_rate/{name}", v, done)
            for name, v in sparsity.items():
                self.writer.add_scalar(f"input_sparsity/{name}", v, done)
            for name, v in moe.items():  # per layer: load_balance, z_loss, dropped, expert_load.{e}
                self.writer.add_scalar(f"moe/{name}", v, done)
        rec["spike_rate"] = sum(fired.values()) / len(fired) if fired else None
        rec["input_sparsity"] = sum(sparsity.values()) / len(sparsity) if sparsity else None
        rec.update(moe_summary({MOE_PREFIX + k: v for k, v in moe.items()}))
        rec.update(extra)
        key = "bpb" if self.last_eval and "bpb" in self.last_eval else "accuracy"
        extra = {f"val_{key}": f"{self.last_eval[key]:.3f}"} if self.last_eval else {}
        self.bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:,.0f}", **extra)
        self.bar.update(1)

    def evaluation(self, rec: dict, result: dict) -> None:
        """Report a validation result at step ``rec["step"]`` (adds ``val_*`` keys to ``rec``)."""
        self.last_eval = result
        rec.update({f"val_{k}": v for k, v in result.items()})
        if self.writer is not None:
            self.writer.add_scalar("val/loss", result["loss"], rec["step"])
            for key in ("bpb", "accuracy", "macro_f1"):
                if key in result:
                    self.writer.add_scalar(f"val/{key}", result[key], rec["step"])
        scores = ", ".join(f"val {k.replace('_', '-')} {result[k]:.4f}" for k in ("bpb", "accuracy", "macro_f1")
                           if k in result)
        self.write(f"step {rec['step']}: train loss {rec['loss']:.4f}, val loss {result['loss']:.4f}, {scores}")

    def record(self, rec: dict) -> None:
        """Append ``rec`` to ``metrics.jsonl`` (flushed: a killed run keeps every finished step)."""
        if self.file is not None:
            self.file.write(json.dumps(rec) + "\n")
            self.file.flush()
