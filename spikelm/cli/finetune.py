"""``spikelm finetune MODEL_DIR [RECIPE] [--resume | --overwrite] [--section.key VALUE ...]``.

Fine-tuning is training that starts from a saved model: ``spikelm train RECIPE
--model.init_from MODEL_DIR``. RECIPE defaults to ``finetune-shakespeare-qa`` (full
fine-tuning on the shipped Shakespeare QA pairs); ``finetune-shakespeare-qa-lora`` trains LoRA
adapters instead (``model.lora``). MODEL_DIR is a Hugging Face directory of a spikelm or
llama model with its tokenizer, e.g. ``runs/shakespeare/final``.
"""
from __future__ import annotations

from .errors import CLIError
from .train import cmd_train

DEFAULT_FINETUNE_RECIPE = "finetune-shakespeare-qa"


def cmd_finetune(argv: list[str]) -> int:
    """Run ``spikelm finetune``; returns the exit status (0).

    Raises:
        CLIError: no MODEL_DIR, MODEL_DIR without a config.json, ``--model.init_from``
            given as well, plus every error of ``spikelm train`` (bad recipe, run directory, data).
    """
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    model_dir, rest = argv[0], argv[1:]
    if model_dir.startswith("-"):
        raise CLIError(f"the first argument must be the model directory to fine-tune, got {model_dir!r}; "
                       "usage: spikelm finetune MODEL_DIR [RECIPE] [--section.key VALUE ...]")
    from ..hub.ids import resolve_model

    try:  # a local directory or a Hub model id
        resolve_model(model_dir)
    except FileNotFoundError as e:
        raise CLIError(f"{e}; pass the 'final' folder of a run, e.g. runs/shakespeare/final") from None
    if any(a == "--model.init_from" or a.startswith("--model.init_from=") for a in rest):
        raise CLIError("--model.init_from is MODEL_DIR for spikelm finetune; do not give it twice")
    recipe = rest[0] if rest and not rest[0].startswith("-") else DEFAULT_FINETUNE_RECIPE
    overrides = rest[1:] if rest and not rest[0].startswith("-") else rest
    return cmd_train([recipe, *overrides, f"--model.init_from={model_dir}"])
