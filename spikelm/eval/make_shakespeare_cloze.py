"""Build the shipped lm-evaluation-harness task ``shakespeare_cloze`` (``recipes/lm_eval``):
complete a line of Shakespeare, four choices.

Deterministic: the same ``input.txt`` and seed give a byte-identical file. Run::

    python -m spikelm.eval.make_shakespeare_cloze [--input input.txt] [--out recipes/lm_eval/shakespeare_cloze.jsonl]

Items come from the held-out part of tiny Shakespeare: the last 10% of its UTF-8 bytes, which
the default recipes keep for validation (``data.val_fraction: 0.1``), so a model trained by
them has not seen the lines. A line of 8-14 words that occurs once is cut after its first
``CONTEXT_WORDS`` words: the context, and the true rest of the line among three distractors
(the rests of three other such lines), in a seeded order. Chance accuracy is 25%.
"""
from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

SEED, N_ITEMS, CONTEXT_WORDS = 1599, 200, 5


def held_out_text(corpus: str, val_fraction: float = 0.1) -> str:
    """The last ``val_fraction`` of ``corpus``'s UTF-8 bytes (from the next line start)."""
    raw = corpus.encode("utf-8")
    tail = raw[int(len(raw) * (1 - val_fraction)):].decode("utf-8", errors="ignore")
    return tail.split("\n", 1)[1] if "\n" in tail else tail


def build(corpus: str, seed: int = SEED) -> list[dict]:
    """``N_ITEMS`` records ``{"context", "choices": [4 str], "label": int}`` (module docstring).

    Raises:
        ValueError: fewer than ``N_ITEMS`` usable lines.
    """
    lines = [ln.strip() for ln in held_out_text(corpus).split("\n")]
    counts = Counter(lines)
    usable = [ln for ln in lines if 8 <= len(ln.split()) <= 14 and counts[ln] == 1 and not ln.endswith(":")]
    if len(usable) < N_ITEMS:
        raise ValueError(f"{len(usable)} usable held-out lines, need {N_ITEMS}")
    rng = random.Random(seed)
    picked = rng.sample(usable, N_ITEMS)
    rests = [" " + " ".join(ln.split()[CONTEXT_WORDS:]) for ln in picked]
    items = []
    for i, ln in enumerate(picked):
        others = rng.sample([j for j in range(N_ITEMS) if j != i], 3)
        choices = [rests[i]] + [rests[j] for j in others]
        order = list(range(4))
        rng.shuffle(order)
        items.append({"context": " ".join(ln.split()[:CONTEXT_WORDS]), "choices": [choices[k] for k in order],
                      "label": order.index(0)})
    return items


def main(argv: list[str] | None = None) -> int:
    """Write the jsonl (atomically: a temp file, then rename)."""
    from ..recipes import DATA_DIR

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=str(DATA_DIR / "tinyshakespeare" / "input.txt"))
    p.add_argument("--out", default=str(DATA_DIR.parent / "lm_eval" / "shakespeare_cloze.jsonl"))
    a = p.parse_args(argv)
    items = build(Path(a.input).read_text(encoding="utf-8"))
    out = Path(a.out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {len(items)} items to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
