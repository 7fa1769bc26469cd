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
from ..hub.ids import read_json_file
from . import checkpoint
from .archs import build_config, describe, flops_config, load_config_file
from .config import Recipe, resume_changes, validate_recipe
from .distributed import all_reduce_tensor, barrier, init_distributed
from .engine import deepspeed_config, initialize, resolve_precision, zero_stage
from .export import MODEL_CONFIG, write_hf_dir
from .flops import model_flops_per_token, peak_flops
from .init_from import init_config, init_dir, init_source
from .metrics import RunLog, step_stat_tensors
from .model_init import build_model
from .rundir import (
    atomic_dir,
    check_run_dir,
    drop_replaced,
    prepare_run_dir,
    remove_stale_temps,
    restore_replaced,
)
from .schedule import BatchOrder
from .signals import StopRequest
from .sparsity import take_spike_rate_penalty


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
        self.sp = None
        if t.sequence_parallel_size > 1:  # P x D ranks: the ranks of a group share each sequence
            from .sequence_parallel import SequenceParallel

            self.sp = SequenceParallel(t.sequence_parallel_size, self.rank, self.world)
        self.data_rank, self.data_world = (self.sp.data_rank, self.sp.data_world) if self.sp else (self.rank, self.world)
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
            BatchOrder(len(self.train_blocks), t.micro_batch_size * t.grad_accum * self.data_world, t.seed)
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
        self.text, self.classify = r.data.format == "text", r.data.format == "classification"
        n_train = f"{r.data.stream_shards} streams of" if r.data.streaming else len(data.train)
        about = f"{len(data.train.names)} labels" if self.classify else \
            f"validation {data.val_bytes_per_token:.3f} bytes/token"
        self.log(f"data: {n_train} train / {len(data.val)} validation {data.unit} of {r.data.block_size} tokens; "
                 f"vocab {len(self.tok)}; {about}")

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
        cls = None
        if self.classify:  # a new head on the backbone, labels named in the config
            from .archs import sequence_classification_class

            names = self.train_blocks.names
            self.config.num_labels = len(names)
            self.config.id2label, self.config.label2id = dict(enumerate(names)), {n: i for i, n in enumerate(names)}
            self.config.problem_type = "single_label_classification"
            cls = sequence_classification_class(self.config)
        model = build_model(self.config, self.ds_config, self.zero_stage, t.seed, weights_dir=self.src, cls=cls)
        if t.activation_checkpointing:
            model.activation_checkpointing_enable()  # recompute each block in the backward pass
        self.n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        self.flops_per_token = model_flops_per_token(model, flops_config(self.config), r.data.block_size)
        lora = r.model.lora
        if lora.r:
            from ..finetune import apply_lora

            torch.manual_seed(t.seed)  # the adapters' init, the same on every rank
            model = apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                               target_modules=lora.target_modules,
                               task="classification" if self.classify else "causal_lm")
        self.n_trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
        self.ep_size = t.expert_parallel_size
        if self.ep_size > 1:  # after the counts above (of the whole model): this rank keeps E / P experts
            from .expert_parallel import check_expert_parallel, shard_experts

            check_expert_parallel(self.config, self.ep_size, self.world, self.zero_stage, lora.r)
            self.log(f"expert parallelism: {shard_experts(model, self.ep_size)} MoE layers, "
                     f"{self.config.num_experts // self.ep_size} of {self.config.num_experts} experts per rank")
        if t.spike_rate_weight > 0:  # the output neurons' rates keep their gradient for the regulariser
            from .sparsity import enable_rate_grads

            self.log(f"spike-rate regulariser: {enable_rate_grads(model)} blocks towards rate {t.spike_rate_target} "
                     f"(weight {t.spike_rate_weight})")
        self.k_anneal = None
        if t.adaptive_k_anneal_to is not None:  # k of the adaptive neurons, a schedule over the steps
            from .sparsity import KAnnealing

            self.k_anneal = KAnnealing(model, self.config, t.adaptive_k_anneal_to, t.adaptive_k_anneal_steps or t.max_steps)
            self.log(f"adaptive spiking k annealed {self.k_anneal.k_start:g} -> {t.adaptive_k_anneal_to:g} over "
                     f"{self.k_anneal.steps} steps ({len(self.k_anneal.neurons)} neurons)")
        self.distiller = None
        if t.distill_from is not None:  # the teacher, loaded (and checked) before anything is written
            from .distill import Distiller

            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)
            self.distiller = Distiller(t.distill_from, self.config.vocab_size, self.device, dtype, t.distill_weight,
                                       t.distill_temperature, t.distill_schedule, t.max_steps, t.distill_hidden_weight,
                                       (self.config.num_hidden_layers, self.config.hidden_size),
                                       t.distill_attention_weight, self.ds_config)
            terms = [f"KL weight {t.distill_weight} ({t.distill_schedule}), T={t.distill_temperature}"]
            terms += [f"{name} weight {w}" for name, w in (("hidden states", t.distill_hidden_weight),
                                                          ("attention transfer", t.distill_attention_weight)) if w > 0]
            self.log(f"distilling from {t.distill_from}{' (ZeRO-3 sharded)' if self.distiller.sharded else ''}: "
                     + "; ".join(terms))
        if t.compile:
            from .compile import compile_blocks

            self.log(f"torch.compile: {compile_blocks(model)} blocks (compiled at the first steps)")
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
        1/accumulation and rank averaging give sum / N. N stays a device tensor (its all-reduce is
        queued like any other collective; nothing waits for it on the host). Text blocks: ``{}``
        (equal counts)."""
        if self.text or self.classify:
            return {}
        n = torch.stack([count_targets(batch_targets(b)[0]) for b in batches]).sum().double()
        n = all_reduce_tensor(n)
        return {"num_items_in_batch": n.clamp(min=1.0) / (len(batches) * self.world)}

    def step_batches(self, step: int) -> list[dict]:
        """The micro-batches of optimizer step ``step`` on this rank, on the device (from pinned
        memory, copied without waiting on CUDA)."""
        micro = self.order.rank_micro_batches(step, self.data_rank, self.data_world, self.recipe.train.micro_batch_size)
        return [make_batch(self.train_blocks, mb, self.device) for mb in micro]

    def train_step(self, step: int, batches: list[dict] | None = None) -> torch.Tensor:
        """Run optimizer step ``step`` (0-based): forward, backward and step of each micro-batch of
        this rank (``batches``: :meth:`step_batches` of ``step``, built ahead by the loop).

        Returns this rank's mean micro-batch loss (the task loss: an MoE model's auxiliary router
        loss is trained on but not included), a 0-dim float32 tensor on the device. Nothing
        here reads a value on the host: the loop reads the losses of many steps at once
        (:meth:`_sync`), so on a GPU the host keeps queueing work ahead of the device.
        """
        batches = self.step_batches(step) if batches is None else batches
        if self.k_anneal is not None:
            self.k_anneal.apply(step)
        t = self.recipe.train
        extra = self._loss_weighting(batches)
        if t.distill_hidden_weight > 0:  # the student's hidden states, for the hidden-state matching
            extra["output_hidden_states"] = True
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        sums: dict[str, torch.Tensor] = {}
        for batch in batches:
            if self.sp is not None:  # this rank's chunk of each sequence, states passed between the ranks
                # the module itself, not the engine's forward: the engine hooks its outputs to run its
                # backward prologue, which the state-gradient pass (autograd.grad) must not trigger
                total = total + self.sp.step(self.engine.module, batch, self.engine.backward)
                self.engine.step()
                continue
            out = self.engine(**batch, use_cache=False, **extra)
            added, logged = self._added_terms(out, batch, step)
            for name, v in logged.items():
                sums[name] = sums.get(name, 0.0) + v
            self.engine.backward(out.loss + added)
            self.engine.step()
            total = total + out.loss.detach().float()
            if getattr(out, "aux_loss", None) is not None:
                total = total - out.aux_loss.detach().float()
        self.step_extra = {f"extra.{name}": v / len(batches) for name, v in sums.items()}
        return total / len(batches)

    def _added_terms(self, out, batch: dict, step: int) -> tuple[torch.Tensor | float, dict[str, torch.Tensor]]:
        """What a micro-batch's loss gains besides the task loss: the distillation terms
        (``spikelm.train.distill``) and the spike-rate regulariser (``spikelm.train.sparsity``).
        Returns (their weighted sum, ``{logged name: detached value}``, e.g. ``distill_kl``)."""
        t = self.recipe.train
        added, logged = 0.0, {}
        if self.distiller is not None:  # the teacher's distributions (and its layers' states/outputs)
            weights = {"kl": self.distiller.alpha(step), "hidden": t.distill_hidden_weight,
                       "attention": t.distill_attention_weight}
            for name, v in self.distiller.losses(out, batch, self.engine.module).items():
                added = added + weights[name] * v
                logged[f"distill_{name}"] = v.detach()
        if t.spike_rate_weight > 0:
            pen = take_spike_rate_penalty(self.engine.module, t.spike_rate_target)
            if pen is not None:
                added = added + t.spike_rate_weight * pen
                logged["spike_rate_penalty"] = pen.detach()
        return added, logged

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
        if self.classify:
            return self._evaluate_classifier()
        t, model, blocks = self.recipe.train, self.engine.module, self.val_blocks
        model.eval()
        n, bs = len(blocks), t.micro_batch_size
        starts = list(range(0, n, bs))[:t.eval_max_batches] if t.eval_max_batches is not None else range(0, n, bs)
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # [nll, targets], read once below
        for s, counted in self._rank_batches(list(starts)):
            nll, k = batch_nll_sum(model, make_batch(blocks, range(s, min(s + bs, n)), self.device))
            if counted:
                sums = sums + torch.stack([nll.double(), k.double()])
        total, count = all_reduce_tensor(sums).tolist()
        model.train()
        loss = total / max(count, 1)
        return {"loss": loss, "bpb": loss / math.log(2) / self.val_bytes_per_token,
                "perplexity": math.exp(min(loss, 50)), "tokens": int(count)}

    def _rank_batches(self, starts: list[int]) -> list[tuple[int, bool]]:
        """This rank's share of the validation batch ``starts``, as ``(start, counted)``. With
        expert parallelism every rank of a group must join each forward's all-to-all, so a rank
        with fewer batches repeats its first one, not counted, until all have as many."""
        mine = [(s, True) for s in starts[self.rank::self.world]]
        if self.ep_size > 1 and starts:
            per = -(-len(starts) // self.world)
            filler = mine[0][0] if mine else starts[0]
            mine += [(filler, False)] * (per - len(mine))
        return mine

    @torch.no_grad()
    def _evaluate_classifier(self) -> dict:
        """Validation of a classifier: mean cross-entropy over rows, accuracy and macro-F1
        (``spikelm.eval.classification``), sharded over ranks like :meth:`evaluate`."""
        from ..eval.classification import classification_metrics

        t, model, rows = self.recipe.train, self.engine.module, self.val_blocks
        model.eval()
        n, bs = len(rows), t.micro_batch_size
        starts = list(range(0, n, bs))[:t.eval_max_batches] if t.eval_max_batches is not None else list(range(0, n, bs))
        k = len(rows.names)
        sums = torch.zeros(1 + k * k, dtype=torch.float64, device=self.device)  # [nll, confusion k x k]
        for s, counted in self._rank_batches(starts):
            batch = make_batch(rows, range(s, min(s + bs, n)), self.device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            if not counted:
                continue
            nll = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
            conf = torch.bincount(batch["labels"] * k + logits.argmax(-1), minlength=k * k)
            sums = sums + torch.cat([nll.double()[None], conf.double()])
        values = all_reduce_tensor(sums).tolist()
        model.train()
        confusion = [[int(values[1 + i * k + j]) for j in range(k)] for i in range(k)]
        return classification_metrics(values[0], confusion)

    # -- the loop ------------------------------------------------------------------------------

    def _due(self, every: int, done: int) -> bool:
        return bool(every and done % every == 0) or done == self.recipe.train.max_steps

    def _sync_due(self, done: int) -> bool:
        """Whether step ``done`` is a sync point: a log step (every step with ``log_every: 0``),
        an evaluation or checkpoint step, or the last step. Only there the host reads values."""
        t = self.recipe.train
        return self._due(t.log_every or 1, done) or self._due(t.eval_every, done) or self._due(t.checkpoint_every, done)

    def _sync(self, pending: list[tuple], stop_requested: bool) -> tuple[list[float], list[dict], bool]:
        """Read the steps ``pending`` (``(done, loss, spike-rate tensors, host time)`` each) with one collective
        and one host read: ``(losses, spike rates, whether any rank asked to stop)``, the losses
        and rates averaged over ranks."""
        sites = list(pending[-1][2])
        parts = [torch.stack([p[1] for p in pending]).double()]
        parts += [torch.stack([p[2][k] for p in pending]).double() for k in sites]
        parts.append(torch.tensor([float(stop_requested)], dtype=torch.float64, device=self.device))
        values = all_reduce_tensor(torch.cat(parts)).tolist()
        n = len(pending)
        losses = [x / self.world for x in values[:n]]
        rates = [{k: values[n * (j + 1) + i] / self.world for j, k in enumerate(sites)} for i in range(n)]
        return losses, rates, values[-1] > 0

    def _after_step(self, done: int, loss: float, rates: dict, t_done: float, log: RunLog, stop: bool) -> None:
        """Metrics, evaluation and checkpoint of step ``done`` (read at a sync point; ``t_done``: the
        host time the step was queued, or, for the sync step itself, read)."""
        t = self.recipe.train
        self.tokens_seen = (done - self.start_step) * self.tokens_per_step
        elapsed = t_done - self.t_loop
        tok_s = self.tokens_seen / max(elapsed, 1e-9)
        rec = {"step": done, "loss": loss, "lr": self.lrs[done], "tokens_per_s": tok_s,
               "elapsed_s": elapsed, "epoch": self.order.epoch_of(done), "mfu": self.mfu(tok_s)}
        if self.k_anneal is not None:
            rec["adaptive_k"] = self.k_anneal.k(done - 1)
        log.step(rec, rates)
        if self._due(t.eval_every, done):
            log.evaluation(rec, self.evaluate())
        log.record(rec)
        if self._due(t.checkpoint_every, done) or stop:
            checkpoint.save_checkpoint(self.engine, self.ckpt_dir, done, t.keep_checkpoints, self.rank)
            if self.rank == 0 and drop_replaced(self.run_dir):  # --overwrite: the new run now stands
                log.write(f"the replaced run in {self.run_dir} is deleted now that this run has a checkpoint")

    def train(self) -> dict:
        """Train from the start (or resumed) step to ``train.max_steps``, then evaluate and export
        ``run_dir/final``. Returns the summary (validation loss/BPB, tokens/s, MFU, paths).

        Between sync points (:meth:`_sync_due`: every ``train.log_every`` steps, evaluation and
        checkpoint steps, the last step) nothing is read on the host: the losses and spike rates
        stay on the device, and the next step's batches are built while the device runs the
        current one. At a sync point the steps since the last one are read at once, checked for
        NaN/inf, and written (one ``metrics.jsonl`` record per step). A SIGTERM/SIGINT (on any
        rank) stops at the next sync point with a checkpoint and no export.

        Raises:
            FloatingPointError: non-finite losses beyond ``train.max_nonfinite_steps``.
        """
        t = self.recipe.train
        self.engine.train()
        self.nonfinite, self.tokens_seen, self.t_loop = 0, 0, time.time()
        done, stopped, pending = self.start_step, None, []
        self.lrs, self.step_extra = {}, {}
        try:
            with RunLog(self.run_dir, self.rank, t.max_steps, self.start_step, t.log_every) as log, \
                    StopRequest() as stop:
                batches = self.step_batches(self.start_step) if self.start_step < t.max_steps else None
                for step in range(self.start_step, t.max_steps):
                    loss = self.train_step(step, batches)
                    done = step + 1
                    self.lrs[done] = self.scheduler.get_last_lr()[0]  # a host value: no sync
                    stats = {**step_stat_tensors(self.engine.module), **self.step_extra}
                    pending.append((done, loss, stats, time.time()))
                    # built while the device still runs this step (the host is ahead of it)
                    batches = self.step_batches(done) if done < t.max_steps else None
                    if not self._sync_due(done):
                        continue
                    losses, rates, any_stop = self._sync(pending, stop.requested is not None)
                    pending[-1] = (*pending[-1][:3], time.time())  # the device has finished by now
                    for (d, _, _, t_done), value, rate in zip(pending, losses, rates):
                        self._check_finite(value, d, log)
                        self._after_step(d, value, rate, t_done, log, any_stop and d == done)
                    pending = []
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
        if self.k_anneal is not None:  # the k the model was left with (a resumed finished run starts at k_start)
            self.k_anneal.apply(max(done - 1, 0))
        if not stopped:
            if last_eval is None and self.start_step >= t.max_steps:
                summary["val"] = self.evaluate()
            self.export(self.run_dir / "final", summary)
            summary["final_dir"] = str(self.run_dir / "final")
        summary["wall_seconds"] = time.time() - self.t_start
        return summary

    def export(self, out_dir: Path, summary: dict) -> None:
        """Write the trained model as a Hugging Face directory (``export.write_hf_dir``; ZeRO-3
        gathers the weights on every rank first, rank 0 writes; expert parallelism broadcasts every
        expert to rank 0, which writes the plain single-device model)."""
        state = self.engine._zero3_consolidated_16bit_state_dict() if self.zero_stage == 3 else None
        model = self.engine.module
        if self.ep_size > 1:
            from .expert_parallel import gather_hf_state_dict

            state = gather_hf_state_dict(model)
            if self.rank == 0:
                model = type(model)(self.config)
                model.load_state_dict(state)
                state = None
        if self.rank == 0:
            write_hf_dir(out_dir, model, self.tok, state_dict=state, summary=summary, run_dir=self.run_dir)
        barrier()


def train(recipe: Recipe, resume: bool = False, overwrite: bool = False) -> dict:
    """Run a recipe end to end: ``Trainer(recipe, resume, overwrite).train()``.

    Raises:
        RunDirError: the run directory holds a run (no --resume/--overwrite) or has nothing to resume.
        ValueError / FileNotFoundError: bad data, tokenizer or recipe values (message says which).
        FloatingPointError: non-finite losses beyond ``train.max_nonfinite_steps``.
    """
    return Trainer(recipe, resume=resume, overwrite=overwrite).train()
