"""Build the shipped Shakespeare question/answer set (``recipes/data/shakespeare-qa``) from tiny Shakespeare.

Deterministic: the same ``input.txt`` and seed give byte-identical files. Run::

    python -m spikelm.finetune.make_shakespeare_qa [--input input.txt] [--out recipes/data/shakespeare-qa]

The corpus is a sequence of speeches, ``SPEAKER:`` on a line of its own, then the speech, then
a blank line. Three kinds of question, drawn from distinct speeches (a speech is used once):

* who:      ``Who says: "<a line>"?``                                  -> ``<Speaker>.``
* reply:    ``What does <B> answer when <A> says: "<A's last line>"?``  -> ``<B's first line>``
* complete: ``Complete this line by <A>: "<first words> ..."``          -> ``<the remaining words>``

Lines are 4-12 words long and occur once in the corpus, so each answer is determined by the text;
prompt + response is at most ``MAX_CHARS`` characters.
"who" questions only ask about the 16 speakers with the most speeches (answers a small model
can learn). One record in four is written in the ``messages`` form (with a system message),
the rest as ``prompt``/``response``, so both input forms are exercised.
"""
from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

SYSTEM = "Answer from the text of Shakespeare."
SEED = 1606
N_PER_KIND = {"who": 110, "reply": 70, "complete": 70}
N_VAL = 50
MAX_CHARS = 140
"""Longest prompt + response in characters: every example fits the default model's 128-token context."""

_SPEAKER = re.compile(r"^([A-Z][A-Za-z' ,.-]*):$")


def parse_speeches(text: str) -> list[tuple[str, list[str]]]:
    """``[(speaker, lines), ...]`` in corpus order: blocks separated by blank lines whose first
    line is ``NAME:``; blocks without such a header are ignored."""
    out = []
    for block in text.split("\n\n"):
        lines = [ln.strip() for ln in block.strip().split("\n") if ln.strip()]
        if len(lines) >= 2:
            m = _SPEAKER.match(lines[0])
            if m:
                out.append((m.group(1), lines[1:]))
    return out


def speaker_name(raw: str) -> str:
    """``"FIRST CITIZEN"`` -> ``"First Citizen"``; ``"KING RICHARD III"`` keeps its numeral."""
    words = []
    for w in raw.split():
        words.append(w if re.fullmatch(r"[IVX]+", w) else w.capitalize())
    return " ".join(words)


def _good_line(line: str, counts: Counter) -> bool:
    n = len(line.split())
    return 4 <= n <= 12 and counts[line] == 1 and '"' not in line


def _add(records: list[dict], prompt: str, response: str) -> bool:
    """Append ``{"prompt", "response"}`` when it is at most ``MAX_CHARS`` long; say whether it was."""
    if len(prompt) + len(response) > MAX_CHARS:
        return False
    records.append({"prompt": prompt, "response": response})
    return True


def build(text: str, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """``(train, val)`` records from the corpus ``text`` (see the module docstring)."""
    speeches = parse_speeches(text)
    counts = Counter(ln for _, lines in speeches for ln in lines)
    top = {s for s, _ in Counter(s for s, _ in speeches).most_common(16)}
    rng = random.Random(seed)
    order = list(range(len(speeches)))
    rng.shuffle(order)
    used: set[int] = set()
    records: list[dict] = []
    want = dict(N_PER_KIND)
    for i in order:
        if not any(want.values()):
            break
        speaker, lines = speeches[i]
        name = speaker_name(speaker)
        if want["who"] and speaker in top and i not in used:
            cands = [ln for ln in lines if _good_line(ln, counts)]
            if cands:
                line = rng.choice(cands)
                if _add(records, f'Who says: "{line}"?', f"{name}."):
                    used.add(i)
                    want["who"] -= 1
                    continue
        if want["reply"] and i + 1 < len(speeches) and i not in used and i + 1 not in used:
            nxt_speaker, nxt_lines = speeches[i + 1]
            last, first = lines[-1], nxt_lines[0]
            if (nxt_speaker != speaker and _good_line(last, counts) and _good_line(first, counts)
                    and _add(records, f'What does {speaker_name(nxt_speaker)} answer when {name} says: "{last}"?',
                             first)):
                used.update((i, i + 1))
                want["reply"] -= 1
                continue
        if want["complete"] and i not in used:
            cands = [ln for ln in lines if _good_line(ln, counts) and len(ln.split()) >= 6]
            if cands:
                words = rng.choice(cands).split()
                cut = len(words) // 2
                if _add(records, f'Complete this line by {name}: "{" ".join(words[:cut])} ..."',
                        " ".join(words[cut:])):
                    used.add(i)
                    want["complete"] -= 1
    if any(want.values()):
        raise ValueError(f"the corpus is too small for the question set; still wanted: {want}")
    rng.shuffle(records)
    for k, rec in enumerate(records):
        if k % 4 == 3:
            records[k] = {"messages": [{"role": "system", "content": SYSTEM},
                                       {"role": "user", "content": rec["prompt"]},
                                       {"role": "assistant", "content": rec["response"]}]}
    return records[N_VAL:], records[:N_VAL]


def write_jsonl(path: Path, records: list[dict]) -> None:
    """One JSON object per line, keys in insertion order, UTF-8, newline-terminated."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    from ..data import tiny_shakespeare_path
    from ..recipes import DATA_DIR

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", default=tiny_shakespeare_path(), help="tiny Shakespeare input.txt")
    ap.add_argument("--out", default=str(DATA_DIR / "shakespeare-qa"),
                    help="output folder (train.jsonl, val.jsonl)")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    train, val = build(Path(args.input).read_text(encoding="utf-8"), args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "val.jsonl", val)
    print(f"wrote {len(train)} train and {len(val)} val records to {out}")


if __name__ == "__main__":
    main()
