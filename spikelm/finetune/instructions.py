"""Instruction / chat data for fine-tuning: jsonl reading, chat templates, loss-masked examples.

A record is one JSON object per line of a ``.jsonl`` file, in one of two forms:

* ``{"prompt": str, "response": str}`` (optionally ``"system": str``): one turn;
* ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``: a chat,
  rendered with the tokenizer's chat template (``tokenizer.apply_chat_template``).

:func:`encode_example` turns a record into ``input_ids`` and ``labels`` of the same length
(Hugging Face convention: the model shifts the labels, ``labels[t]`` is the target predicted
from position ``t - 1``). Prompt, user and system tokens get ``-100`` (no loss, no gradient);
the tokens of each assistant response, and the eos that ends it, keep their ids. The first
token of an example is always ``-100``: nothing inside the example predicts it.

:class:`InstructionDataset` serves fixed-length rows, padded (one example per row) or packed
(whole examples back to back). Plain-text continued pre-training needs none of this: use
``spikelm.data.pack_blocks`` (every token is a target).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

__all__ = ["DEFAULT_CHAT_TEMPLATE", "IGNORE_INDEX", "InstructionDataset", "JsonlRecord", "encode_example",
           "ensure_chat_template", "read_jsonl", "response_loss",
           "shakespeare_qa_path"]

from ..eval.loss import IGNORE_INDEX

DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] -}}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- else -%}{{- '\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)
"""Chat template (Jinja) for tokenizers that have none, e.g. the byte-level BPE of ``spikelm train``.

Each message is ``<|role|>`` + newline + content; a system or user message ends with a
newline, an assistant message ends with the tokenizer's eos token (so generation stops there);
the generation prompt is ``<|assistant|>`` + newline. A user question and its answer render as::

    <|user|>\\nWho says: "O Romeo, Romeo!"?\\n<|assistant|>\\nJULIET<|endoftext|>

The role markers are plain text (no new tokens, so the vocabulary and embeddings keep their
size); the newline after ``<|assistant|>`` is a pre-tokenizer boundary for byte-level BPE, so
the prompt rendered with ``add_generation_prompt=True`` is a token prefix of the full chat.
"""

_ROLES = ("system", "user", "assistant")


class JsonlRecord(dict):
    """A ``dict`` read from a jsonl file that remembers where it came from (``record.where``,
    ``"path:line"``), so errors about its fields can name the file and line."""

    where: str | None = None

    def __init__(self, data: dict, where: str | None = None):
        super().__init__(data)
        self.where = where


def _check_on_error(on_error: str) -> None:
    if on_error not in ("skip", "abort"):
        raise ValueError(f"on_error must be 'skip' or 'abort', got {on_error!r}")


def read_jsonl(path: str | os.PathLike, *, on_error: str = "skip") -> tuple[list[dict], list[str]]:
    """Read a jsonl file: one JSON object per line (blank lines are ignored).

    Args:
        path: the ``.jsonl`` file (UTF-8).
        on_error: what to do with a malformed line (invalid JSON, or JSON that is not an
            object): ``"skip"`` it with a warning, or ``"abort"``.
    Returns:
        ``(records, warnings)``: the objects in file order, each a :class:`JsonlRecord` (a
        ``dict`` with ``.where = "path:line"``), and one warning per skipped line, e.g.
        ``"data.jsonl:17: invalid JSON (Expecting ',' delimiter: line 1 column 12 (char 11))"``,
        followed, when any line was skipped, by a summary ``"data.jsonl: skipped 3 malformed
        line(s) of 120"``.
    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``on_error="abort"`` and a line is malformed (the message starts with
            ``path:line``); a bad ``on_error``; a file that is not UTF-8 text.
    """
    _check_on_error(on_error)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"jsonl file {p} does not exist")
    records: list[dict] = []
    warnings: list[str] = []
    n_lines = 0
    try:
        text = p.read_text(encoding="utf-8-sig")  # -sig: a leading byte-order mark is not part of line 1
    except UnicodeDecodeError as e:
        raise ValueError(f"{p} is not UTF-8 text: {e}") from e
    # split on "\n" only: str.splitlines() also splits on U+2028, U+0085, ..., which JSON strings
    # may hold unescaped
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        n_lines += 1
        where = f"{p}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problem = f"{where}: invalid JSON ({e})"
        else:
            if isinstance(obj, dict):
                records.append(JsonlRecord(obj, where))
                continue
            problem = f"{where}: expected a JSON object per line, got {type(obj).__name__}"
        if on_error == "abort":
            raise ValueError(f"{problem}; fix the line, or read with on_error='skip' to drop malformed lines")
        warnings.append(problem)
    if warnings:
        warnings.append(f"{p}: skipped {len(warnings)} malformed line(s) of {n_lines}")
    return records, warnings


def ensure_chat_template(tokenizer, template: str | None = None):
    """Give ``tokenizer`` a chat template; ``save_pretrained`` then stores it with the model.

    Args:
        tokenizer: a ``transformers`` tokenizer with an eos token.
        template: a Jinja chat template to set; None keeps the tokenizer's own template, or
            sets :data:`DEFAULT_CHAT_TEMPLATE` when it has none.
    Returns:
        The same tokenizer (modified in place).
    Raises:
        ValueError: the tokenizer has no eos token (the templates end assistant turns with it).
    """
    if getattr(tokenizer, "eos_token", None) is None:
        raise ValueError(f"the tokenizer ({type(tokenizer).__name__}) has no eos_token; chat templates end "
                         "assistant turns with it. Set tokenizer.eos_token first")
    if template is not None:
        tokenizer.chat_template = template
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


def _at(where: str | None) -> str:
    return f"{where}: " if where else ""


def _field(record: dict, name: str, where: str | None, kind: type = str):
    if name not in record:
        raise ValueError(f"{_at(where)}missing field {name!r} (the record has: {', '.join(map(repr, record)) or 'none'})")
    value = record[name]
    if not isinstance(value, kind):
        raise ValueError(f"{_at(where)}field {name!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _messages(record: dict, where: str | None) -> list[dict]:
    msgs = _field(record, "messages", where, list)
    if not msgs:
        raise ValueError(f"{_at(where)}field 'messages' is an empty list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ValueError(f"{_at(where)}messages[{i}] must be an object with 'role' and 'content', "
                             f"got {type(m).__name__}")
        role = _field(m, "role", f"{_at(where)}messages[{i}]".rstrip(": "), str)
        content = _field(m, "content", f"{_at(where)}messages[{i}]".rstrip(": "), str)
        if role not in _ROLES:
            raise ValueError(f"{_at(where)}messages[{i}] has role {role!r}; accepted: {', '.join(_ROLES)}")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError(f"{_at(where)}the messages have no 'assistant' turn: nothing to train on")
    return out


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _encode_chat(messages: list[dict], tokenizer, where: str | None) -> tuple[list[int], list[int]]:
    full = _ids(tokenizer, _render(tokenizer, messages, False))
    labels = [IGNORE_INDEX] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = _ids(tokenizer, _render(tokenizer, messages[:i], True)) if i else []
        upto = _ids(tokenizer, _render(tokenizer, messages[: i + 1], False))
        if full[: len(prefix)] != prefix or full[: len(upto)] != upto or upto[: len(prefix)] != prefix:
            raise ValueError(
                f"{_at(where)}the chat template does not render the conversation up to assistant turn {i} "
                "(with add_generation_prompt=True) as a token prefix of the whole conversation, so the prompt "
                "tokens cannot be told from the response tokens. Use a template whose assistant turns are "
                "appended after the generation prompt (e.g. spikelm.finetune.DEFAULT_CHAT_TEMPLATE)")
        labels[len(prefix): len(upto)] = full[len(prefix): len(upto)]
    return full, labels


def encode_example(record: dict, tokenizer, *, max_length: int | None = None, chat: bool | None = None,
                   where: str | None = None) -> dict[str, list[int]]:
    """Token ids and loss-masked labels of one instruction record.

    Args:
        record: ``{"prompt", "response"[, "system"]}`` or ``{"messages": [{"role", "content"}, ...]}``.
        tokenizer: a ``transformers`` tokenizer with an eos token; a chat template is needed
            for ``messages`` records (see :func:`ensure_chat_template`).
        max_length: cut ``input_ids``/``labels`` to their first ``max_length`` tokens (None:
            no cut). :class:`InstructionDataset` counts or skips such examples instead.
        chat: how a prompt/response record is rendered: True = as the chat
            ``[system,] user: prompt, assistant: response`` through the chat template (what
            ``pipeline("text-generation")`` does with a messages list); False = raw text,
            ``prompt`` tokens then ``response`` tokens then eos, each part encoded on its own
            (what a plain-text prompt to the pipeline gives); None (default) = chat when the
            tokenizer has a chat template. Ignored for ``messages`` records (always chat).
        where: ``"file:line"`` for error messages (default: ``record.where`` of a :class:`JsonlRecord`).
    Returns:
        ``{"input_ids": list[int], "labels": list[int]}`` of equal length: labels are the
        ids at response/assistant positions (and the eos closing each response) and -100
        everywhere else, including the first position. A response that does not end with
        eos in the rendering gets one appended.
    Raises:
        ValueError: a missing or mistyped field (named, with ``where``), an unknown role, no
            assistant turn, a chat without a chat template, a template that breaks the
            prompt-prefix property, a tokenizer without eos, or ``max_length < 2``.
    """
    where = where if where is not None else getattr(record, "where", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError(f"the tokenizer ({type(tokenizer).__name__}) has no eos_token; set one first")
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length must be >= 2 (one prompt token and one target), got {max_length}")
    if not isinstance(record, dict):
        raise ValueError(f"{_at(where)}expected a JSON object, got {type(record).__name__}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if "messages" in record:
        messages = _messages(record, where)
        if not has_template:
            raise ValueError(f"{_at(where)}a 'messages' record needs a chat template and the tokenizer has none; "
                             "call spikelm.finetune.ensure_chat_template(tokenizer) first")
        ids, labels = _encode_chat(messages, tokenizer, where)
    elif "prompt" in record or "response" in record:
        prompt = _field(record, "prompt", where)
        response = _field(record, "response", where)
        system = _field(record, "system", where) if "system" in record else None
        use_chat = has_template if chat is None else chat
        if use_chat:
            if not has_template:
                raise ValueError("chat=True but the tokenizer has no chat template; call ensure_chat_template first")
            messages = ([{"role": "system", "content": system}] if system is not None else []) + [
                {"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            ids, labels = _encode_chat(messages, tokenizer, where)
        else:
            p = _ids(tokenizer, (system + "\n" if system else "") + prompt)
            r = _ids(tokenizer, response) + [eos]
            ids, labels = p + r, [IGNORE_INDEX] * len(p) + r
    else:
        raise ValueError(f"{_at(where)}missing field 'prompt' and 'response', or 'messages' (the record has: "
                         f"{', '.join(map(repr, record)) or 'none'})")
    if ids and ids[-1] != eos and labels[-1] != IGNORE_INDEX:
        ids, labels = ids + [eos], labels + [eos]
    if labels:
        labels[0] = IGNORE_INDEX
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


class InstructionDataset(torch.utils.data.Dataset):
    """Fixed-length, loss-masked rows of instruction/chat examples for causal-LM fine-tuning.

    Args:
        data: a jsonl path, or a sequence of records (dicts; :class:`JsonlRecord` keeps file:line).
        tokenizer: a ``transformers`` tokenizer with an eos token (and a chat template for
            ``messages`` records).
        max_length: row length ``L`` (the model's training context).
        packing: ``"pad"``: one example per row, right-padded with ``pad_token_id`` (eos when
            unset), labels -100 and attention_mask 0 on padding; every example starts from a
            fresh recurrent state, as at generation. ``"pack"``: whole examples back to back
            (each ends with eos) in order, a new row when the next one does not fit, the tail
            padded as above. Examples are never split across rows, so no prompt or response
            loses its context; a recurrent model does carry its state from one example into
            the next within a row (as in pre-training packing, separated by eos).
        overlong: an example longer than ``L``: ``"truncate"`` it to its first L tokens
            (dropped when no response token is left), or ``"skip"`` it. Either way counted in
            ``warnings``.
        on_error: a malformed jsonl line or a record with a missing/mistyped field:
            ``"skip"`` with a warning (file:line and the problem), or ``"abort"`` (ValueError).
        chat: rendering of prompt/response records (see :func:`encode_example`).
    Attributes:
        warnings: list[str] of skipped lines/records and truncation counts.
        num_examples: examples kept; ``num_truncated``, ``num_skipped`` (over-long or invalid).
        layout: per row, the ``(example index, start, stop)`` spans it holds.
    Items:
        ``{"input_ids": LongTensor [L], "labels": LongTensor [L], "attention_mask": LongTensor [L]}``;
        ``labels`` are aligned with ``input_ids`` (the model shifts them; see
        ``SpikeLMForCausalLM.forward``), -100 on prompt/system/user tokens and padding.
    Raises:
        ValueError: bad options, ``on_error="abort"`` and a bad line/record (file:line in the
            message), or no usable example (the message quotes the first warnings).
        FileNotFoundError: a missing jsonl file.
    """

    def __init__(self, data: str | os.PathLike | Sequence[dict], tokenizer, *, max_length: int,
                 packing: str = "pad", overlong: str = "truncate", on_error: str = "skip", chat: bool | None = None):
        if packing not in ("pad", "pack"):
            raise ValueError(f"packing must be 'pad' or 'pack', got {packing!r}")
        if overlong not in ("truncate", "skip"):
            raise ValueError(f"overlong must be 'truncate' or 'skip', got {overlong!r}")
        _check_on_error(on_error)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
        self.max_length, self.packing = max_length, packing
        self.warnings: list[str] = []
        if isinstance(data, (str, os.PathLike)):
            records, warns = read_jsonl(data, on_error=on_error)
            self.warnings += warns
            source = str(data)
        else:
            records, source = list(data), "records"
        pad = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.eos_token first")
        self.pad_id = int(pad)
        examples: list[tuple[list[int], list[int]]] = []
        self.num_truncated = self.num_skipped = 0
        n_overlong = n_prompt_only = 0
        for i, rec in enumerate(records):
            where = getattr(rec, "where", None) or f"{source}[{i}]"
            try:
                ex = encode_example(rec, tokenizer, chat=chat, where=where)
            except ValueError as e:
                if on_error == "abort" or "token prefix" in str(e):  # a broken template is no bad record
                    raise
                self.warnings.append(str(e))
                self.num_skipped += 1
                continue
            ids, labels = ex["input_ids"], ex["labels"]
            if len(ids) > max_length:
                n_overlong += 1
                if overlong == "skip":
                    self.num_skipped += 1
                    continue
                ids, labels = ids[:max_length], labels[:max_length]
                if all(t == IGNORE_INDEX for t in labels):
                    n_prompt_only += 1
                    self.num_skipped += 1
                    continue
                self.num_truncated += 1
            examples.append((ids, labels))
        if n_overlong:
            if overlong == "skip":
                what = "skipped"
            else:
                what = f"{self.num_truncated} truncated"
                if n_prompt_only:
                    what += f", {n_prompt_only} skipped (the prompt alone fills max_length)"
            self.warnings.append(f"{source}: {n_overlong} example(s) longer than max_length={max_length}: {what}")
        if not examples:
            first = "; ".join(self.warnings[:3]) or "no records"
            raise ValueError(f"{source}: no usable instruction example ({first})")
        self.num_examples = len(examples)
        self.layout: list[list[tuple[int, int, int]]] = self._layout([len(ids) for ids, _ in examples])
        self._rows = [self._row(examples, spans) for spans in self.layout]

    def _layout(self, lengths: Iterable[int]) -> list[list[tuple[int, int, int]]]:
        rows: list[list[tuple[int, int, int]]] = []
        used = self.max_length
        for k, n in enumerate(lengths):
            if self.packing == "pad" or used + n > self.max_length:
                rows.append([])
                used = 0
            rows[-1].append((k, used, used + n))
            used += n
        return rows

    def _row(self, examples, spans) -> dict[str, torch.Tensor]:
        L = self.max_length
        ids = torch.full((L,), self.pad_id, dtype=torch.long)
        labels = torch.full((L,), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros(L, dtype=torch.long)
        for k, a, b in spans:
            ids[a:b] = torch.tensor(examples[k][0], dtype=torch.long)
            labels[a:b] = torch.tensor(examples[k][1], dtype=torch.long)
            mask[a:b] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self._rows[i].items()}

    def num_target_tokens(self) -> int:
        """Number of labelled (trained-on) tokens over all rows."""
        return int(sum((r["labels"] != IGNORE_INDEX).sum() for r in self._rows))


def shakespeare_qa_path(split: str = "train") -> str:
    """Path of the shipped Shakespeare QA set (``recipes/data/shakespeare-qa/{split}.jsonl``,
    installed as package data of ``spikelm.recipes``; see its README.md for provenance).

    Raises ValueError for a split other than ``"train"`` or ``"val"``."""
    from ..recipes import DATA_DIR

    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}; the Shakespeare QA set has 'train' and 'val'")
    return str(DATA_DIR / "shakespeare-qa" / f"{split}.jsonl")


@torch.no_grad()
def response_loss(model, dataset, *, batch_size: int = 16, max_batches: int | None = None) -> dict[str, float]:
    """Mean cross-entropy over the labelled (response) tokens of ``dataset``, in nats per token.

    Token-weighted (``spikelm.eval.loss.batch_nll_sum``, the loss training-time validation
    uses): the summed loss of every labelled target over their number, so every response
    token counts once whatever the batch it falls in. The model runs in eval mode (restored
    afterwards).

    Args:
        model: a causal LM (``SpikeLMForCausalLM`` or its peft wrapper) taking
            ``input_ids, attention_mask, labels`` (labels aligned with inputs, shifted inside).
        dataset: an :class:`InstructionDataset` (or any dataset of such dict rows).
        batch_size: rows per forward pass. max_batches: stop after this many batches (None: all).
    Returns:
        ``{"loss": float, "tokens": int}`` (``loss`` is nan when there is no labelled token).
    """
    from ..eval.loss import batch_nll_sum

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
        for k, batch in enumerate(loader):
            if max_batches is not None and k >= max_batches:
                break
            nll, n = batch_nll_sum(model, {key: v.to(device) for key, v in batch.items()})
            total += float(nll)
            count += int(n)
    finally:
        model.train(was_training)
    return {"loss": total / count if count else float("nan"), "tokens": count}
