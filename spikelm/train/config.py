"""Typed configuration of a training run, loaded from a YAML recipe plus CLI overrides.

A recipe has four sections, each a dataclass below: ``model``, ``data``, ``optim`` and
``train``. ``spikelm train RECIPE --train.max_steps 100`` overrides one key; unknown keys and
wrong types are rejected by jsonargparse with the accepted names and types.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

from .layout import ModelLayout

Arch = Literal["spikelm", "llama", "rwkv"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Schedule = Literal["cosine", "wsd"]
DataFormat = Literal["text", "instructions", "classification"]
Packing = Literal["pad", "pack"]
ConvertSpiking = Literal["off", "ste", "expanded"]
KernelBackend = Literal["auto", "triton", "torch"]
PRECISIONS, SCHEDULES, DATA_FORMATS = Precision.__args__, Schedule.__args__, DataFormat.__args__


def _check(checks: list[tuple[bool, str]]) -> None:
    """Raise ``ValueError(msg)`` for the first ``(ok, msg)`` that is not ok."""
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)


@dataclass
class LoraConfig:
    """LoRA adapters (Hu et al. 2021) through ``spikelm.finetune.apply_lora``: the base weights
    are frozen and only the adapters train (and sit in the optimizer).

    Attributes:
        r: adapter rank; 0 = no LoRA (full fine-tuning / training).
        alpha: scaling numerator (the update is ``alpha / r * B A``).
        dropout: dropout on the adapter input, in [0, 1).
        target_modules: linear modules to adapt, by name suffix (e.g. ``[key, value]``);
            None = ``spikelm.finetune.DEFAULT_LORA_TARGETS`` (every projection of the blocks).
    """

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` for a bad value (names the key and what is accepted)."""
        _check([(self.r >= 0, f"model.lora.r must be >= 0 (0 = no LoRA), got {self.r}"),
                (0 <= self.dropout < 1, f"model.lora.dropout must be in [0, 1), got {self.dropout}")])


@dataclass
class ModelConfig(ModelLayout):
    """Which network to build, and from which weights, and its layout keys (``ModelLayout``:
    ``mixer_types``, ``mlp_types``, ``neuron_types``, ``adaptive_spike_k``, ... typed fields of
    ``SpikeLMConfig``; None = the flavour's value).

    Attributes:
        arch: ``spikelm`` (the spiking LM, ``SpikeLMForCausalLM``), ``llama`` (transformers'
            ``LlamaForCausalLM``, the ANN baseline) or ``rwkv`` (transformers' ``RwkvForCausalLM``,
            the SpikeGPT default's exact ANN twin); see ``spikelm.train.archs``.
        flavour: a size of that arch: for ``spikelm`` a name from ``spikelm.models.FLAVOURS``
            (``debug``, ``shakespeare``, ``spikegpt-45m``, ...), for ``llama`` one of
            ``spikelm.train.archs.LLAMA_FLAVOURS`` (``llama-debug``, ``llama-shakespeare``), for
            ``rwkv`` one of ``RWKV_FLAVOURS`` (``rwkv-debug``, ``rwkv-shakespeare``).
            Ignored with ``init_from``.
        overrides: deprecated (untyped): a dict of config fields, e.g. ``{neuron: plif}``;
            write the typed keys instead (``model.neuron: plif``). Still read, merged under
            the typed keys, with a deprecation warning. ``vocab_size``, the context length
            and the special token ids come from the data. With ``init_from`` the layout keys
            are applied over the loaded config (non-architectural fields only make sense
            there, e.g. ``dropout``).
        init_from: a Hugging Face model directory to start from instead of a random init
            (continual pretraining, fine-tuning): a spikelm or llama directory is trained as
            it is (its config, weights and, unless ``data.tokenizer`` is set, its tokenizer);
            with ``convert_layout`` set, a Llama-family ANN directory is first converted by
            ``spikelm.convert.convert_checkpoint`` into ``run_dir/converted``. Ignored on
            ``--resume`` (the checkpoint holds the weights).
        convert_layout: with ``init_from`` a Llama-family ANN (Llama, Qwen2/3, Mistral):
            convert it to spikelm first, with this layout (``softmax``, ``hybrid`` = SpikingBrain's
            GLA/SWA interleave, ``linear``, or a per-layer ``gla,swa,...`` list). None = no
            conversion (the directory is trained as it is). Rank 0 converts into
            ``run_dir/converted`` (reused when it holds the same conversion) while the others
            wait, so a conversion longer than ``train.collective_timeout_s`` needs a larger
            timeout, or run ``spikelm convert`` first and give its output as ``init_from``.
        convert_spiking: adaptive spiking of the converted model: ``off`` (an ANN), ``ste``
            (spiking with a straight-through gradient, for training) or ``expanded``.
        convert_window: sliding-window size of the converted SWA layers (None: the converter's
            default, SpikingBrain's 4096 capped at the source's context).
        convert_gla_memory: initial memory in tokens of the converted GLA layers' gates
            (``spikelm.convert.convert_checkpoint``'s ``gla_memory``; None: its default, 4).
        lora: LoRA adapters (``r > 0``); the final export is the merged model, with the
            adapter alone in ``final/adapter``. Needs ``train.zero_stage`` 0-2.
    """

    arch: Arch = "spikelm"
    flavour: str = "shakespeare"
    overrides: dict | None = None
    init_from: str | None = None
    convert_layout: str | None = None
    convert_spiking: ConvertSpiking = "ste"
    convert_window: int | None = None
    convert_gla_memory: float | None = None
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self):
        if isinstance(self.lora, dict):  # from jsonargparse's as_dict()
            self.lora = LoraConfig(**self.lora)
        if self.overrides:
            self._check_overrides()
            warnings.warn("model.overrides is deprecated: write its keys as typed model keys, e.g. "
                          "`model: {neuron: plif}` or `--model.neuron plif`", DeprecationWarning, stacklevel=3)
        self.check()

    def _check_overrides(self) -> None:
        """The deprecated ``overrides`` dict: its keys must be config fields of ``arch``."""
        from .archs import ANN_LAYOUT_KEYS
        from .layout import layout_key_names

        if not isinstance(self.overrides, dict):
            raise ValueError(f"model.overrides must be a mapping of config fields, got {self.overrides!r}")
        known = set(layout_key_names() if self.arch == "spikelm" else ANN_LAYOUT_KEYS.get(self.arch, ())) | {
            "vocab_size", "context_length", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"}
        unknown = sorted(set(self.overrides) - known)
        if unknown:
            raise ValueError(f"model.overrides: unknown key(s) {unknown} for model.arch {self.arch}; accepted: "
                             f"{', '.join(sorted(known))}")

    def layout(self) -> dict:
        """The config fields this section sets: ``overrides`` (deprecated) under the typed keys."""
        return {**(self.overrides or {}), **self.layout_keys()}

    def check(self) -> None:
        """Raise ``ValueError`` for a bad value of this section (names the key and the accepted values)."""
        from .archs import ARCHS, flavours

        _check([(self.arch in ARCHS, f"model.arch {self.arch!r} is unknown; accepted: {', '.join(ARCHS)}")])
        known = flavours(self.arch)
        _check([(self.init_from is not None or self.flavour in known,
                 f"model.flavour {self.flavour!r} is not a {self.arch} flavour; known: {', '.join(known)}"),
                (self.convert_layout is None or self.init_from is not None,
                 "model.convert_layout needs model.init_from (the ANN directory to convert)"),
                (self.convert_layout is None or self.arch == "spikelm",
                 f"model.convert_layout converts to spikelm, but model.arch is {self.arch!r}; set model.arch: spikelm"),
                (self.convert_window is None or self.convert_window >= 1,
                 f"model.convert_window must be >= 1, got {self.convert_window}"),
                (self.convert_gla_memory is None or self.convert_gla_memory > 0,
                 f"model.convert_gla_memory must be > 0 tokens, got {self.convert_gla_memory}")])
        self.check_layout(self.arch)
        self.lora.check()


@dataclass
class DataConfig:
    """Corpus, tokenizer and blocks.

    Attributes:
        format: ``text`` (documents packed into blocks, every token a target) or
            ``instructions`` (jsonl records ``{"prompt", "response"}`` or ``{"messages": [...]}``,
            rendered with the tokenizer's chat template, ``spikelm.finetune.DEFAULT_CHAT_TEMPLATE``
            when it has none; the loss, training and validation, is on the response tokens only),
            or ``classification`` (jsonl/parquet records ``{text_field, label_field}``, one
            right-padded row each; a sequence-classification head on the last real token,
            accuracy and macro-F1 on the validation split; ``spikelm.data.classification``).
        train_files: local text (.txt), jsonl/json or parquet files, or a hub dataset name;
            ``builtin:NAME`` is a shipped corpus folder, ``builtin:NAME/FILE`` one of its files.
        val_files: validation files; None splits off the last ``val_fraction`` of the train bytes
            (``instructions``: of the train records).
        val_fraction: share of the bytes held out when ``val_files`` is None, in (0, 1).
        text_field: the text column of json/parquet data.
        label_field: ``classification``: the label column (a label name or an integer id).
        labels: ``classification``: the label names in id order (None: the sorted distinct
            labels of the train records; ``0..max`` for integer labels); kept in the exported
            model's ``config.id2label``.
        tokenizer: a tokenizer directory (or hub id) to load; None trains a byte-level BPE
            of ``vocab_size`` on the train split and saves it with the model.
        vocab_size: size of the trained BPE vocabulary (ignored when ``tokenizer`` is set).
        block_size: tokens per training sequence (the model's context length).
        on_bad_record: json/parquet records without a string ``text_field``: ``error`` refuses
            more than 1% of them (fewer are skipped, with a warning that counts them), ``skip``
            skips any number (counted in the warning).
        packing: ``instructions`` rows: ``pad`` (one example per row, right-padded) or ``pack``
            (whole examples back to back, never split across rows).
        streaming: read ``train_files`` as a stream (``spikelm.data.streaming``): tokenized on
            the fly, each rank reading only its ``stream_shards`` share; needs ``val_files`` and a
            trained tokenizer (``tokenizer`` or ``model.init_from``). For corpora too large to
            tokenize up front (OpenWebText and up).
        stream_shards: the number of streams S: a multiple of every world size the run will
            use, dividing the global batch (micro_batch_size x grad_accum x ranks).
        shuffle_buffer: blocks in each stream's seeded shuffle buffer (0 = stream order).
    """

    format: DataFormat = "text"
    train_files: list[str] = field(default_factory=lambda: ["builtin:tinyshakespeare"])
    val_files: list[str] | None = None
    val_fraction: float = 0.1
    text_field: str = "text"
    label_field: str = "label"
    labels: list[str] | None = None
    tokenizer: str | None = None
    vocab_size: int = 512
    block_size: int = 128
    packing: Packing = "pad"
    on_bad_record: Literal["error", "skip"] = "error"
    streaming: bool = False
    stream_shards: int = 8
    shuffle_buffer: int = 1000

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` for a bad value of this section (names the key and the accepted values)."""
        _check([
            (self.format in DATA_FORMATS, f"data.format {self.format!r} is unknown; accepted: {', '.join(DATA_FORMATS)}"),
            (self.packing in ("pad", "pack"), f"data.packing must be pad or pack, got {self.packing!r}"),
            (not self.streaming or self.format == "text", "data.streaming reads text documents; it does not "
             f"apply to data.format {self.format} (small enough to load)"),
            (not self.streaming or bool(self.val_files), "data.streaming needs data.val_files (a held-out set "
             "that is loaded whole; the stream's length is unknown, so no val_fraction can be split off)"),
            (self.stream_shards >= 1 and self.shuffle_buffer >= 0,
             "data.stream_shards must be >= 1 and data.shuffle_buffer >= 0"),
            (0 < self.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {self.val_fraction}"),
            (self.vocab_size >= 257, f"data.vocab_size must be >= 257 (256 bytes + end-of-text), got {self.vocab_size}"),
            (self.block_size >= 2, f"data.block_size must be >= 2, got {self.block_size}"),
            (bool(self.train_files), "data.train_files is empty; give at least one file or dataset name"),
        ])


@dataclass
class OptimConfig:
    """AdamW with linear warmup, then ``schedule`` down to ``min_lr_ratio * lr``.

    Attributes:
        lr: peak learning rate. warmup_steps: linear warmup length in optimizer steps.
        schedule: ``cosine`` (cosine decay from the end of warmup to ``max_steps``) or ``wsd``
            (warmup-stable-decay: constant peak LR, then a linear decay over the last
            ``decay_fraction`` of the steps; suits continual pretraining from ``init_from``,
            as in SpikingBrain's short warmup + constant + decay, and MiniCPM's WSD).
        decay_fraction: share of ``max_steps`` spent decaying under ``wsd``, in (0, 1].
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        weight_decay, betas, eps: AdamW's. grad_clip: global gradient-norm clip (0 = off).
    """

    lr: float = 3e-3
    warmup_steps: int = 50
    schedule: Schedule = "cosine"
    decay_fraction: float = 0.2
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    grad_clip: float = 1.0

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` for a bad value of this section (names the key and the accepted values)."""
        _check([
            (self.lr > 0, f"optim.lr must be > 0, got {self.lr}"),
            (0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"),
            (self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.schedule in SCHEDULES, f"optim.schedule {self.schedule!r} is unknown; accepted: {', '.join(SCHEDULES)}"),
            (0 < self.decay_fraction <= 1, f"optim.decay_fraction must be in (0, 1], got {self.decay_fraction}"),
            (self.grad_clip >= 0, f"optim.grad_clip must be >= 0, got {self.grad_clip}"),
        ])


@dataclass
class TrainConfig:
    """The run: where it writes, how long, how it is parallelised and checkpointed.

    Attributes:
        run_dir: output folder (checkpoints/, tb/, metrics.jsonl, tokenizer/, final/ HF export).
        max_steps: optimizer steps.
        micro_batch_size: sequences per rank per micro-step.
        grad_accum: micro-steps per optimizer step. The global batch is
            ``micro_batch_size * grad_accum * world_size`` sequences.
        zero_stage: DeepSpeed ZeRO stage, 0-3.
        precision: ``auto`` (bf16 on CUDA, fp32 on CPU), ``fp32``, ``bf16`` or ``fp16``.
        eval_every, checkpoint_every, log_every: in optimizer steps (0 = only at the end).
        keep_checkpoints: how many step checkpoints to keep (older ones are deleted).
        eval_max_batches: cap on validation batches per evaluation (None = the whole split).
        seed: seeds the init and the data order.
        sample_prompt, sample_tokens: the text sample printed after training.
        threads: torch CPU threads per process (None = torch's default).
        activation_checkpointing: recompute each block in the backward pass (less memory).
        offload_optimizer, offload_params: ZeRO-Offload of optimizer state (stage >= 1) and
            of parameters (stage 3) to CPU memory.
        max_nonfinite_steps: how many optimizer steps with a NaN/inf loss are skipped (each
            reported with its step) before the run aborts; 0 aborts at the first.
        collective_timeout_s: a collective that waits longer than this (a dead or hung rank)
            makes every rank fail instead of hanging.
        deepspeed: extra DeepSpeed config entries merged over the generated ones.
        kernel_backend: ``auto`` (Triton kernels on CUDA, torch paths elsewhere), ``triton``
            (fail where Triton cannot run) or ``torch`` (the pure-PyTorch paths everywhere);
            ``spikelm.kernels.dispatch.set_backend``.
        compile: ``torch.compile`` each block of the model (torchtitan's per-block pattern); the
            recurrent kernels are opaque custom ops (``spikelm.kernels.custom_op``), so every
            layout compiles without graph breaks. Costs a compile at the first steps.
        expert_parallel_size: ranks that share the routed experts of each MoE layer (expert
            parallelism on DeepSpeed's MoE groups, ``spikelm.train.expert_parallel``); must
            divide the number of ranks and ``num_experts``. 1 (default): every rank holds all.
        sequence_parallel_size: ranks that share each sequence, ``P`` contiguous chunks of
            ``data.block_size / P`` tokens, the layers' states passed from rank to rank
            (``spikelm.train.sequence_parallel``); must divide the number of ranks and the block
            size. The ranks of a group read the same sequences; ``P x D`` ranks in all.
        distill_from: a teacher causal-LM directory with the student's tokenizer (e.g. the ANN a
            converted model came from): its next-token distributions are distilled into the
            student (``spikelm.train.distill``), ``distill_weight * T^2 * KL`` per target token
            added to the loss, logged as ``distill_kl``. None (default): no teacher.
        distill_weight, distill_temperature, distill_schedule: the KL weight (>= 0), the softmax
            temperature T (> 0) and how the weight evolves: ``constant`` or ``linear`` (to 0 at
            ``max_steps``).
        spike_rate_weight, spike_rate_target: a regulariser ``weight * mean (rate - target)^2`` over
            the block-output neuron sites pulls their spike rates towards ``target`` (sparsity
            ``1 - target``; ``spikelm.train.sparsity``), logged as ``spike_rate_penalty``. Weight 0
            (default): off.
        distill_hidden_weight: weight of a hidden-state matching term added to the distillation
            loss: per layer, the student's hidden state against the teacher's (normalised mean
            square error, ``spikelm.train.distill``); needs a teacher with the student's depth and
            width (e.g. the ANN it was converted from), logged as ``distill_hidden``. 0: off.
        distill_attention_weight: weight of attention transfer (LoLCATs): every student token
            mixer run on the input of the teacher's attention layer of the same depth, matched
            to its output (``spikelm.train.distill``); same shape needs, logged as
            ``distill_attention``. 0: off.
        adaptive_k_anneal_to, adaptive_k_anneal_steps: anneal the adaptive spiking neuron's ``k``
            linearly from the model's ``adaptive_spike_k`` at step 0 to ``adaptive_k_anneal_to`` at
            step ``adaptive_k_anneal_steps`` (default ``max_steps``) and keep it there (a smaller
            ``k`` raises the threshold ``mean|x| / k``: fewer spikes); the export records the final
            ``k``; logged as ``adaptive_k``. None (default): ``k`` fixed.
    """

    run_dir: str = "runs/shakespeare"
    max_steps: int = 1000
    micro_batch_size: int = 16
    grad_accum: int = 1
    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Precision = "auto"
    eval_every: int = 250
    checkpoint_every: int = 250
    log_every: int = 10
    keep_checkpoints: int = 2
    eval_max_batches: int | None = None
    seed: int = 1337
    sample_prompt: str = "ROMEO:"
    sample_tokens: int = 200
    threads: int | None = None
    activation_checkpointing: bool = False
    offload_optimizer: bool = False
    offload_params: bool = False
    max_nonfinite_steps: int = 0
    collective_timeout_s: int = 600
    deepspeed: dict = field(default_factory=dict)
    kernel_backend: KernelBackend = "auto"
    compile: bool = False
    expert_parallel_size: int = 1
    sequence_parallel_size: int = 1
    distill_from: str | None = None
    distill_weight: float = 1.0
    distill_temperature: float = 1.0
    distill_schedule: Literal["constant", "linear"] = "constant"
    spike_rate_weight: float = 0.0
    spike_rate_target: float = 0.15
    distill_hidden_weight: float = 0.0
    distill_attention_weight: float = 0.0
    adaptive_k_anneal_to: float | None = None
    adaptive_k_anneal_steps: int | None = None

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` for a bad value of this section (names the key and the accepted values)."""
        _check([
            (self.max_steps >= 1, f"train.max_steps must be >= 1, got {self.max_steps}"),
            (self.micro_batch_size >= 1, f"train.micro_batch_size must be >= 1, got {self.micro_batch_size}"),
            (self.grad_accum >= 1, f"train.grad_accum must be >= 1, got {self.grad_accum}"),
            (self.zero_stage in (0, 1, 2, 3), f"train.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}"),
            (self.precision in PRECISIONS, f"train.precision {self.precision!r} is unknown; accepted: {', '.join(PRECISIONS)}"),
            (self.keep_checkpoints >= 1, f"train.keep_checkpoints must be >= 1, got {self.keep_checkpoints}"),
            (min(self.eval_every, self.checkpoint_every, self.log_every) >= 0,
             "train.eval_every, checkpoint_every and log_every must be >= 0"),
            (self.max_nonfinite_steps >= 0, f"train.max_nonfinite_steps must be >= 0, got {self.max_nonfinite_steps}"),
            (self.collective_timeout_s >= 1, f"train.collective_timeout_s must be >= 1, got {self.collective_timeout_s}"),
            (not self.offload_params or self.zero_stage == 3, "train.offload_params needs train.zero_stage 3"),
            (not self.offload_optimizer or self.zero_stage >= 1, "train.offload_optimizer needs train.zero_stage >= 1"),
            (self.spike_rate_weight >= 0, f"train.spike_rate_weight must be >= 0, got {self.spike_rate_weight}"),
            (0 <= self.spike_rate_target <= 1,
             f"train.spike_rate_target must be a rate in [0, 1], got {self.spike_rate_target}"),
            (self.distill_weight >= 0, f"train.distill_weight must be >= 0, got {self.distill_weight}"),
            (self.distill_hidden_weight >= 0,
             f"train.distill_hidden_weight must be >= 0, got {self.distill_hidden_weight}"),
            (self.distill_attention_weight >= 0,
             f"train.distill_attention_weight must be >= 0, got {self.distill_attention_weight}"),
            (self.distill_hidden_weight == self.distill_attention_weight == 0 or self.distill_from is not None,
             "train.distill_hidden_weight and distill_attention_weight need a teacher (train.distill_from)"),
            (self.adaptive_k_anneal_to is None or self.adaptive_k_anneal_to > 0,
             f"train.adaptive_k_anneal_to must be > 0, got {self.adaptive_k_anneal_to}"),
            (self.adaptive_k_anneal_steps is None or self.adaptive_k_anneal_steps >= 1,
             f"train.adaptive_k_anneal_steps must be >= 1, got {self.adaptive_k_anneal_steps}"),
            (self.adaptive_k_anneal_steps is None or self.adaptive_k_anneal_to is not None,
             "train.adaptive_k_anneal_steps needs train.adaptive_k_anneal_to"),
            (self.distill_temperature > 0, f"train.distill_temperature must be > 0, got {self.distill_temperature}"),
            (self.distill_schedule in ("constant", "linear"),
             f"train.distill_schedule {self.distill_schedule!r} is unknown; accepted: constant, linear"),
            (self.sequence_parallel_size >= 1,
             f"train.sequence_parallel_size must be >= 1, got {self.sequence_parallel_size}"),
            (self.expert_parallel_size >= 1,
             f"train.expert_parallel_size must be >= 1, got {self.expert_parallel_size}"),
            (self.kernel_backend in KernelBackend.__args__,
             f"train.kernel_backend {self.kernel_backend!r} is unknown; accepted: {', '.join(KernelBackend.__args__)}"),
        ])


@dataclass
class Recipe:
    """A whole run: ``model``, ``data``, ``optim``, ``train`` sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def validate_recipe(r: Recipe) -> None:
    """Check a whole recipe: each section's own checks (``check()``, also run when a section
    is built) and the checks across sections. Raise ``ValueError`` naming the key and what is
    accepted. Also for recipes built or changed in Python (``train()`` calls it)."""
    for section in (r.model, r.data, r.optim, r.train):
        section.check()
    _check([
        (not r.data.streaming or r.data.tokenizer is not None or r.model.init_from is not None,
         "data.streaming needs a trained tokenizer: set data.tokenizer (or model.init_from); "
         "a BPE cannot be trained on a stream"),
        (r.data.format == "text" or r.model.init_from is not None or r.data.tokenizer is not None,
         f"data.format {r.data.format} needs a trained tokenizer: set model.init_from (its tokenizer) or data.tokenizer"),
        (r.data.format != "classification" or r.model.init_from is not None,
         "data.format classification fine-tunes a trained model: set model.init_from (spikelm finetune MODEL_DIR "
         "RECIPE does); its backbone is reused and a new classification head trained"),
        (not r.train.compile or r.train.zero_stage < 3,
         "train.compile needs train.zero_stage 0, 1 or 2 (ZeRO-3 gathers parameters in module hooks that the "
         "per-block compile does not trace); set train.compile false or lower the stage"),
        (r.train.expert_parallel_size == 1 or (r.train.zero_stage < 3 and r.model.lora.r == 0 and not r.train.compile),
         "train.expert_parallel_size > 1 needs train.zero_stage 0, 1 or 2 (DeepSpeed's MoE layers do not run under "
         "ZeRO-3), no model.lora (the experts are sharded over ranks) and train.compile false"),
        (r.train.sequence_parallel_size == 1 or r.data.block_size % r.train.sequence_parallel_size == 0,
         f"data.block_size ({r.data.block_size}) must be divisible by train.sequence_parallel_size "
         f"({r.train.sequence_parallel_size})"),
        (r.train.sequence_parallel_size == 1 or (r.data.format == "text" and not r.data.streaming),
         "train.sequence_parallel_size > 1 trains on text blocks loaded in memory (data.format text, "
         "data.streaming false)"),
        (r.train.distill_from is None or (r.data.format != "classification" and r.train.sequence_parallel_size == 1),
         "train.distill_from distils next-token distributions: it needs data.format text or instructions and "
         "train.sequence_parallel_size 1"),
        (r.train.spike_rate_weight == 0 or r.train.sequence_parallel_size == 1,
         "train.spike_rate_weight needs train.sequence_parallel_size 1"),
        (r.train.sequence_parallel_size == 1 or r.train.zero_stage < 3,
         "train.sequence_parallel_size > 1 needs train.zero_stage 0, 1 or 2"),
        (r.train.sequence_parallel_size == 1 or r.train.expert_parallel_size == 1,
         "train.sequence_parallel_size and train.expert_parallel_size cannot both be > 1"),
        (r.train.sequence_parallel_size == 1 or r.train.precision != "fp16",
         "train.sequence_parallel_size > 1 needs train.precision bf16 or fp32 (fp16's loss scale would apply "
         "twice to the state gradients passed between ranks)"),
        (r.model.lora.r == 0 or r.train.zero_stage < 3,
         "model.lora needs train.zero_stage 0, 1 or 2 (only the adapters are trained, so ZeRO-2 already shards "
         "all optimizer state and gradients)"),
    ])


RESUMABLE_KEYS = frozenset({
    "train.max_steps", "train.eval_every", "train.checkpoint_every", "train.log_every", "train.keep_checkpoints",
    "train.eval_max_batches", "train.sample_prompt", "train.sample_tokens", "train.threads",
    "train.collective_timeout_s", "train.max_nonfinite_steps", "train.kernel_backend", "train.compile", "train.run_dir",
    "optim.min_lr_ratio", "optim.decay_fraction", "model.init_from",
})
"""Keys ``--resume`` may change: length, the LR schedule's tail, logging, evaluation and
checkpoint cadence, paths. Every other key shapes the model, the optimizer state or the data
order, which the checkpoint fixes (``model.init_from`` is not re-read on resume)."""


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "deepspeed" and k != "overrides" and k != "rope_params":
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def resume_changes(stored: dict, recipe: Recipe) -> dict[str, list]:
    """``{key: [stored value, new value]}`` for the keys ``recipe`` changes against the run's
    ``recipe.json`` (``stored``), all in :data:`RESUMABLE_KEYS`.

    Raises:
        ValueError: a change of any other key (all of them listed, with both values).
    """
    import json
    from dataclasses import asdict

    old = _flat(stored)
    new = _flat(json.loads(json.dumps(asdict(recipe))))  # tuples -> lists, as stored
    changed = {k: [old.get(k), v] for k, v in new.items() if k in old and old[k] != v}
    refused = {k: v for k, v in changed.items() if k not in RESUMABLE_KEYS}
    if refused:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise ValueError(f"--resume continues the run as it was recorded in recipe.json, but the given recipe "
                         f"changes {listed}; these fix the model, the optimizer state or the data order. Resume "
                         f"with the recorded values, or start a new run (another --train.run_dir or --overwrite). "
                         f"Keys that may change on resume: {', '.join(sorted(RESUMABLE_KEYS))}")
    return changed
