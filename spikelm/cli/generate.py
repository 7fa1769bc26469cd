"""``spikelm generate``: text from a saved model through the HF text-generation pipeline."""
from __future__ import annotations

import argparse

from .errors import CLIError

def cmd_generate(argv: list[str]) -> int:
    """``spikelm generate MODEL (PROMPT | --prompt-file FILE) [...]``: print a completion. Raises CLIError on a
    bad model or prompt."""
    p = argparse.ArgumentParser(prog="spikelm generate", description="Generate text with a saved model "
                                "through the Hugging Face text-generation pipeline.")
    p.add_argument("model_dir")
    p.add_argument("prompt", nargs="?", help="the prompt text (or --prompt-file)")
    p.add_argument("--prompt-file", help="read the prompt from this UTF-8 text file (e.g. a long document: "
                   "spikelm models prefill it in chunks of config.prefill_chunk_tokens tokens)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true", help="greedy decoding (ignores temperature/top-k/top-p)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat", action="store_true", help="the prompt is a user message: render it with the "
                   "tokenizer's chat template (fine-tuned models) and print only the reply")
    a = p.parse_args(argv)
    from ..generation import generate_text

    if (a.prompt is None) == (a.prompt_file is None):
        raise CLIError("give the prompt either as PROMPT or with --prompt-file FILE (exactly one)")
    if a.prompt_file is not None:
        try:
            a.prompt = open(a.prompt_file, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as e:
            raise CLIError(f"cannot read --prompt-file {a.prompt_file}: {e}") from e

    try:
        print(generate_text(a.model_dir, a.prompt, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                            top_k=a.top_k, top_p=a.top_p, greedy=a.greedy, seed=a.seed, chat=a.chat))
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from e
    return 0
