"""Mixture-of-experts conversion: Mixtral / Qwen2-MoE sources, and upcycling dense SwiGLU MLPs.

**MoE sources.** ``MixtralForCausalLM`` and ``Qwen2MoeForCausalLM`` MLPs become spikelm ``moe``
layers (:class:`spikelm.layers.moe.SpikingMoE`), tensor for tensor:

* router ``mlp.gate.weight [E, D]`` (Mixtral's older ``block_sparse_moe.gate.weight``) ->
  ``ffn.router.weight``; both route with softmax in float32 then top-k; Mixtral always
  renormalises the top-k weights, Qwen2-MoE when its ``norm_topk_prob`` says so;
* experts, in either key style transformers reads (``conversion_mapping.py``): the fused 3D
  ``mlp.experts.gate_up_proj [E, 2I, D]`` (gate rows first, then up: ``chunk(2)`` of each
  expert's ``[2I, D]``, as ``MixtralExperts.forward``) and ``mlp.experts.down_proj [E, D, I]``,
  or per expert ``block_sparse_moe.experts.{e}.w1/w3/w2`` (gate / up / down, Mixtral) and
  ``mlp.experts.{e}.gate_proj/up_proj/down_proj`` (Qwen2-MoE) -> ``ffn.experts.{e}.*_proj``;
* Qwen2-MoE's shared expert ``mlp.shared_expert.*_proj`` -> ``ffn.shared_experts.0.*_proj``
  and its gate ``mlp.shared_expert_gate.weight [1, D]`` -> ``ffn.shared_gate.weight``
  (``sigmoid`` of it scales the shared output in both); Qwen2-MoE's dense layers
  (``mlp_only_layers``, ``decoder_sparse_step``) stay ``swiglu`` MLPs of ``intermediate_size``.

The config takes ``E``, ``k``, the expert widths, ``norm_topk_prob`` and ``router_aux_loss_coef``
from the source; capacity 0 (dropless, as transformers' forward) and no router z-loss (neither
source trains with one).

**Upcycling** (``--moe-experts E --moe-top-k K [--moe-shared S]``): every dense SwiGLU MLP of a
Llama-family checkpoint, or of a spikelm checkpoint with ``swiglu`` MLPs, becomes a ``moe`` MLP
whose ``E`` routed and ``S`` shared experts are copies of it, each down projection (weight and
bias) scaled by ``1 / (1 + S)``, with renormalised top-k weights (``norm_topk_prob``) and a
small random router (``N(0, initializer_range)``, seeded). The routed weights sum to 1 whatever
the router says, so at step 0 ``y = sum_i w_i f(x)/(1+S) + S f(x)/(1+S) = f(x)``: the upcycled
model computes what the dense one does, up to float rounding (with or without adaptive spiking:
every expert sees the same input). The SpikingBrain report (Pan et al. 2025, arXiv:2509.05276,
Sec. 3.2, Eqs. 15-18) upcycles Qwen2.5-7B into SpikingBrain-76B by copying the dense FFN into
all ``N`` experts and scaling shared and routed experts by ``alpha = (1 / (S + k/N))^(1/3)`` at
init, which preserves the output only approximately (it assumes uniform router probabilities);
the renormalised top-k weights and the ``1 / (1 + S)`` down-projection scale here preserve it
exactly. Training then breaks the symmetry of the experts (router gradients, spiking noise).
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..layers.mlp import SwiGLU
from ..layers.moe import SpikingMoE
from ..layers.registry import kind_of
from ..models.configuration_spikelm import SpikeLMConfig
from .mapping import ConversionError

MOE_MLP = kind_of(SpikingMoE)
"""MLP kind of a mixture-of-experts layer (``"moe"``)."""
DENSE_MLP = kind_of(SwiGLU)
"""MLP kind upcycling turns into :data:`MOE_MLP` (``"swiglu"``)."""
ROUTER_SEED_OFFSET = 50000
"""Upcycled router of layer ``i`` is drawn with seed ``seed * 100003 + ROUTER_SEED_OFFSET + i``
(GLA gate factors use ``seed * 100003 + i``, so the two never share a stream)."""
UPCYCLE_ACCEPTS = "a Llama-family checkpoint (llama, qwen2, qwen3, mistral) or a spikelm checkpoint with swiglu MLPs"


@dataclass(frozen=True)
class Upcycle:
    """An upcycling request: ``experts`` routed experts (E), ``top_k`` (k), ``shared`` (S)."""

    experts: int
    top_k: int
    shared: int = 0

    @property
    def down_scale(self) -> float:
        """Scale of every expert's down projection, ``1 / (1 + S)``."""
        return 1.0 / (1 + self.shared)


def check_upcycle_args(experts: int | None, top_k: int | None, shared: int | None) -> Upcycle | None:
    """The :class:`Upcycle` of ``--moe-experts/--moe-top-k/--moe-shared`` (None when none is given).

    Raises:
        ConversionError: ``top_k`` or ``shared`` without ``experts``, ``experts`` without
            ``top_k``, ``experts < 1``, ``top_k`` outside ``1..experts``, ``shared < 0`` (the
            message names the flag and what is accepted).
    """
    if experts is None:
        given = [f for f, v in (("--moe-top-k", top_k), ("--moe-shared", shared)) if v is not None]
        if given:
            raise ConversionError(f"{' and '.join(given)} need --moe-experts E (the number of routed experts, >= 1)")
        return None
    if experts < 1:
        raise ConversionError(f"--moe-experts must be >= 1 (the number of routed experts), got {experts}")
    if top_k is None:
        raise ConversionError(f"--moe-experts needs --moe-top-k K (experts per token, 1..{experts})")
    if not 1 <= top_k <= experts:
        raise ConversionError(f"--moe-top-k must be between 1 and --moe-experts ({experts}), got {top_k}")
    shared = 0 if shared is None else shared
    if shared < 0:
        raise ConversionError(f"--moe-shared must be >= 0 (always-on shared experts), got {shared}")
    return Upcycle(experts, top_k, shared)


def source_moe_layers(cfg) -> list[bool]:
    """Which layers of a transformers source config are MoE: Mixtral all; Qwen2-MoE layer ``i``
    iff ``num_experts > 0``, ``i not in mlp_only_layers`` and ``(i + 1) % decoder_sparse_step == 0``
    (``Qwen2MoeDecoderLayer``); any other model none."""
    n = cfg.num_hidden_layers
    if cfg.model_type == "mixtral":
        return [True] * n
    if cfg.model_type == "qwen2_moe":
        only = set(getattr(cfg, "mlp_only_layers", None) or [])
        step = int(getattr(cfg, "decoder_sparse_step", 1) or 1)
        return [cfg.num_experts > 0 and i not in only and (i + 1) % step == 0 for i in range(n)]
    return [False] * n


def source_moe_fields(cfg) -> dict:
    """``SpikeLMConfig`` keywords of a Mixtral / Qwen2-MoE source's MLPs (module docstring):
    per-layer ``mlp_types`` and, when some layer is MoE, ``num_experts``, ``num_experts_per_tok``,
    the expert widths, ``shared_expert_gate``, ``norm_topk_prob``, ``router_aux_loss_coef``,
    softmax scores, capacity 0, z-loss 0."""
    moe = source_moe_layers(cfg)
    out = {"mlp_types": [MOE_MLP if m else DENSE_MLP for m in moe]}
    if not any(moe):
        return out
    qwen = cfg.model_type == "qwen2_moe"
    out.update({
        "num_experts": int(cfg.num_experts if qwen else cfg.num_local_experts),
        "num_experts_per_tok": int(cfg.num_experts_per_tok),
        "moe_intermediate_size": int(cfg.moe_intermediate_size if qwen else cfg.intermediate_size),
        "num_shared_experts": 1 if qwen else 0,
        "shared_expert_intermediate_size": int(cfg.shared_expert_intermediate_size) if qwen else None,
        "shared_expert_gate": qwen, "norm_topk_prob": bool(cfg.norm_topk_prob) if qwen else True,
        "router_score_func": "softmax", "moe_capacity_factor": 0.0,
        "router_aux_loss_coef": float(getattr(cfg, "router_aux_loss_coef", 0.001)), "router_z_loss_coef": 0.0,
    })
    return out


_LAYER = re.compile(r"^model\.layers\.(\d+)\.(?:mlp|block_sparse_moe)\.(.+)$")
_PROJ = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj", "gate_proj": "gate_proj", "up_proj": "up_proj",
         "down_proj": "down_proj"}
_PER_EXPERT = re.compile(r"^experts\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$")
_SHARED = re.compile(r"^shared_expert\.(gate_proj|up_proj|down_proj)\.weight$")


def moe_tensor(name: str, t: torch.Tensor, n_layers: int) -> tuple[list[tuple[str, torch.Tensor]], str] | None:
    """Where a Mixtral / Qwen2-MoE MoE tensor goes: ``([(spikelm name, tensor), ...], note)``,
    several pairs for a fused 3D expert tensor (one per expert, cloned), or None when ``name``
    is not an MoE tensor (the dense mapping then applies).

    Args: ``name`` the source name; ``t`` its tensor (``gate_up_proj [E, 2I, D]``,
    ``down_proj [E, D, I]``, else 2D); ``n_layers`` the source's layer count.
    Raises:
        ConversionError: a layer index beyond ``n_layers``; a fused tensor that is not 3D (or
            whose gate_up rows are odd).
    """
    m = _LAYER.match(name)
    if not m:
        return None
    i, rest = int(m.group(1)), m.group(2)
    if i >= n_layers:
        raise ConversionError(f"tensor {name!r} belongs to layer {i}, but num_hidden_layers is {n_layers}")
    p = f"model.blocks.{i}.ffn."
    if rest == "gate.weight":
        return [(p + "router.weight", t)], f"router of moe layer {i}"
    if rest == "shared_expert_gate.weight":
        return [(p + "shared_gate.weight", t)], f"shared-expert gate of moe layer {i}"
    if mm := _SHARED.match(rest):
        return [(p + f"shared_experts.0.{mm.group(1)}.weight", t)], f"shared expert of moe layer {i}"
    if mm := _PER_EXPERT.match(rest):
        return [(p + f"experts.{mm.group(1)}.{_PROJ[mm.group(2)]}.weight", t)], f"expert of moe layer {i}"
    if rest in ("experts.gate_up_proj", "experts.down_proj"):
        if t.ndim != 3 or (rest == "experts.gate_up_proj" and t.shape[1] % 2):
            raise ConversionError(f"fused expert tensor {name} has shape {list(t.shape)}; expected [E, 2I, D] "
                                  "for gate_up_proj or [E, D, I] for down_proj")
        if rest == "experts.down_proj":
            pairs = [(p + f"experts.{e}.down_proj.weight", t[e].clone()) for e in range(t.shape[0])]
            return pairs, f"fused down_proj of moe layer {i}, split per expert"
        inter = t.shape[1] // 2
        pairs = []
        for e in range(t.shape[0]):
            pairs += [(p + f"experts.{e}.gate_proj.weight", t[e, :inter].clone()),
                      (p + f"experts.{e}.up_proj.weight", t[e, inter:].clone())]
        return pairs, f"fused gate_up_proj of moe layer {i}, split per expert (gate rows first, then up)"
    return None


def upcycle_config(config: SpikeLMConfig, up: Upcycle, src: str | Path) -> SpikeLMConfig:
    """``config`` with every ``swiglu`` MLP turned into a ``moe`` MLP of ``up.experts`` routed and
    ``up.shared`` shared experts of the dense width (``intermediate_size``), top-k
    ``up.top_k``, renormalised top-k weights, softmax scores, no shared gate, capacity 0; the
    other fields (including the router loss weights) are kept.

    Raises:
        ConversionError: ``config`` already has ``moe`` MLPs, or has no ``swiglu`` MLP (names
            ``src``, its MLP kinds and what upcycling accepts).
    """
    kinds = list(dict.fromkeys(config.mlp_types))
    if MOE_MLP in kinds:
        raise ConversionError(f"--moe-experts upcycles dense SwiGLU MLPs, but {src} is already a mixture of experts "
                              f"(mlp_types {', '.join(kinds)}); accepted: {UPCYCLE_ACCEPTS}")
    if DENSE_MLP not in kinds:
        raise ConversionError(f"--moe-experts upcycles dense SwiGLU MLPs, but {src} has none (mlp_types "
                              f"{', '.join(kinds)}); accepted: {UPCYCLE_ACCEPTS}")
    d = config.to_dict()
    for k in ("auto_map", "architectures", "transformers_version", "_name_or_path"):
        d.pop(k, None)
    d.update(mlp_types=[MOE_MLP if k == DENSE_MLP else k for k in config.mlp_types], num_experts=up.experts,
             num_experts_per_tok=up.top_k, num_shared_experts=up.shared,
             moe_intermediate_size=config.intermediate_size,
             shared_expert_intermediate_size=config.intermediate_size if up.shared else None,
             shared_expert_gate=False, router_score_func="softmax", norm_topk_prob=True, moe_capacity_factor=0.0)
    return SpikeLMConfig.from_dict(d)


_DENSE = re.compile(r"^model\.blocks\.(\d+)\.ffn\.(gate_proj|up_proj|down_proj)\.(weight|bias)$")


def router_init(config: SpikeLMConfig, layer: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """The upcycled router weight of ``layer``: ``[E, D]`` in ``dtype``, ``N(0, initializer_range)``
    from seed ``seed * 100003 + ROUTER_SEED_OFFSET + layer`` (deterministic)."""
    gen = torch.Generator().manual_seed(seed * 100003 + ROUTER_SEED_OFFSET + layer)
    w = torch.randn(config.num_experts, config.hidden_size, generator=gen) * config.initializer_range
    return w.to(dtype)


def upcycle_tensor(dest: str, t: torch.Tensor, config: SpikeLMConfig, up: Upcycle, seed: int = 0
                   ) -> tuple[list[tuple[str, torch.Tensor]], dict[str, torch.Tensor], str] | None:
    """Copies of a dense MLP tensor (spikelm name ``dest``, e.g. ``model.blocks.3.ffn.down_proj.weight``)
    for the experts of an upcycled layer (``config.mlp_types[i] == "moe"``), or None for any
    other tensor.

    Returns ``(copies, new, note)``: ``copies`` the ``[(expert tensor name, tensor)]`` of the
    ``E`` routed and ``S`` shared experts (down_proj weight and bias times ``1 / (1 + S)``, same
    dtype and shape as ``t``); ``new`` the layer's router (:func:`router_init`) when ``dest`` is
    its ``gate_proj.weight`` (once per layer), else ``{}``; ``note`` for the report.
    """
    m = _DENSE.match(dest)
    if not m or config.mlp_types[int(m.group(1))] != MOE_MLP:
        return None
    i, proj, kind = int(m.group(1)), m.group(2), m.group(3)
    scaled = proj == "down_proj" and up.shared > 0
    v = t * up.down_scale if scaled else t
    p = f"model.blocks.{i}.ffn."
    copies = [(p + f"experts.{e}.{proj}.{kind}", v.clone()) for e in range(up.experts)]
    copies += [(p + f"shared_experts.{s}.{proj}.{kind}", v.clone()) for s in range(up.shared)]
    new = {p + "router.weight": router_init(config, i, t.dtype, seed)} if proj == "gate_proj" and kind == "weight" \
        else {}
    note = (f"copied into the {up.experts} routed and {up.shared} shared experts of moe layer {i}"
            + (f" (times 1/{1 + up.shared})" if scaled else ""))
    return copies, new, note


def router_note(config: SpikeLMConfig, seed: int) -> str:
    """Report line of an upcycled router."""
    return f"N(0, {config.initializer_range}) (seed {seed}); experts are identical, so any routing gives the dense output"


def upcycle_report(up: Upcycle) -> dict:
    """The ``moe`` entry of an upcycling report."""
    return {"upcycled": True, "num_experts": up.experts, "num_experts_per_tok": up.top_k,
            "num_shared_experts": up.shared, "down_proj_scale": up.down_scale, "norm_topk_prob": True}


def upcycle_spikelm(src_dir: str | Path, out_dir: str | Path, *, moe_experts: int | None = None,
                    moe_top_k: int | None = None,
                    moe_shared: int | None = None, seed: int = 0) -> dict:
    """Upcycle a spikelm checkpoint's ``swiglu`` MLPs into ``moe`` MLPs (module docstring).

    Reads ``src_dir`` (``config.json`` of a :class:`~spikelm.SpikeLMConfig`, safetensors shards,
    one in memory at a time); writes ``out_dir`` atomically: the new config, one output shard
    per source shard (every other tensor copied as it is, same dtype), the tokenizer files and
    ``generation_config.json`` when present, the remote code, ``conversion_report.json``.
    The result computes what the source computes (up to float rounding), adaptive spiking
    included.

    Returns:
        The report: ``tensors`` (every source tensor: ``to``, ``file``, ``shape``, ``dtype``,
        ``note``), ``new_tensors`` (the routers), ``moe``, ``mixer_types``, ``mlp_types``,
        ``exact`` (True), ``spiking``.
    Raises:
        ConversionError: bad ``--moe-*`` values, a source without ``swiglu`` MLPs or already
            MoE (:func:`upcycle_config`), a missing / unexpected / wrongly shaped tensor.
        FileExistsError / FileNotFoundError: ``out_dir`` exists; no ``config.json`` or a shard.
    """
    from safetensors.torch import save_file

    from ..hub import write_remote_code
    from ..train.rundir import atomic_dir
    from .convert import (
        EXTRA_FILES,
        REPORT_NAME,
        TOKENIZER_FILES,
        _expected_shapes,
        _source_shards,
        finish_shards,
        output_shard_names,
        place_tensors,
        read_source,
        shard_tensors,
    )

    up = check_upcycle_args(moe_experts, moe_top_k, moe_shared)
    if up is None:
        raise ConversionError(f"{src_dir} is already a spikelm checkpoint; converting one only upcycles its SwiGLU "
                              "MLPs: give --moe-experts E --moe-top-k K [--moe-shared S]")
    src, out, raw = read_source(src_dir, out_dir)
    if raw.get("model_type") != "spikelm":
        raise ConversionError(f"{src} holds a {raw.get('model_type')!r} config, not a spikelm one")
    config = upcycle_config(SpikeLMConfig.from_pretrained(src), up, src)
    weight_map = _source_shards(src)
    expected = _expected_shapes(config)
    tied = config.tie_word_embeddings
    files = sorted(set(weight_map.values()))
    out_names = output_shard_names(files)
    report_tensors: dict[str, dict] = {}
    new_tensors: dict[str, str] = {}
    written: dict[str, str] = {}
    total_size = 0
    with atomic_dir(out) as tmp:
        for file in files:
            tensors: dict[str, torch.Tensor] = {}
            for name, t, entry in shard_tensors(src, weight_map, file):
                report_tensors[name] = entry
                if name == "head.weight" and tied:
                    entry["note"] = "tie_word_embeddings: the head is model.embeddings.weight (tied on load)"
                    continue
                pairs, new, entry["note"] = upcycle_tensor(name, t, config, up, seed) or ([(name, t)], {}, "copied")
                place_tensors(tensors, name, list(t.shape), pairs, new, entry, expected, written, new_tensors,
                              out_names[file], router_note(config, seed))
            total_size += sum(v.numel() * v.element_size() for v in tensors.values())
            save_file(tensors, str(tmp / out_names[file]), metadata={"format": "pt"})
            del tensors
        finish_shards(tmp, expected, written, total_size, len(files))
        config.save_pretrained(tmp)
        write_remote_code(tmp)
        copied = [f for f in (*TOKENIZER_FILES, *EXTRA_FILES) if (src / f).is_file()]
        for f in copied:
            shutil.copy2(src / f, tmp / f)
        report = {
            "source": str(src), "source_model_type": "spikelm", "mixer_types": list(config.mixer_types),
            "mlp_types": list(config.mlp_types), "spiking": config.adaptive_spike_mode,
            "window": getattr(config, "sliding_window", None), "exact": True, "moe": upcycle_report(up),
            "copied_files": copied, "output_files": sorted(set(written.values())),
            "tensors": dict(sorted(report_tensors.items())), "new_tensors": dict(sorted(new_tensors.items())),
        }
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return report
