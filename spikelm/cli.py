"""Command line: ``spikelm train | generate | eval``.

    spikelm train [RECIPE] [--resume | --overwrite] [--section.key VALUE ...]
    spikelm generate MODEL_DIR "prompt" [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--greedy]
    spikelm eval MODEL_DIR FILE [FILE ...] [--block-size L] [--stride S] [--batch-size N] [--json]
    spikelm export RUN_DIR OUT_DIR [--tag stepN]

RECIPE is a YAML file or the name of a shipped recipe (``spikelm train --list-recipes``);
without one the default ``shakespeare`` recipe runs. Errors print one line and exit 2
(``SPIKELM_DEBUG=1`` shows the traceback instead).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .recipes import RECIPES_DIR

DEFAULT_RECIPE = "shakespeare"


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def shipped_recipes() -> list[str]:
    """Names of the recipes shipped with spikelm (``spikelm/recipes/*.yaml``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe path: an existing file, or a shipped recipe by name. Raises CLIError otherwise."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = RECIPES_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    raise CLIError(f"recipe {name_or_path!r} not found: not a file, and not a shipped recipe "
                   f"({', '.join(shipped_recipes())})")


def recipe_parser():
    """jsonargparse parser of a :class:`~spikelm.train.config.Recipe` (YAML via ``--config``)."""
    from jsonargparse import ArgumentParser

    from .train.config import Recipe

    p = ArgumentParser(prog="spikelm train", exit_on_error=False, allow_abbrev=False,
                       description="Train a spiking language model from a recipe.")
    p.add_argument("--config", action="config", help="recipe YAML")
    p.add_class_arguments(Recipe, nested_key=None, as_group=False)
    return p


def load_recipe(recipe: str | None, overrides: list[str]):
    """Parse a recipe file plus ``--section.key value`` overrides into a validated ``Recipe``."""
    from jsonargparse import ArgumentError

    from .train.config import DataConfig, ModelConfig, OptimConfig, Recipe, TrainConfig, validate_recipe

    path = resolve_recipe(recipe or DEFAULT_RECIPE)
    parser = recipe_parser()
    try:
        ns = parser.parse_args(["--config", str(path), *overrides])
    except (ArgumentError, SystemExit) as e:
        raise CLIError(f"bad recipe {path} or override: {str(e).strip()}") from None
    r = Recipe(model=ModelConfig(**ns.model.as_dict()), data=DataConfig(**ns.data.as_dict()),
               optim=OptimConfig(**ns.optim.as_dict()), train=TrainConfig(**ns.train.as_dict()))
    try:
        validate_recipe(r)
    except ValueError as e:
        raise CLIError(str(e)) from e
    return r


def cmd_train(argv: list[str]) -> int:
    if "--list-recipes" in argv:
        print("\n".join(shipped_recipes()))
        return 0
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        recipe_parser().print_help()
        return 0
    recipe = argv[0] if argv and not argv[0].startswith("-") else None
    rest = argv[1:] if recipe else argv
    resume, overwrite = "--resume" in rest, "--overwrite" in rest
    rest = [a for a in rest if a not in ("--resume", "--overwrite")]
    r = load_recipe(recipe, rest)
    from .train.loop import train
    from .train.rundir import RunDirError

    try:
        summary = train(r, resume=resume, overwrite=overwrite)
    except (RunDirError, FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from e
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
    print(f"\ndone in {summary['wall_seconds']:.0f} s ({speed}): validation loss {val['loss']:.4f} nats/token, "
          f"{val['bpb']:.4f} bits/byte, perplexity {val['perplexity']:.2f}")
    print(f"model saved to {summary['final_dir']}")
    if r.train.sample_tokens > 0:
        from .generation import generate_text

        text = generate_text(summary["final_dir"], r.train.sample_prompt, max_new_tokens=r.train.sample_tokens,
                             temperature=0.8, top_k=50, seed=r.train.seed)
        print(f"\n--- sample (prompt {r.train.sample_prompt!r}, temperature 0.8, top-k 50) ---\n{text}\n---")
    return 0


def cmd_generate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="spikelm generate", description="Generate text with a saved model "
                                "through the Hugging Face text-generation pipeline.")
    p.add_argument("model_dir")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true", help="greedy decoding (ignores temperature/top-k/top-p)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from .generation import generate_text

    try:
        print(generate_text(a.model_dir, a.prompt, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                            top_k=a.top_k, top_p=a.top_p, greedy=a.greedy, seed=a.seed))
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from e
    return 0


def cmd_eval(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="spikelm eval", description="Loss, bits per byte and perplexity of a "
                                "saved model on text files.")
    p.add_argument("model_dir")
    p.add_argument("files", nargs="+")
    p.add_argument("--block-size", type=int, default=None, help="tokens per window (default: the model's context)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--stride", type=int, default=None,
                   help="window step in tokens (default: the block size); smaller gives every token more left "
                        "context at block/stride times the compute")
    p.add_argument("--text-field", default="text")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    from .eval.perplexity import evaluate_files

    try:
        res = evaluate_files(a.model_dir, a.files, block_size=a.block_size, batch_size=a.batch_size,
                             text_field=a.text_field, stride=a.stride)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from e
    if a.json:
        print(json.dumps(res))
    else:
        print(f"{res['tokens']} tokens, {res['bytes']} bytes: loss {res['loss']:.4f} nats/token, "
              f"{res['bpb']:.4f} bits/byte, perplexity {res['perplexity']:.2f}")
        if res.get("spike_rates"):
            print("spike rate per site: " + ", ".join(f"{k} {v:.3f}" for k, v in res["spike_rates"].items()))
    return 0


def cmd_export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="spikelm export", description="Consolidate a run's DeepSpeed checkpoint "
                                "(any ZeRO stage) into a Hugging Face directory.")
    p.add_argument("run_dir", help="a run directory (or its checkpoints/ folder)")
    p.add_argument("out_dir", help="new directory to write (must not exist)")
    p.add_argument("--tag", default=None, help="checkpoint tag, e.g. step200 (default: the latest)")
    a = p.parse_args(argv)
    from .train.export import export_checkpoint

    try:
        out = export_checkpoint(a.run_dir, a.out_dir, a.tag)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise CLIError(str(e)) from e
    print(f"exported {a.run_dir} to {out}")
    return 0


COMMANDS = {"train": cmd_train, "generate": cmd_generate, "eval": cmd_eval, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``spikelm`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    # the DeepSpeed launcher prepends --local_rank=N (and sets LOCAL_RANK): drop it
    argv = [a for a in argv if not a.startswith("--local_rank=")]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"spikelm: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0
    try:
        return COMMANDS[argv[0]](argv[1:])
    except CLIError as e:
        if os.environ.get("SPIKELM_DEBUG") == "1":
            raise
        print(f"spikelm {argv[0]}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
