"""Command line: ``spikelm train | finetune | convert | generate | eval | export | push | plot``.

    spikelm train [RECIPE] [--resume | --overwrite] [--section.key VALUE ...]
    spikelm finetune MODEL_DIR [RECIPE] [--resume | --overwrite] [--section.key VALUE ...]
    spikelm convert SRC_DIR OUT_DIR [--layout softmax|hybrid|linear|gla,swa,...] [--spiking off|ste|expanded]
                    [--window W] [--tokenizer DIR] [--gla-memory T] [--gla-norm-init v_rms|ones] [--json]
    spikelm generate MODEL_DIR "prompt" [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--greedy] [--chat]
    spikelm eval MODEL FILE [FILE ...] [--block-size L] [--stride S] [--batch-size N] [--no-spikes] [--json]
    spikelm eval CLASSIFIER LABELLED.jsonl [...] [--text-field F] [--label-field F]     (accuracy, macro-F1)
    spikelm eval MODEL --tasks T[,T...] [--num-fewshot N] [--limit N] [--include-path DIR]   (lm-eval)
    spikelm export RUN_DIR OUT_DIR [--tag stepN] [--eval-json FILE] [--push-to-hub REPO_ID [--private]]
    spikelm export ADAPTER_DIR OUT_DIR --merge-lora [--base BASE_DIR]
    spikelm push MODEL_DIR REPO_ID [--private]
    spikelm plot [RUN_DIR ...] [--eval EVAL.json ...] [--out DIR]

MODEL is a Hugging Face directory or a Hub model id.

RECIPE is a YAML file or the name of a shipped recipe (``spikelm train --list-recipes``);
without one the default ``shakespeare`` recipe runs. Errors print one line and exit 2
(``spikelm --debug CMD ...``, or ``--debug`` anywhere, shows the traceback instead).

One module per command in this package (``spikelm.cli.train``, ``.finetune``, ``.convert``,
``.generate``, ``.eval``, ``.export`` (with ``push``), ``.plot``); ``CLIError`` (``.errors``) is
the one user error.
"""
from __future__ import annotations

import json
import sys

from .convert import cmd_convert
from .errors import CLIError
from .eval import cmd_eval
from .export import cmd_export, cmd_push
from .finetune import cmd_finetune
from .generate import cmd_generate
from .plot import cmd_plot
from .recipe import DEFAULT_RECIPE, load_recipe, recipe_parser, resolve_recipe, shipped_recipes
from .train import cmd_train

__all__ = ["CLIError", "COMMANDS", "DEFAULT_RECIPE", "load_recipe", "main", "recipe_parser", "resolve_recipe",
           "shipped_recipes"]


COMMANDS = {"train": cmd_train, "finetune": cmd_finetune, "convert": cmd_convert, "generate": cmd_generate,
            "eval": cmd_eval, "export": cmd_export, "push": cmd_push, "plot": cmd_plot}


def _one_line(e: BaseException) -> str:
    """An expected failure as one line naming the file (``OSError.filename``) when there is one."""
    if isinstance(e, CLIError):
        return str(e)
    msg = " ".join(str(e).split()) or type(e).__name__
    name = getattr(e, "filename", None)
    if isinstance(e, OSError):
        what = e.strerror or msg
        return f"{name}: {what}" if name else what
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON ({msg})"
    return f"{type(e).__name__}: {msg}"


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Failures that come from the user's files or machine, not from a bug: printed as one line."""
    from safetensors import SafetensorError

    return CLIError, OSError, json.JSONDecodeError, SafetensorError, UnicodeDecodeError


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``spikelm`` console script; returns the exit status (2 for a user error,
    printed as one line; ``--debug`` re-raises it with its traceback)."""
    argv = sys.argv[1:] if argv is None else argv
    # the DeepSpeed launcher prepends --local_rank=N (and sets LOCAL_RANK): drop it
    argv = [a for a in argv if not a.startswith("--local_rank=")]
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"spikelm: error: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0
    try:
        return COMMANDS[argv[0]](argv[1:])
    except _expected_errors() as e:
        if debug:
            raise
        print(f"spikelm {argv[0]}: error: {_one_line(e)}", file=sys.stderr)
        return 2
