"""``spikelm convert SRC_DIR OUT_DIR [--layout ...] [--spiking ...]``: the command line of
:func:`spikelm.convert.convert_checkpoint`."""
from __future__ import annotations

import argparse
import json

from ..convert.convert import DEFAULT_GLA_MEMORY, REPORT_NAME
from ..convert.mapping import ARCHITECTURES, LAYOUTS, SPIKING_MODES
from .errors import CLIError


def convert_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spikelm convert",
        description="Convert a Hugging Face causal-LM checkpoint (" + ", ".join(ARCHITECTURES) + ") into a spikelm "
                    "checkpoint: embeddings, norms, MLP and attention projections reused; softmax attention kept as "
                    "sliding-window attention or turned into spiking gated linear attention; adaptive spiking neurons "
                    "on projection inputs. Writes OUT_DIR atomically, with conversion_report.json.")
    p.add_argument("src_dir", metavar="SRC_DIR", help="HF checkpoint directory (config.json, safetensors, tokenizer)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="new output directory (must not exist)")
    p.add_argument("--layout", default="hybrid",
                   help=f"{' | '.join(LAYOUTS)} or a comma-separated gla/swa list, one per layer. softmax: every layer "
                        "sliding-window softmax attention (exact with --spiking off); hybrid: SpikingBrain-7B, GLA on "
                        "even layers and SWA on odd ones; linear: all GLA (default: hybrid)")
    p.add_argument("--spiking", default="ste", choices=SPIKING_MODES,
                   help="adaptive spiking on projection inputs: off, ste (training) or expanded (inference) "
                        "(default: ste)")
    p.add_argument("--window", type=int, default=None,
                   help="SWA window in tokens (default: the source's context/window for softmax, else min(4096, it))")
    p.add_argument("--tokenizer", default=None, metavar="DIR", help="tokenizer directory (default: SRC_DIR)")
    p.add_argument("--gla-memory", type=float, default=DEFAULT_GLA_MEMORY,
                   help=f"initial GLA gate memory in tokens (default {DEFAULT_GLA_MEMORY:g})")
    p.add_argument("--gla-norm-init", default="v_rms", choices=("v_rms", "ones"),
                   help="GLA head-norm weight init (default v_rms: the estimated RMS of v)")
    p.add_argument("--seed", type=int, default=0, help="seed of the new random GLA gate factor (default 0)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    return p


def cmd_convert(argv: list[str]) -> int:
    """Run ``spikelm convert``; prints a summary (or the report with ``--json``) and returns 0.

    Raises:
        SystemExit: from argparse on malformed arguments (status 2) or ``--help`` (0).
        CLIError: bad arguments, an existing OUT_DIR, a missing file, or a checkpoint
            that cannot be converted (the message says which tensor/file and why).
    """
    from ..convert.convert import convert_checkpoint

    args = convert_parser().parse_args(argv)  # usage errors: argparse prints usage and exits 2, as other commands
    if args.window is not None and args.window < 1:
        raise CLIError(f"--window must be >= 1, got {args.window}")
    try:
        report = convert_checkpoint(args.src_dir, args.out_dir, layout=args.layout, spiking=args.spiking,
                                    window=args.window, tokenizer_dir=args.tokenizer, gla_memory=args.gla_memory,
                                    gla_norm_init=args.gla_norm_init, seed=args.seed)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise CLIError(str(e)) from e
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    used = sum(1 for t in report["tensors"].values() if t["to"])
    print(f"converted {report['source_model_type']} {args.src_dir} -> {args.out_dir}")
    print(f"  layers: {', '.join(report['mixer_types'])} (window {report['window']}), spiking: {report['spiking']}"
          f"{' (exact: same logits as the source)' if report['exact'] else ''}")
    print(f"  {used} of {len(report['tensors'])} source tensors reused, {len(report['new_tensors'])} new; "
          f"details in {args.out_dir}/{REPORT_NAME}")
    return 0
