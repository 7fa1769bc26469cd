"""The Trainer: a validated recipe -> data, tokenizer, model, DeepSpeed engine -> steps,
evaluation, checkpoints, the final Hugging Face export.

One code path for one CPU process and for many GPUs on many nodes: the model is plain
single-device torch, DeepSpeed applies ZeRO and data parallelism around it, and the data
order is a function of the step alone (``schedule.BatchOrder``), so a resumed run repeats the
losses of an uninterrupted one.

    trainer = Trainer(recipe, resume=False, overwrite=False)   # validates, builds, writes nothing on bad input
    summary = trainer.train()                                  # train_step() per step, evaluate(), export

Everything that can fail on bad input (files, corpus, tokenizer, block size, model) runs in
``__init__`` before anything is written to the run directory.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..data.batches import batch_targets, make_batch
from ..eval.loss import batch_nll_sum, count_targets
from . import checkpoint
from .archs import build_config, describe, flops_config, load_config_file
from ..hub.ids import read_json_file
from .config import Recipe, resume_changes, validate_recipe
from .distributed import all_reduce_sum, barrier, init_distributed
from .engine import deepspeed_config, initialize, resolve_precision, zero_stage
from .export import MODEL_CONFIG, write_hf_dir
from .flops import model_flops_per_token, peak_flops
from .init_from import init_config, init_dir, init_source
from .metrics import RunLog, spike_rates
from .model_init import build_model
from .rundir import atomic_dir, check_run_dir, drop_replaced, prepare_run_dir, remove_stale_temps, restore_replaced
from .schedule import BatchOrder
from .signals import StopRequest


class Trainer:
    """A training run of one recipe on this process's rank (see the module docstring).

    Args:
        recipe: the run (validated again here: recipes built in Python are checked too).
        resume: continue the run in ``train.run_dir`` from its newest checkpoint.
        overwrite: replace the run in ``train.run_dir``.
    Raises:
        RunDirError: the run directory holds a run (no resume/overwrite) or has nothing to resume.
        ValueError / FileNotFoundError: bad data, tokenizer, weights or recipe values (the
            message names the key or file).
    """

    def __init__(self, recipe: Recipe, resume: bool = False, overwrite: bool = False):
        validate_recipe(recipe)
        self.t_start = time.time()
        self.recipe, self.resume, self.overwrite = recipe, resume, overwrite
        t = recipe.train
        if t.threads:
            torch.set_num_threads(t.threads)
        from ..kernels.dispatch import set_backend

        set_backend(t.kernel_backend)
        self.rank, self.world, self.device = init_distributed(t.collective_timeout_s)
        if self.device.type == "cpu":
            # The WKV running-max form evaluates exp() of large negative numbers; denormal results
            # make x86 arithmetic 10-100x slower (seen as sudden multi-second steps). Flush them.
            torch.set_flush_denormal(True)
        self.run_dir = Path(t.run_dir)
        check_run_dir(self.run_dir, resume, overwrite)
        stored = self.run_dir / "recipe.json"
        self.resume_changes = resume_changes(read_json_file(stored), recipe) if resume and stored.is_file() else {}
        self._setup_data()
        self._setup_model()
        # DeepSpeed checks its config (batch sizes against the world size, ZeRO options) here,
        # still before anything is written to the run directory
        self.engine, self.scheduler = initialize(self.model, recipe, self.ds_config)
        self.ckpt_dir = self.run_dir / checkpoint.CHECKPOINTS
        self.start_step = checkpoint.load_checkpoint(self.engine, self.ckpt_dir, self.device, self.log) if resume else 0
        if resume:
            self.log(f"resumed from {self.ckpt_dir} at step {self.start_step}")
        self._write_run_start()
        r = recipe
        self.order = self.train_blocks if r.data.streaming else \
            BatchOrder(len(self.train_blocks), t.micro_batch_size * t.grad_accum * self.world, t.seed)
        self.tokens_per_step = self.order.global_batch * r.data.block_size

    def log(self, msg: str) -> None:
        """Print ``msg`` on rank 0."""
        if self.rank == 0:
            print(msg, flush=True)

    # -- setup ---------------------------------------------------------------------------------

    def _setup_data(self) -> None:
        """Texts, the starting weights' directory and config, the tokenizer, then the splits."""
        from ..data.run_data import build_splits, read_texts
        from ..data.run_tokenizer import build_run_tokenizer

        r = self.recipe
        texts = read_texts(r)
        # resume: the run's own config (the checkpoint holds the weights); else init_from's or a fresh one
        self.src = None if self.resume else init_source(r, self.rank, self.run_dir)
        saved = self.run_dir / MODEL_CONFIG
        self.config = load_config_file(saved) if self.resume and saved.is_file() \
            else init_config(r, self.src) if self.src is not None else None
        self.tok = build_run_tokenizer(r, self.run_dir, self.resume, self.rank, texts.train,
                                       model_dir=self.src, model_config=self.config)
        data = build_splits(r, texts, self.tok, self.rank, self.world)
        for w in data.warnings:
            self.log(f"data warning: {w}")
        self.train_blocks, self.val_blocks, self.val_bytes_per_token = data.train, data.val, data.val_bytes_per_token
        self.text = r.data.format == "text"
        n_train = f"{r.data.stream_shards} streams of" if r.data.streaming else len(data.train)
        self.log(f"data: {n_train} train / {len(data.val)} validation {data.unit} of {r.data.block_size} tokens; "
                 f"vocab {len(self.tok)}; validation {data.val_bytes_per_token:.3f} bytes/token")

    def _fresh_config(self):
        """A new model's config: the flavour and layout keys plus the data's vocabulary, context and
        special token ids (``archs.build_config``)."""
        m, tok = self.recipe.model, self.tok
        eos = tok.eos_token_id
        return build_config(m.arch, m.flavour, m.layout(), vocab_size=len(tok),
                            max_position_embeddings=self.recipe.data.block_size,
                            eos_token_id=eos, bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else eos,
                            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos)

    def _setup_model(self) -> None:
        """The model (fresh, from ``init_from``, or resumed), ZeRO-3 aware, with LoRA when asked."""
        r, t = self.recipe, self.recipe.train
        if self.config is None:
            self.config = self._fresh_config()
        self.precision = resolve_precision(t.precision, self.device)
        self.ds_config = deepspeed_config(r, self.world, self.precision)
        self.zero_stage = zero_stage(self.ds_config)
        base = init_dir(r, self.run_dir)  # a LoRA adapter names its base model by it: a local directory as an
        if base is not None:              # absolute path, a Hub id as the id (not its cache snapshot)
            self.config._name_or_path = str(base.resolve()) if base.is_dir() else r.model.init_from
        model = build_model(self.config, self.ds_config, self.zero_stage, t.seed, weights_dir=self.src)
        if t.activation_checkpointing:
            model.activation_checkpointing_enable()  # recompute each block in the backward pass
        self.n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        self.flops_per_token = model_flops_per_token(model, flops_config(self.config), r.data.block_size)
        lora = r.model.lora
        if lora.r:
            from ..finetune import apply_lora

            torch.manual_seed(t.seed)  # the adapters' init, the same on every rank
            model = apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                               target_modules=lora.target_modules)
        self.n_trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
        self.peak = peak_flops(self.device, self.precision)
        self.model = model
        origin = f"weights of {self.src}" if self.src is not None else "resumed" if self.resume else r.model.flavour
        self.log(f"model: {origin} ({describe(self.config)}), {self.n_params / 1e6:.2f}M parameters"
                 + (f"; LoRA r={lora.r}: {self.n_trainable / 1e6:.3f}M trainable" if lora.r else ""))

    def _write_run_start(self) -> None:
        """Rank 0 creates the run directory (all input is valid by now) with the tokenizer, the
        model config and ``recipe.json``."""
        if self.rank == 0:
            prepare_run_dir(self.run_dir, self.resume, self.overwrite)
            for p in remove_stale_temps(self.run_dir):
                self.log(f"removed {p}, left by an interrupted write")
            if not self.resume:
                with atomic_dir(self.run_dir / "tokenizer") as tmp:
                    self.tok.save_pretrained(tmp)
                self.config.to_json_file(str(self.run_dir / MODEL_CONFIG))
            (self.run_dir / "recipe.json").write_text(json.dumps(asdict(self.recipe), indent=2) + "\n")
            if self.resume_changes:  # what this resume applied, for the record
                with open(self.run_dir / "resumes.jsonl", "a") as f:
                    f.write(json.dumps({"changes": self.resume_changes}) + "\n")
                self.log("resuming with " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in self.resume_changes.items()))
        barrier()

    def mfu(self, tokens_per_s: float | None) -> float | None:
        """Model FLOPs utilisation at ``tokens_per_s`` over all ranks (``spikelm.train.flops``);
        None where the device's peak is unknown (CPU)."""
        if not (self.peak and tokens_per_s):
            return None
        return self.flops_per_token * tokens_per_s / (self.peak * self.world)

    # -- steps ---------------------------------------------------------------------------------

    def _loss_weighting(self, batches: list[dict]) -> dict:
        """Instruction rows hold different numbers of answer tokens: weight every token of the
        step alike (not every micro-batch). Each micro-batch loss is its token sum over
        N / (accumulation x ranks), N = the step's answer tokens on all ranks, so that DeepSpeed's
        1/accumulation and rank averaging give sum / N. Text blocks: ``{}`` (equal counts)."""
        if self.text:
            return {}
        n_local = sum(int(count_targets(batch_targets(b)[0])) for b in batches)
        n_all = all_reduce_sum([float(n_local)], self.device)[0]
        return {"num_items_in_batch": max(n_all, 1.0) / (len(batches) * self.world)}

    def train_step(self, step: int, stop_requested: bool = False) -> tuple[float, bool]:
        """Run optimizer step ``step`` (0-based): forward, backward and step of each micro-batch of
        this rank. Returns ``(mean training loss over ranks, whether any rank asked to stop)``,
        from one collective."""
        t = self.recipe.train
        micro = self.order.rank_micro_batches(step, self.rank, self.world, t.micro_batch_size)
        batches = [make_batch(self.train_blocks, mb, self.device) for mb in micro]
        extra = self._loss_weighting(batches)
        loss_sum = 0.0
        for batch in batches:
            out = self.engine(**batch, use_cache=False, **extra)
            self.engine.backward(out.loss)
            self.engine.step()
            loss_sum += out.loss.item()
        loss_sum, n_stop = all_reduce_sum([loss_sum / len(micro), float(stop_requested)], self.device)
        return loss_sum / self.world, bool(n_stop)

    def _check_finite(self, loss: float, done: int, log: RunLog) -> None:
        """Count a NaN/inf loss; raise once ``train.max_nonfinite_steps`` is passed (or at once in
        fp32, where no overflow check skipped the step)."""
        if math.isfinite(loss):
            return
        self.nonfinite += 1
        # fp16/bf16: DeepSpeed's overflow check has already skipped this optimizer step;
        # fp32 has no such check, so the (now NaN) weights end the run.
        skipped = self.precision in ("fp16", "bf16")
        msg = f"step {done}: training loss is {loss}"
        limit = self.recipe.train.max_nonfinite_steps
        if not skipped or self.nonfinite > limit:
            raise FloatingPointError(f"{msg} ({self.nonfinite} non-finite step(s), train.max_nonfinite_steps="
                                     f"{limit}, precision {self.precision}); lower optim.lr, check the data, "
                                     "or resume from the last checkpoint")
        log.write(f"{msg}; optimizer step skipped by DeepSpeed's overflow check")

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean validation loss (nats/token) over the targets of the validation split (or its first
        ``train.eval_max_batches`` batches), sharded over ranks, with bits per byte
        ``loss / ln 2 / bytes_per_token`` and perplexity. Text: every token of every block;
        instructions: the response tokens only (masked loss on held-out pairs)."""
        t, model, blocks = self.recipe.train, self.engine.module, self.val_blocks
        model.eval()
        n, bs = len(blocks), t.micro_batch_size
        starts = list(range(0, n, bs))[:t.eval_max_batches] if t.eval_max_batches is not None else range(0, n, bs)
        total, count = 0.0, 0
        for s in list(starts)[self.rank::self.world]:
            nll, k = batch_nll_sum(model, make_batch(blocks, range(s, min(s + bs, n)), self.device))
            total += nll.item()
            count += int(k)
        total, count = all_reduce_sum([total, float(count)], self.device)
        model.train()
        loss = total / max(count, 1)
        return {"loss": loss, "bpb": loss / math.log(2) / self.val_bytes_per_token,
                "perplexity": math.exp(min(loss, 50)), "tokens": int(count)}

    # -- the loop ------------------------------------------------------------------------------

    def _due(self, every: int, done: int) -> bool:
        return bool(every and done % every == 0) or done == self.recipe.train.max_steps

    def _after_step(self, done: int, loss: float, log: RunLog, stop: bool) -> None:
        """Metrics, evaluation and checkpoint of the step just done."""
        t = self.recipe.train
        self.tokens_seen += self.tokens_per_step
        elapsed = time.time() - self.t_loop
        tok_s = self.tokens_seen / max(elapsed, 1e-9)
        rec = {"step": done, "loss": loss, "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": tok_s,
               "elapsed_s": elapsed, "epoch": self.order.epoch_of(done), "mfu": self.mfu(tok_s)}
        log.step(rec, spike_rates(self.engine.module))
        if self._due(t.eval_every, done):
            log.evaluation(rec, self.evaluate())
        log.record(rec)
        if self._due(t.checkpoint_every, done) or stop:
            checkpoint.save_checkpoint(self.engine, self.ckpt_dir, done, t.keep_checkpoints, self.rank)
            if self.rank == 0 and drop_replaced(self.run_dir):  # --overwrite: the new run now stands
                log.write(f"the replaced run in {self.run_dir} is deleted now that this run has a checkpoint")

    def train(self) -> dict:
        """Train from the start (or resumed) step to ``train.max_steps``, then evaluate and export
        ``run_dir/final``. A SIGTERM/SIGINT (on any rank) stops after the current step with a
        checkpoint and no export. Returns the summary (validation loss/BPB, tokens/s, MFU, paths).

        Raises:
            FloatingPointError: non-finite losses beyond ``train.max_nonfinite_steps``.
        """
        t = self.recipe.train
        self.engine.train()
        self.nonfinite, self.tokens_seen, self.t_loop = 0, 0, time.time()
        done, stopped = self.start_step, None
        try:
            with RunLog(self.run_dir, self.rank, t.max_steps, self.start_step, t.log_every) as log, \
                    StopRequest() as stop:
                for step in range(self.start_step, t.max_steps):
                    loss, any_stop = self.train_step(step, stop.requested is not None)
                    done = step + 1
                    self._check_finite(loss, done, log)
                    self._after_step(done, loss, log, any_stop)
                    if any_stop:
                        stopped = stop.requested or "a signal on another rank"
                        log.write(f"stopped by {stopped} after step {done}; checkpoint saved, continue with --resume")
                        break
                last_eval = log.last_eval
        except BaseException:
            if self.rank == 0 and restore_replaced(self.run_dir):  # failed before its first checkpoint
                self.log(f"the run that --overwrite replaced in {self.run_dir} is restored")
            raise
        return self._finish(done, stopped, last_eval)

    def _finish(self, done: int, stopped, last_eval: dict | None) -> dict:
        """The run's summary; the final export unless it was stopped (the checkpoint is the result)."""
        t = self.recipe.train
        train_time = time.time() - self.t_loop
        tokens_per_s = self.tokens_seen / max(train_time, 1e-9) if self.tokens_seen else None
        summary = {
            "steps": t.max_steps, "tokens_per_step": self.tokens_per_step, "tokens_per_s": tokens_per_s,
            "train_seconds": train_time, "val": last_eval, "parameters": self.n_params,
            "trainable_parameters": self.n_trainable, "world_size": self.world, "precision": self.precision,
            "zero_stage": self.zero_stage, "model_flops_per_token": self.flops_per_token,
            "mfu": self.mfu(tokens_per_s), "stopped_by": stopped, "last_step": done,
        }
        if not stopped:
            if last_eval is None and self.start_step >= t.max_steps:
                summary["val"] = self.evaluate()
            self.export(self.run_dir / "final", summary)
            summary["final_dir"] = str(self.run_dir / "final")
        summary["wall_seconds"] = time.time() - self.t_start
        return summary

    def export(self, out_dir: Path, summary: dict) -> None:
        """Write the trained model as a Hugging Face directory (``export.write_hf_dir``; ZeRO-3
        gathers the weights on every rank first, rank 0 writes)."""
        state = self.engine._zero3_consolidated_16bit_state_dict() if self.zero_stage == 3 else None
        if self.rank == 0:
            write_hf_dir(out_dir, self.engine.module, self.tok, state_dict=state, summary=summary,
                         run_dir=self.run_dir)
        barrier()


def train(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> dict:
    """Run a recipe end to end: ``Trainer(recipe, resume, overwrite).train()``.

    Raises:
        RunDirError: the run directory holds a run (no --resume/--overwrite) or has nothing to resume.
        ValueError / FileNotFoundError: bad data, tokenizer or recipe values (message says which).
        FloatingPointError: non-finite losses beyond ``train.max_nonfinite_steps``.
    """
    return Trainer(recipe, resume=resume, overwrite=overwrite).train()
