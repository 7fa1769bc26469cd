"""Command line: ``spikelm train | finetune | convert | generate | eval | export | push | plot``.

    spikelm train [RECIPE] [--resume | --overwrite] [--section.key VALUE ...]
    spikelm finetune MODEL_DIR [RECIPE] [--resume | --overwrite] [--section.key VALUE ...]
    spikelm convert SRC_DIR OUT_DIR [--layout softmax|hybrid|linear|gla,swa,...] [--spiking off|ste|expanded]
                    [--window W] [--tokenizer DIR] [--gla-memory T] [--gla-norm-init v_rms|ones] [--json]
    spikelm generate MODEL_DIR "prompt" [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--greedy] [--chat]
    spikelm eval MODEL FILE [FILE ...] [--block-size L] [--stride S] [--batch-size N] [--no-spikes] [--json]
    spikelm export RUN_DIR OUT_DIR [--tag stepN] [--eval-json FILE] [--push-to-hub REPO_ID [--private]]
    spikelm export ADAPTER_DIR OUT_DIR --merge-lora [--base BASE_DIR]
    spikelm push MODEL_DIR REPO_ID [--private]
    spikelm plot [RUN_DIR ...] [--eval EVAL.json ...] [--out DIR]

MODEL is a Hugging Face directory or a Hub model id.

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
    p.add_argument("--chat", action="store_true", help="the prompt is a user message: render it with the "
                   "tokenizer's chat template (fine-tuned models) and print only the reply")
    a = p.parse_args(argv)
    from .generation import generate_text

    try:
        print(generate_text(a.model_dir, a.prompt, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                            top_k=a.top_k, top_p=a.top_p, greedy=a.greedy, seed=a.seed, chat=a.chat))
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from e
    return 0


def cmd_eval(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="spikelm eval", description="Loss, bits per byte and perplexity (full-context "
                                "strided), spike statistics and an operation/energy estimate of a saved model "
                                "(spikelm or any HF causal LM; a directory or a Hub id) on text files.")
    p.add_argument("model_dir", help="HF model directory or Hub model id")
    p.add_argument("files", nargs="+", help="text/json(l)/parquet files, or one Hub dataset name")
    p.add_argument("--block-size", type=int, default=None, help="tokens per window (default: the model's context)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--stride", type=int, default=None,
                   help="window step in tokens (default: the block size); smaller gives every token more left "
                        "context at block/stride times the compute")
    p.add_argument("--text-field", default="text")
    p.add_argument("--split", default=None, help="split of a Hub dataset (default: validation, test, else train)")
    p.add_argument("--no-spikes", action="store_true", help="skip the spike statistics and energy estimate")
    p.add_argument("--spike-tokens", type=int, default=16384,
                   help="tokens measured for spike statistics/energy (disjoint blocks from the start)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="replace a config field at load time (JSON value), e.g. adaptive_spike_k=2")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    overrides = {}
    for item in a.override:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--override expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(val)
        except json.JSONDecodeError:
            overrides[key] = val
    if a.spike_tokens < 1:
        raise CLIError(f"--spike-tokens must be >= 1, got {a.spike_tokens}")
    from .eval.perplexity import evaluate_files

    try:
        res = evaluate_files(a.model_dir, a.files, block_size=a.block_size, batch_size=a.batch_size,
                             text_field=a.text_field, stride=a.stride, spikes=not a.no_spikes,
                             spike_max_tokens=a.spike_tokens, split=a.split, config_overrides=overrides)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from e
    if a.json:
        print(json.dumps(res))
        return 0
    print(f"{res['tokens']} tokens, {res['bytes']} bytes: loss {res['loss']:.4f} nats/token, "
          f"{res['bpb']:.4f} bits/byte, perplexity {res['perplexity']:.2f} "
          f"(block {res['block_size']}, stride {res['stride']})")
    sp, en = res.get("spikes") or {}, res.get("energy")
    if sp.get("sites"):
        ov = sp["overall"]
        print(f"\nspikes (measured on {en['tokens']} tokens): rate {ov['spike_rate']:.4f}, sparsity "
              f"{ov['sparsity']:.4f}, {ov['spikes_per_token']:.1f} spikes/token")
        w = max(len(k) for k in sp["sites"])
        print(f"  {'site':<{w}}  kind      rate    sparsity  dead    saturated  spikes/token")
        for k, s in sp["sites"].items():
            print(f"  {k:<{w}}  {s['kind']:<8}  {s['spike_rate']:.4f}  {s['sparsity']:.4f}    "
                  f"{s['dead_fraction']:.4f}  {s['saturated_fraction']:.4f}     {s['spikes_per_token']:.1f}")
    elif en is not None:
        print("\nno spiking neurons: dense ANN")
    if en is not None:
        print(f"operations per token: {en['dense_macs_per_token']:,.0f} MACs dense (ANN "
              f"{en['ann_energy_pj_per_token'] / 1e6:.4g} uJ); as SNN {en['snn_macs_per_token']:,.0f} MACs + "
              f"{en['snn_acs_per_token']:,.0f} ACs ({en['snn_energy_pj_per_token'] / 1e6:.4g} uJ), ANN/SNN energy "
              f"{en['energy_ratio']:.2f}x (45 nm: E_MAC {en['e_mac_pj']} pJ, E_AC {en['e_ac_pj']} pJ)")
    return 0


def cmd_export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="spikelm export", description="Consolidate a run's DeepSpeed checkpoint "
                                "(any ZeRO stage) into a Hugging Face directory with a model card and the "
                                "modeling code for trust_remote_code loading; optionally upload it.")
    p.add_argument("run_dir", help="a run directory (or its checkpoints/ folder); with --merge-lora: a LoRA "
                   "adapter directory (e.g. RUN/final/adapter)")
    p.add_argument("out_dir", help="new directory to write (must not exist)")
    p.add_argument("--tag", default=None, help="checkpoint tag, e.g. step200 (default: the latest)")
    p.add_argument("--merge-lora", action="store_true", help="RUN_DIR is a LoRA adapter: merge it into its base "
                   "model (--base, default: the one named in adapter_config.json) as a standalone directory")
    p.add_argument("--base", default=None, help="with --merge-lora: the base model directory")
    p.add_argument("--eval-json", default=None, help="spikelm eval --json output to put in the model card")
    p.add_argument("--license", default=None, help="SPDX license id for the model card, e.g. apache-2.0")
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="upload the directory to this Hub repo")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    a = p.parse_args(argv)
    from .train.export import export_checkpoint

    ev = _read_eval_json(a.eval_json)
    try:
        if a.merge_lora:
            from .finetune.lora import merge_adapter_dir

            out = merge_adapter_dir(a.run_dir, a.base, a.out_dir)
        else:
            out = export_checkpoint(a.run_dir, a.out_dir, a.tag, eval_results=ev, license=a.license,
                                    repo_id=a.push_to_hub)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise CLIError(str(e)) from e
    print(f"exported {a.run_dir} to {out}")
    if a.push_to_hub:
        _push(out, a.push_to_hub, a.private)
    return 0


def _read_eval_json(path: str | None) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CLIError(f"eval result {path} does not exist (write it with spikelm eval ... --json > FILE)") from None
    except json.JSONDecodeError as e:
        raise CLIError(f"{path} is not JSON ({e}); write it with spikelm eval ... --json > FILE") from None


def _push(folder: Path, repo_id: str, private: bool) -> None:
    from .hub import HubError, push_folder

    try:
        url = push_folder(folder, repo_id, private=private)
    except (HubError, FileNotFoundError) as e:
        retry = f"; retry with: spikelm push {folder} {repo_id}" if isinstance(e, HubError) else ""
        raise CLIError(f"{e}{retry}") from e
    print(f"uploaded {folder} to https://huggingface.co/{repo_id} ({url})")


def cmd_push(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="spikelm push", description="Upload an exported Hugging Face directory to the "
                                "Hub (the directory is never modified).")
    p.add_argument("model_dir")
    p.add_argument("repo_id", help="owner/name on the Hub")
    p.add_argument("--private", action="store_true", help="create the repo private")
    a = p.parse_args(argv)
    _push(Path(a.model_dir), a.repo_id, a.private)
    return 0


def cmd_plot(argv: list[str]) -> int:
    from .eval.plot_cli import cmd_plot as run

    return run(argv)


def cmd_finetune(argv: list[str]) -> int:
    """``spikelm finetune``: ``train`` with ``model.init_from`` and a fine-tuning recipe
    (default ``finetune-shakespeare-qa``); see ``spikelm.train.finetune_cli``."""
    from .train.finetune_cli import cmd_finetune as run

    return run(argv)


def cmd_convert(argv: list[str]) -> int:
    """``spikelm convert``: a Llama-family HF checkpoint -> a spikelm checkpoint (``spikelm.convert``)."""
    from .convert.cli import cmd_convert as run

    return run(argv)


COMMANDS = {"train": cmd_train, "finetune": cmd_finetune, "convert": cmd_convert, "generate": cmd_generate,
            "eval": cmd_eval, "export": cmd_export, "push": cmd_push, "plot": cmd_plot}


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
