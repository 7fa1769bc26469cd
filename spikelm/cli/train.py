"""``spikelm train``: train a recipe end to end."""
from __future__ import annotations

import os

from .errors import CLIError
from .recipe import load_recipe, recipe_parser, shipped_recipes

USAGE = "spikelm train [RECIPE] [--resume | --overwrite] [--list-recipes] [--section.key VALUE ...]"

def cmd_train(argv: list[str]) -> int:
    """``spikelm train [RECIPE] [--resume | --overwrite] [--section.key VALUE ...]``: run a recipe,
    print the validation result and a sample. Returns 0.

    Raises:
        CLIError: a bad recipe, key or value, a run directory that cannot be used, bad data.
    """
    if "--list-recipes" in argv:
        print("\n".join(shipped_recipes()))
        return 0
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        recipe_parser().print_help()
        return 0
    recipe = argv[0] if argv and not argv[0].startswith("-") else None
    rest = argv[1:] if recipe else argv
    resume, overwrite = "--resume" in rest, "--overwrite" in rest
    rest = [a for a in rest if a not in ("--resume", "--overwrite")]
    r = load_recipe(recipe, rest)
    from ..train.rundir import RunDirError
    from ..train.trainer import train

    try:
        summary = train(r, resume=resume, overwrite=overwrite)
    except (RunDirError, FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from e
    finally:
        _shutdown_ranks()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if summary.get("stopped_by"):
        print(f"\nstopped by {summary['stopped_by']} after step {summary['last_step']}: checkpoint saved in "
              f"{r.train.run_dir}/checkpoints; continue with: spikelm train ... --resume")
        return 0
    val = summary["val"]
    speed = (f"{summary['train_seconds']:.0f} s training, {summary['tokens_per_s']:,.0f} tokens/s"
             if summary["tokens_per_s"] else "no steps left to train")
    if summary.get("mfu"):
        speed += f", MFU {100 * summary['mfu']:.1f}%"
    scores = (f"accuracy {val['accuracy']:.4f}, macro-F1 {val['macro_f1']:.4f}, loss {val['loss']:.4f} nats/row"
              if "accuracy" in val else f"loss {val['loss']:.4f} nats/token, {val['bpb']:.4f} bits/byte, "
              f"perplexity {val['perplexity']:.2f}")
    print(f"\ndone in {summary['wall_seconds']:.0f} s ({speed}): validation {scores}")
    print(f"model saved to {summary['final_dir']}")
    if r.train.sample_tokens > 0 and r.data.format != "classification":
        from ..generation import generate_text

        text = generate_text(summary["final_dir"], r.train.sample_prompt, max_new_tokens=r.train.sample_tokens,
                             temperature=0.8, top_k=50, seed=r.train.seed)
        print(f"\n--- sample (prompt {r.train.sample_prompt!r}, temperature 0.8, top-k 50) ---\n{text}\n---")
    return 0


def _shutdown_ranks() -> None:
    """Destroy a multi-rank process group before the process exits (its gloo/NCCL threads
    otherwise race interpreter shutdown: ``terminate called without an active exception``).
    A one-process group is kept: ``spikelm.cli.main`` may be called again in the same process."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.destroy_process_group()

