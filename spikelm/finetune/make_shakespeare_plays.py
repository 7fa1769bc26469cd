"""Build the shipped labelled set ``recipes/data/shakespeare-plays``: "which play is this speech
from", six classes, from tiny Shakespeare.

Deterministic: the same ``input.txt`` and seed give byte-identical files. Run::

    python -m spikelm.finetune.make_shakespeare_plays [--input input.txt] [--out recipes/data/shakespeare-plays]

Tiny Shakespeare (Karpathy's char-rnn corpus) is speeches from several plays, ``SPEAKER:`` on a
line of its own, without play boundaries. A speaker who appears in one play only names it:
:data:`PLAYS` lists such speakers, hand-checked against the plays' casts (the English histories
Richard II, Richard III and Henry VI share many speakers, so they are one class). Each record is
``{"text": <the speech, its lines joined by spaces, cut at MAX_CHARS at a word boundary>,
"label": <play>}``, without the speaker's name; speeches of fewer than ``MIN_WORDS`` words are
dropped. Every class gets ``N_TRAIN`` train and ``N_VAL`` validation speeches (balanced: the
majority-class baseline is 1/6), drawn with ``SEED`` from distinct speeches.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from .make_shakespeare_qa import parse_speeches

PLAYS: dict[str, tuple[str, ...]] = {
    "coriolanus": ("MENENIUS", "CORIOLANUS", "SICINIUS", "BRUTUS", "COMINIUS", "VOLUMNIA", "AUFIDIUS", "MARCIUS"),
    "romeo_and_juliet": ("ROMEO", "JULIET", "Nurse", "BENVOLIO", "MERCUTIO", "FRIAR LAURENCE", "CAPULET",
                         "LADY CAPULET"),
    "taming_of_the_shrew": ("PETRUCHIO", "TRANIO", "KATHARINA", "BAPTISTA", "HORTENSIO", "GRUMIO", "LUCENTIO",
                            "GREMIO", "BIONDELLO"),
    "measure_for_measure": ("DUKE VINCENTIO", "ISABELLA", "LUCIO", "ANGELO", "ESCALUS", "Provost", "POMPEY",
                            "CLAUDIO"),
    "winters_tale": ("LEONTES", "CAMILLO", "AUTOLYCUS", "PAULINA", "POLIXENES", "FLORIZEL", "HERMIONE"),
    "english_histories": ("GLOUCESTER", "KING RICHARD III", "KING EDWARD IV", "QUEEN ELIZABETH", "KING RICHARD II",
                          "WARWICK", "HENRY BOLINGBROKE", "QUEEN MARGARET", "KING HENRY VI"),
}
"""Play (label) -> speakers found in that play only (within tiny Shakespeare)."""

LABELS = tuple(PLAYS)
"""The label names in id order (``config.id2label``)."""

SEED = 1623  # the First Folio
N_TRAIN, N_VAL = 240, 40
MIN_WORDS, MAX_CHARS = 8, 300


def _text(lines: list[str]) -> str:
    text = " ".join(lines)
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS].rsplit(" ", 1)[0]
    return text


def build(corpus: str, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """``(train, val)`` records from the corpus text (module docstring).

    Raises:
        ValueError: a play with fewer than ``N_TRAIN + N_VAL`` usable speeches.
    """
    by_play: dict[str, list[str]] = {p: [] for p in PLAYS}
    owner = {s: p for p, speakers in PLAYS.items() for s in speakers}
    for speaker, lines in parse_speeches(corpus):
        if speaker in owner and len(" ".join(lines).split()) >= MIN_WORDS:
            by_play[owner[speaker]].append(_text(lines))
    rng = random.Random(seed)
    train, val = [], []
    for play, texts in by_play.items():
        texts = sorted(set(texts))
        if len(texts) < N_TRAIN + N_VAL:
            raise ValueError(f"{play}: {len(texts)} usable speeches, need {N_TRAIN + N_VAL}")
        picked = rng.sample(texts, N_TRAIN + N_VAL)
        train += [{"text": t, "label": play} for t in picked[:N_TRAIN]]
        val += [{"text": t, "label": play} for t in picked[N_TRAIN:]]
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


def main(argv: list[str] | None = None) -> int:
    """Write ``train.jsonl`` and ``val.jsonl`` (atomically: temp file, then rename)."""
    from ..recipes import DATA_DIR

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=str(DATA_DIR / "tinyshakespeare" / "input.txt"))
    p.add_argument("--out", default=str(DATA_DIR / "shakespeare-plays"))
    a = p.parse_args(argv)
    train, val = build(Path(a.input).read_text(encoding="utf-8"))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, recs in (("train.jsonl", train), ("val.jsonl", val)):
        tmp = out / f".{name}.tmp"
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
        tmp.replace(out / name)
    print(f"wrote {len(train)} train and {len(val)} validation records ({len(LABELS)} plays) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
