"""Loss, perplexity and bits per byte of a saved causal LM on text files, full-context strided.

One code path for spikelm models and plain Hugging Face causal LMs, so a spiking model and
its ANN baseline are measured the same way.

Strided evaluation (Hugging Face docs, "Perplexity of fixed-length models"): the documents
are tokenized into one stream ``t[0..T-1]`` (EOS after every document); windows of
``block_size`` input tokens start every ``stride`` tokens; the first window scores all its
targets, each later window only the targets not scored before (its last ``stride`` ones), so
every token ``t[1..T-1]`` is scored exactly once with up to ``block_size`` tokens of left
context (``stride == block_size``: disjoint windows, the cheapest; ``stride == 1``: full
context for every token, the most exact).

Bits per byte (Gao et al. 2020, The Pile) = ``total nats / (ln 2 * bytes)`` where ``bytes`` is
the exact sum of the UTF-8 byte lengths of the scored target tokens (special tokens such as
EOS count 0 bytes), so it is comparable across tokenizers.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..hub.ids import is_hub_id
from .loss import IGNORE_INDEX, token_nll_sum


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the ByteLevel pre-tokenizer's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 byte length of every token id of ``tokenizer``: int64 array ``[len(tokenizer)]``.

    Byte-level BPE (GPT-2 / our tokenizers): a token's string is made of the ByteLevel
    alphabet, one character per byte, so its length is its byte count. Other tokenizers:
    ``len(tokenizer.decode([id]).encode("utf-8"))`` (approximate for tokens that split a
    multi-byte character). Special tokens count 0 bytes.
    """
    n = len(tokenizer)
    toks = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = set(tokenizer.all_special_ids)
    alphabet = set(_bytes_to_unicode().values())
    regular = [t for i, t in enumerate(toks) if i not in special and t is not None]
    byte_level = all(set(t) <= alphabet for t in regular)
    out = np.zeros(n, dtype=np.int64)
    for i, t in enumerate(toks):
        if i in special or t is None:
            continue
        out[i] = len(t) if byte_level else len(tokenizer.decode([i]).encode("utf-8"))
    return out


def strided_windows(num_tokens: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows of a stream of ``num_tokens`` tokens: ``(begin, end, scored)`` triples.

    Window inputs are ``t[begin:end]`` (``end - begin <= block_size``), targets
    ``t[begin+1:end+1]``, of which the last ``scored`` are scored; together the windows score
    ``t[1:num_tokens]`` exactly once, each with as much left context as its window allows.
    Raises ValueError for ``block_size < 1``, ``stride`` outside ``[1, block_size]`` or fewer
    than 2 tokens.
    """
    if block_size < 1 or not 1 <= stride <= block_size:
        raise ValueError(f"need block_size >= 1 and 1 <= stride <= block_size, got {block_size=}, {stride=}")
    if num_tokens < 2:
        raise ValueError(f"need at least 2 tokens to score one, got {num_tokens}")
    last = num_tokens - 1  # inputs t[0..last-1], targets t[1..last]
    out, prev_end, begin = [], 0, 0
    while prev_end < last:
        end = min(begin + block_size, last)
        out.append((begin, end, end - prev_end))
        prev_end, begin = end, begin + stride
    return out


def _model_block_size(model) -> int | None:
    """The model's context in tokens (``config.max_position_embeddings``), None when unset."""
    return getattr(model.config, "max_position_embeddings", None)


@torch.no_grad()
def evaluate_stream(model, ids: torch.Tensor, byte_lengths: np.ndarray | None = None, block_size: int | None = None,
                    stride: int | None = None, batch_size: int = 16) -> dict:
    """Strided evaluation of a loaded causal LM on one token stream.

    Args:
        model: any HF causal LM (``model(input_ids=[B, L]).logits -> [B, L, V]``), in eval mode.
        ids: int64 token ids ``[T]``.
        byte_lengths: int array ``[V]`` of token byte lengths (:func:`token_byte_lengths`);
            None: bytes and bpb are not computed (0 / nan).
        block_size: window length in tokens (default: the model's context length, else 1024).
        stride: window step (default ``block_size``).
        batch_size: windows per forward call.
    Returns:
        ``{"loss": nats/token, "bpb", "perplexity", "tokens", "bytes", "block_size", "stride",
        "spike_rates"}``; spike rates (spikelm models only) are the means of
        ``model.model.spike_rates()`` over the forward calls, weighted by input tokens.
    Raises:
        ValueError: bad block_size/stride, or fewer than 2 tokens.
    """
    block_size = int(block_size or _model_block_size(model) or 1024)
    stride = int(stride or block_size)
    windows = strided_windows(int(ids.numel()), block_size, stride)
    device = next(model.parameters()).device
    bl = None if byte_lengths is None else torch.as_tensor(byte_lengths)
    total, count, n_bytes, rate_w = 0.0, 0, 0, 0
    rates: dict[str, float] = {}
    groups: dict[int, list] = {}
    for w in windows:  # windows of equal length batch together (all but possibly the last)
        groups.setdefault(w[1] - w[0], []).append(w)
    for length, ws in groups.items():
        for s in range(0, len(ws), batch_size):
            chunk = ws[s:s + batch_size]
            x = torch.stack([ids[b:e] for b, e, _ in chunk]).to(device)
            y = torch.stack([ids[b + 1:e + 1] for b, e, _ in chunk])
            logits = model(input_ids=x, use_cache=False).logits.float().cpu()
            scored_y = y.clone()  # each window scores its last `scored` targets (the rest is context)
            for j, (_, _, scored) in enumerate(chunk):
                scored_y[j, :length - scored] = IGNORE_INDEX
                if bl is not None:
                    n_bytes += int(bl[y[j, length - scored:]].sum())
            nll, n = token_nll_sum(logits, scored_y)
            total += nll.item()
            count += int(n)
            inner = getattr(model, "model", None)
            if inner is not None and hasattr(inner, "spike_rates"):
                for k, v in inner.spike_rates().items():
                    rates[k] = rates.get(k, 0.0) + v * x.numel()
                rate_w += x.numel()
    loss = total / count
    bpb = total / (math.log(2) * n_bytes) if n_bytes else math.nan
    return {"loss": loss, "bpb": bpb, "perplexity": math.exp(min(loss, 50)), "tokens": count, "bytes": n_bytes,
            "block_size": block_size, "stride": stride,
            "spike_rates": {k: v / rate_w for k, v in rates.items()} if rate_w else {}}


def load_hub_texts(name: str, split: str | None = None, text_field: str = "text") -> list[str]:
    """Texts of one split of the Hub dataset ``name`` (``datasets.load_dataset``; cache and
    ``HF_HUB_OFFLINE`` honoured). ``split`` None: "validation", else "test", else "train".

    Raises:
        FileNotFoundError: the dataset cannot be fetched (offline and not cached, no such dataset).
        ValueError: no such split, or no string column ``text_field`` (the columns are listed).
    """
    import datasets

    try:
        dd = datasets.load_dataset(name)
    except (ConnectionError, FileNotFoundError, OSError, ValueError) as e:
        offline = bool(datasets.config.HF_HUB_OFFLINE)
        why = ("offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and it is not in the local cache"
               if offline else f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
        raise FileNotFoundError(f"{name!r} is not a local file, so it was looked up as a Hugging Face Hub dataset, "
                                f"but {why}") from None
    if split is None:
        split = next((s for s in ("validation", "test", "train") if s in dd), None)
    if split not in dd:
        raise ValueError(f"Hub dataset {name!r} has no split {split!r} (splits: {list(dd)})")
    ds = dd[split]
    if text_field not in ds.column_names:
        raise ValueError(f"Hub dataset {name!r} has no column {text_field!r} (columns: {ds.column_names}); "
                         "pass --text-field")
    return [t for t in ds[text_field] if isinstance(t, str) and t]


def tokenize_stream(files: list[str], tokenizer, text_field: str = "text", split: str | None = None) -> torch.Tensor:
    """Token ids ``[T]`` (int64) of ``files`` as one stream, EOS after every document
    (the tokenization of :func:`spikelm.data.pack_blocks`).

    ``files`` are local files; or one Hub dataset name (``owner/name``, when no such local path
    exists), of which ``split`` is read (:func:`load_hub_texts`), one document per row.

    Raises FileNotFoundError / ValueError from :func:`spikelm.data.load_documents` or
    :func:`load_hub_texts`.
    """
    from ..data import load_documents, tokenize_documents

    if len(files) == 1 and is_hub_id(files[0]):
        from datasets import Dataset

        texts = load_hub_texts(str(files[0]), split, text_field)
        docs = Dataset.from_dict({"text": texts, "doc_end": [True] * len(texts)})
    else:
        docs = load_documents(list(files), text_field=text_field, what="evaluation")
    tokenized = tokenize_documents(docs, tokenizer)
    flat = [i for row in tokenized["input_ids"] for i in row]
    return torch.tensor(flat, dtype=torch.long)


def measure_blocks(ids: torch.Tensor, block_size: int, max_tokens: int) -> torch.Tensor:
    """Disjoint blocks ``[N, block_size]`` from the start of ``ids [T]`` covering at most
    ``max_tokens`` tokens (at least one block, shorter when ``T < block_size``): the inputs of
    the spike and energy measurements."""
    L = min(block_size, int(ids.numel()))
    n = max(1, min(int(ids.numel()) // L, max_tokens // L))
    return ids[:n * L].reshape(n, L)


@torch.no_grad()
def load_model(model_dir: str | Path, config_overrides: dict | None = None, device: str | None = None):
    """``(causal LM in eval mode on device, tokenizer)`` of a saved model, as ``spikelm eval`` loads it.

    Raises:
        FileNotFoundError: missing model directory / unreachable Hub id / no tokenizer files.
        ValueError: an override of a field the model's config does not have.
    """
    from transformers import AutoTokenizer

    import spikelm  # noqa: F401  (registers the Auto classes)

    from ..hub.ids import check_tokenizer_files, load_causal_lm, resolve_model

    name, cfg = resolve_model(model_dir)
    check_tokenizer_files(name)
    overrides = dict(config_overrides or {})
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"cannot override {unknown}: not fields of {name}'s config.json")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok = AutoTokenizer.from_pretrained(name)
    return load_causal_lm(name, **overrides).to(device).eval(), tok


def layout_name(config) -> str:
    """A short name of a model's layout for grouping results: for spikelm, the distinct token
    mixers and MLPs and the spiking (``"rwkv4+channel_mix, lif"``, ``"gla/swa+swiglu, adaptive"``);
    otherwise the ``model_type`` (e.g. ``"llama"``)."""
    if getattr(config, "model_type", None) != "spikelm":
        return str(getattr(config, "model_type", "model"))
    def distinct(xs):
        return "/".join(dict.fromkeys(xs))
    spikes = [n for n in dict.fromkeys(config.neuron_types) if n != "none"]
    if config.adaptive_spike_mode != "off":
        spikes.append("adaptive")
    return f"{distinct(config.mixer_types)}+{distinct(config.mlp_types)}, {'/'.join(spikes) or 'no spikes'}"


def evaluate_files(model_dir: str | Path, files: list[str], block_size: int | None = None, batch_size: int = 16,
                   text_field: str = "text", stride: int | None = None, device: str | None = None,
                   spikes: bool = True, spike_max_tokens: int = 16384, split: str | None = None,
                   config_overrides: dict | None = None) -> dict:
    """Evaluate a saved model (spikelm or any HF causal LM; a local directory or a Hub id) on ``files``.

    Args:
        model_dir: a directory with ``config.json``, weights and the tokenizer, or a Hub model id.
        files: .txt / .json(l) / .parquet files (see :func:`spikelm.data.load_documents`), or one
            Hub dataset name (:func:`tokenize_stream`).
        block_size: window length in tokens (default: the model's context length, else 1024).
        batch_size: windows per forward call.
        text_field: text column of json/parquet files and Hub datasets.
        stride: window step in tokens, ``1 <= stride <= block_size`` (default ``block_size``);
            smaller strides give each token more left context and cost ``block_size / stride``
            times more compute.
        device: torch device (default cuda when available).
        spikes: also measure spike statistics and the operation/energy estimate on the first
            ``spike_max_tokens`` tokens, as disjoint ``block_size`` blocks (one more forward pass).
        spike_max_tokens: token budget of that measurement.
        split: split of a Hub dataset (default validation, else test, else train).
        config_overrides: config fields replaced at load time, e.g. ``{"adaptive_spike_k": 2.0}``
            to measure the sparsity/quality trade-off of one model across k.
    Returns:
        ``{"loss": nats/token, "bpb": bits per UTF-8 byte, "perplexity", "tokens": scored
        tokens, "bytes": UTF-8 bytes of those tokens, "block_size", "stride", "model",
        "model_type", "layout" (:func:`layout_name`), "files", "adaptive_spike_k" (spikelm models
        with adaptive spiking, else None), "spike_rates": {site: rate} (spikelm models' own counters)}``;
        with ``spikes``: ``"spikes"`` (:func:`spikelm.eval.spikes.spike_statistics`; its
        ``sites`` are empty for a model without spiking neurons) and ``"energy"``
        (:func:`spikelm.eval.energy.energy_estimate` without its per-projection ``layers``;
        an MoE model's routed experts count for the tokens routed to them), and for a model
        with MoE layers ``"moe"`` (:meth:`spikelm.eval.moe.MoEMonitor.summary`: expert load,
        dropped assignments, routing sparsity) from the same forward passes.
    Raises:
        FileNotFoundError: missing model directory / unreachable Hub id, or missing data file.
        ValueError: bad block_size/stride, data shorter than 2 tokens, or an override of a
            field the model's config does not have.
    """
    from .energy import energy_estimate
    from .moe import MoEMonitor

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if stride is not None and stride < 1:
        raise ValueError(f"stride must be >= 1 (tokens between window starts), got {stride}")
    if block_size is not None and block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    model, tok = load_model(model_dir, config_overrides, device)
    ids = tokenize_stream(files, tok, text_field, split)
    res = evaluate_stream(model, ids, token_byte_lengths(tok), block_size, stride, batch_size)
    mc = model.config
    res.update(model=str(model_dir), model_type=getattr(mc, "model_type", None), layout=layout_name(mc),
               files=[str(f) for f in files],
               adaptive_spike_k=(mc.adaptive_spike_k if getattr(mc, "adaptive_spike_mode", "off") != "off" else None),
               config_overrides=dict(config_overrides or {}))
    if spikes:
        blocks = measure_blocks(ids, res["block_size"], spike_max_tokens)
        with MoEMonitor(model) as moe:
            en = energy_estimate(model, blocks, batch_size=batch_size, spikes=True)
        if moe.modules:
            res["moe"] = moe.summary()
        res["spikes"] = en.pop("spikes")
        en.pop("layers")
        res["energy"] = en
    return res
