"""``spikelm convert SRC_DIR OUT_DIR [--layout ...] [--spiking ...] [--moe-experts E --moe-top-k K
[--moe-shared S]]``: the command line of :func:`spikelm.convert.convert_any` (Llama family:
:func:`spikelm.convert.convert_checkpoint`; MoE upcycling: :mod:`spikelm.convert.moe`)."""
from __future__ import annotations

import argparse
import json

from ..convert.convert import DEFAULT_GLA_MEMORY, REPORT_NAME
from ..convert.mapping import ARCHITECTURES, LAYOUTS
from .errors import CLIError


def convert_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spikelm convert",
        description="Convert a checkpoint into a spikelm checkpoint: a SpikeGPT .pth (SpikeGPT's trainer), a "
                    "transformers RWKV-4 (model_type rwkv), SpikingBrain-7B (model_type gla_swa) or a Hugging Face "
                    "Llama-family causal LM (" + ", ".join(ARCHITECTURES) + "; embeddings, norms, MLP and attention "
                    "projections reused, softmax attention kept as sliding-window attention or turned into spiking "
                    "gated linear attention, adaptive spiking neurons on projection inputs; Mixtral / Qwen2-MoE "
                    "experts become moe layers). --moe-experts upcycles dense SwiGLU MLPs (of a Llama-family or a "
                    "spikelm checkpoint) into mixture-of-experts MLPs that start with the dense output. Writes "
                    "OUT_DIR atomically, with conversion_report.json.")
    p.add_argument("src_dir", metavar="SRC", help="a SpikeGPT .pth (or its folder) or an HF checkpoint directory")
    p.add_argument("out_dir", metavar="OUT_DIR", help="new output directory (must not exist)")
    p.add_argument("--spiking", default=None, choices=("off", "ste", "expanded", "lif"),
                   help="neurons: SpikeGPT/RWKV sources lif (LIF after each sub-block, default) or off; "
                        "SpikingBrain/Llama sources adaptive spiking on projection inputs: ste (training, default), "
                        "expanded (inference) or off")
    p.add_argument("--context-length", type=int, default=None,
                   help="SpikeGPT .pth: the context length it was trained with (required: the file does not hold it)")
    p.add_argument("--spike-embedding", default=None, choices=("on", "off"),
                   help="SpikeGPT/RWKV: binarise the embedding (SpikeGPT's model.py: on; RWKV default: off)")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="tokenizer directory (SpikeGPT: also a tokenizer.json file; default: the source's)")
    p.add_argument("--layout", default=None,
                   help=f"Llama family: {' | '.join(LAYOUTS)} or a comma-separated gla/swa list, one per layer. "
                        "softmax: every layer sliding-window softmax attention (exact with --spiking off); hybrid: "
                        "SpikingBrain-7B, GLA on even layers and SWA on odd ones; linear: all GLA (default: hybrid)")
    p.add_argument("--window", type=int, default=None,
                   help="Llama family: SWA window in tokens (default: the source's context/window for softmax, "
                        "else min(4096, it))")
    p.add_argument("--gla-memory", type=float, default=None,
                   help=f"Llama family: initial GLA gate memory in tokens (default {DEFAULT_GLA_MEMORY:g})")
    p.add_argument("--gla-norm-init", default=None, choices=("v_rms", "ones"),
                   help="Llama family: GLA head-norm weight init (default v_rms: the estimated RMS of v)")
    p.add_argument("--seed", type=int, default=None, help="Llama family / upcycling: seed of the new random GLA gate "
                   "factor and router (default 0)")
    p.add_argument("--moe-experts", type=int, default=None, metavar="E",
                   help="upcycle every dense SwiGLU MLP (Llama family or spikelm checkpoint) into a moe MLP of E "
                        "routed experts, each a copy of it (the model's output is unchanged at step 0)")
    p.add_argument("--moe-top-k", type=int, default=None, metavar="K",
                   help="with --moe-experts: experts per token, 1..E (required)")
    p.add_argument("--moe-shared", type=int, default=None, metavar="S",
                   help="with --moe-experts: always-on shared experts, also copies (default 0); every expert's "
                        "down projection is scaled by 1/(1+S)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    return p


def cmd_convert(argv: list[str]) -> int:
    """Run ``spikelm convert``; prints a summary (or the report with ``--json``) and returns 0.

    Raises:
        SystemExit: from argparse on malformed arguments (status 2) or ``--help`` (0).
        CLIError: bad arguments, an existing OUT_DIR, a missing file, or a checkpoint
            that cannot be converted (the message says which tensor/file and why).
    """
    from ..convert.sources import convert_any

    args = convert_parser().parse_args(argv)  # usage errors: argparse prints usage and exits 2, as other commands
    for name in ("window", "context_length"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    emb = None if args.spike_embedding is None else args.spike_embedding == "on"
    try:
        report = convert_any(args.src_dir, args.out_dir, spiking=args.spiking, tokenizer=args.tokenizer,
                             context_length=args.context_length, spike_embedding=emb, layout=args.layout,
                             window=args.window, gla_memory=args.gla_memory, gla_norm_init=args.gla_norm_init,
                             seed=args.seed, moe_experts=args.moe_experts, moe_top_k=args.moe_top_k,
                             moe_shared=args.moe_shared)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise CLIError(str(e)) from e
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    tensors = report.get("tensors", {})
    used = sum(1 for t in tensors.values() if t.get("to"))
    print(f"converted {report.get('source_model_type', report['source_kind'])} {args.src_dir} -> {args.out_dir}")
    mixers = report.get("mixer_types") or (report.get("config") or {}).get("mixer_types")
    if mixers:
        window = f" (window {report['window']})" if report.get("window") else ""
        print(f"  layers: {', '.join(map(str, mixers))}{window}, spiking: {report.get('spiking')}"
              f"{' (exact: same logits as the source)' if report.get('exact') else ''}")
    moe = report.get("moe") or {}
    if moe.get("upcycled"):
        print(f"  upcycled swiglu MLPs into moe: {moe['num_experts']} experts (top-{moe['num_experts_per_tok']}), "
              f"{moe['num_shared_experts']} shared, down_proj x {moe['down_proj_scale']:g}")
    print(f"  {used} of {len(tensors)} source tensors reused, {len(report.get('new_tensors', {}))} new; "
          f"details in {args.out_dir}/{REPORT_NAME}")
    return 0
