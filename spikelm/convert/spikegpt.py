"""Convert a SpikeGPT checkpoint (ridgerchu/SpikeGPT, Zhu et al. 2023, arXiv:2302.13939) into spikelm.

SpikeGPT's trainer saves ``torch.save(model.state_dict(), "xxx.pth")`` of its ``GPT`` class
(``src/model.py``, ``model_type="RWKV"``): no config file; the sizes are the tensor shapes and the
context length is not in the file. spikelm's SpikeGPT layout (``mixer_types="rwkv4"``,
``mlp_types="channel_mix"``, :class:`spikelm.layers.block.SpikeLMBlock`) uses SpikeGPT's parameter
names, so the mapping is a prefix plus a reshape of the ``[1, 1, D]`` mix vectors to ``[D]``::

    emb.weight                     -> model.embeddings.weight          [V, D]
    blocks.{i}.ln0|ln1|ln2.*        -> model.blocks.{i}.ln0|ln1|ln2.*    [D]   (ln0 in block 0 only)
    blocks.{i}.att.time_decay|first -> model.blocks.{i}.att.*            [D]
    blocks.{i}.att.time_mix_k|v|r   -> model.blocks.{i}.att.*            [1, 1, D] -> [D]
    blocks.{i}.att.key|value|receptance|output.weight                   [D, D]
    blocks.{i}.ffn.time_mix_k|r     -> model.blocks.{i}.ffn.*            [1, 1, D] -> [D]
    blocks.{i}.ffn.key.weight [F, D], receptance.weight [D, D], value.weight [D, F]
    ln_out.*                       -> model.ln_out.*                   [D]
    head.weight                    -> head.weight                      [V, D]  (untied)

Semantics followed: SpikeGPT's **training code** ``src/model.py`` (what the fixture's PROVENANCE
describes): spike embedding ``x = ATan()(emb(idx))`` (a Heaviside, 1 where >= 0, ATan surrogate);
``x = x + LIF1(att(ln1(x)))``, ``x = x + LIF2(ffn(ln2(x)))`` with spikingjelly
``MultiStepLIFNode(tau=2, v_threshold=1, v_reset=0, decay_input=True)`` along the token axis;
``ln0`` on the embedding in block 0; LayerNorm eps 1e-5; WKV with ``w = -exp(time_decay)``
(spikelm's ``wkv4(exp(time_decay), ...)``, same op). Their inference script ``src/model_run.py``
differs: it binarises the embedding only when the vocabulary is 77 and rescales the residual every
6 layers; ``spike_embedding=False`` gives the real-valued embedding of ``run.py``.

Loading is ``torch.load(path, map_location="cpu", weights_only=True)`` only: a pickle that needs
arbitrary code (not a plain state dict) is refused, never executed.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import torch

from .mapping import ConversionError

REPORT_NAME = "conversion_report.json"
SPIKING_CHOICES = ("lif", "off")
MIX_VECTORS = ("time_mix_k", "time_mix_v", "time_mix_r")
SEMANTICS = ("SpikeGPT training code src/model.py (ridgerchu/SpikeGPT): spike embedding = Heaviside of the "
             "embedding (ATan surrogate) when spike_embedding; LIF (tau 2, v_th 1, hard reset to 0, decay_input) "
             "along the token axis after each sub-block, before the residual add; ln0 on the embedding in block 0; "
             "LayerNorm eps 1e-5; untied head. Their inference script src/model_run.py differs: it binarises the "
             "embedding only for vocab 77 and rescales the residual every 6 layers; spike_embedding=False gives "
             "run.py's real-valued embedding.")

_BLOCK_RE = re.compile(r"blocks\.(\d+)\.(.+)")
_BLOCK_PARAMS = {  # SpikeGPT names inside every block (ln0: block 0 only, see map_spikegpt_name)
    "ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias",
    "att.time_decay", "att.time_first", "att.time_mix_k", "att.time_mix_v", "att.time_mix_r",
    "att.key.weight", "att.value.weight", "att.receptance.weight", "att.output.weight",
    "ffn.time_mix_k", "ffn.time_mix_r", "ffn.key.weight", "ffn.receptance.weight", "ffn.value.weight",
}
_TOP = {"emb.weight": "model.embeddings.weight", "ln_out.weight": "model.ln_out.weight",
        "ln_out.bias": "model.ln_out.bias", "head.weight": "head.weight"}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_pth(src: str | Path) -> Path:
    """The ``.pth`` file of ``src``: the file itself, or the only ``*.pth`` in the folder ``src``.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ConversionError: a folder with no or several ``.pth`` files (names them).
    """
    p = Path(src)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"SpikeGPT checkpoint {p} does not exist")
    found = sorted(p.glob("*.pth"))
    if len(found) != 1:
        raise ConversionError(f"{p} must hold exactly one SpikeGPT .pth checkpoint, found "
                              f"{len(found)}{': ' + ', '.join(f.name for f in found) if found else ''}")
    return found[0]


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(path, map_location="cpu", weights_only=True)``, checked to be ``{str: Tensor}``.

    Raises:
        ConversionError: not a weights-only pickle (it would need arbitrary code to load: refused,
            nothing executed), not a torch file at all, or not a dict of tensors.
    """
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{path} is not a weights-only checkpoint (torch.load(weights_only=True) refused it: "
                              f"{first}); it was not loaded, since unpickling it could run arbitrary code. Re-save "
                              "it as torch.save(model.state_dict(), path) from trusted code") from None
    except Exception as e:  # noqa: BLE001 (torch raises RuntimeError/EOFError/... for non-torch files)
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                     for k, v in sd.items()):
        raise ConversionError(f"{path} does not hold a state dict (a dict of tensor names to tensors): found "
                              f"{type(sd).__name__}; SpikeGPT saves torch.save(model.state_dict(), path)")
    return sd


def map_spikegpt_name(name: str) -> str | None:
    """spikelm name of a SpikeGPT tensor name, or None when it has no home in spikelm's block."""
    if name in _TOP:
        return _TOP[name]
    m = _BLOCK_RE.fullmatch(name)
    if m and (m.group(2) in _BLOCK_PARAMS or (m.group(1) == "0" and m.group(2) in ("ln0.weight", "ln0.bias"))):
        return f"model.{name}"
    return None


def check_against_model(config, tensors: dict[str, torch.Tensor], source_of: dict[str, str]) -> None:
    """Compare ``tensors`` (spikelm names) with what ``SpikeLMForCausalLM(config)`` holds (meta device).

    Raises:
        ConversionError: a missing tensor (names it, by its source name) or a shape that differs from
            what the sizes imply (names both shapes).
    """
    from .convert import _expected_shapes

    expected = _expected_shapes(config)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        inv = {v: k for k, v in source_of.items()}
        raise ConversionError(f"the checkpoint lacks {len(missing)} tensor(s) the model needs, e.g. "
                              f"{[inv.get(m, m) for m in missing[:3]]} (spikelm names {missing[:3]})")
    for dest, t in tensors.items():
        if dest not in expected:
            raise ConversionError(f"tensor {source_of.get(dest, dest)} maps to {dest}, which the model does not have")
        if tuple(t.shape) != expected[dest]:
            raise ConversionError(f"shape mismatch for tensor {source_of.get(dest, dest)}: the sizes imply "
                                  f"{list(expected[dest])}, the checkpoint has {list(t.shape)}")


def load_tokenizer(tokenizer: str | Path, rows: int):
    """A transformers tokenizer from a ``tokenizer.json`` file (wrapped as ``PreTrainedTokenizerFast``;
    ``<|endoftext|>`` becomes its eos token when present) or a tokenizer folder (``AutoTokenizer``).

    Raises:
        FileNotFoundError: ``tokenizer`` does not exist.
        ConversionError: it cannot be read, or it has more tokens than the embedding's ``rows``.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(tokenizer)
    if not p.exists():
        raise FileNotFoundError(f"tokenizer {p} does not exist (give a tokenizer.json file or a tokenizer folder)")
    try:
        if p.is_file():
            tok = PreTrainedTokenizerFast(tokenizer_file=str(p))
            if "<|endoftext|>" in tok.get_vocab():
                tok.eos_token = "<|endoftext|>"
        else:
            tok = AutoTokenizer.from_pretrained(p)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"cannot read tokenizer {p} ({type(e).__name__}: {e})") from None
    if len(tok) > rows:
        raise ConversionError(f"vocabulary mismatch: the tokenizer {p} has {len(tok)} tokens but the model's "
                              f"embedding (emb.weight) has only {rows} rows")
    return tok


def write_converted(out: Path, config, tensors: dict[str, torch.Tensor], tok, report: dict,
                    copy_files: list[Path] = ()) -> None:
    """Write the spikelm HF directory ``out`` atomically (``spikelm.train.rundir.atomic_dir``):
    ``model.safetensors`` (``tensors`` as given), ``config.json`` (+ ``auto_map``, the bundled
    remote code and the ``README.md`` model card, ``spikelm.hub.write_hf_extras``), the tokenizer
    (``tok.save_pretrained``, or the ``copy_files`` copied byte for byte) and ``conversion_report.json``.

    ``spikelm.train.export.write_hf_dir`` is not used: it replaces an existing directory and has no
    place for the report. Raises FileExistsError when ``out`` exists (checked again here).
    """
    import shutil

    from safetensors.torch import save_file

    from ..hub import write_hf_extras
    from ..train.rundir import atomic_dir

    if out.exists():
        raise FileExistsError(f"output directory {out} already exists; choose a new one (convert never overwrites)")
    with atomic_dir(out) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        config.save_pretrained(tmp)
        if tok is not None:
            tok.save_pretrained(tmp)
        for f in copy_files:
            shutil.copy2(f, tmp / f.name)
        write_hf_extras(tmp, repo_id=out.name)
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")


def spikegpt_config(sd: dict[str, torch.Tensor], *, context_length: int, spiking: str = "lif",
                    spike_embedding: bool = True, **extra):
    """The :class:`~spikelm.SpikeLMConfig` of a SpikeGPT state dict: vocab and D from
    ``emb.weight [V, D]``, layers from the ``blocks.{i}`` indices, the FFN width F from
    ``blocks.0.ffn.key.weight [F, D]``; LIF tau 2, v_th 1, hard reset 0, decay_input, ATan(2)
    (spikelm's defaults, SpikeGPT's values), LayerNorm eps 1e-5, untied head.

    Raises:
        ConversionError: ``spiking`` not ``lif``/``off``, ``context_length < 1``, no
            ``emb.weight`` / ``blocks.0.ffn.key.weight`` (not a SpikeGPT state dict), or
            non-contiguous block indices.
    """
    from ..models.configuration_spikelm import SpikeLMConfig

    if spiking not in SPIKING_CHOICES:
        raise ConversionError(f"unknown spiking {spiking!r}; accepted: {', '.join(SPIKING_CHOICES)}")
    if not isinstance(context_length, int) or context_length < 1:
        raise ConversionError(f"context_length must be a positive int (SpikeGPT's ctx_len, not stored in the "
                              f"checkpoint), got {context_length!r}")
    for need in ("emb.weight", "blocks.0.ffn.key.weight", "head.weight"):
        if need not in sd:
            raise ConversionError(f"not a SpikeGPT state dict: no {need} (found e.g. {sorted(sd)[:4]})")
    layers = sorted({int(m.group(1)) for k in sd if (m := _BLOCK_RE.fullmatch(k))})
    if layers != list(range(len(layers))):
        raise ConversionError(f"block indices are not 0..n-1: {layers}")
    V, D = sd["emb.weight"].shape
    F = sd["blocks.0.ffn.key.weight"].shape[0]
    return SpikeLMConfig(vocab_size=int(V), hidden_size=int(D), num_hidden_layers=len(layers), intermediate_size=int(F),
                         max_position_embeddings=context_length, mixer_types="rwkv4", mlp_types="channel_mix",
                         neuron="lif" if spiking == "lif" else "none", lif_tau=2.0, lif_v_th=1.0, lif_v_reset=0.0,
                         lif_decay_input=True, surrogate="atan", surrogate_alpha=2.0, spike_embedding=spike_embedding,
                         norm_type="layernorm", embed_norm=True, layer_norm_eps=1e-5, tie_word_embeddings=False,
                         **extra)


def config_summary(config) -> dict:
    """The fields of a converted config a reader checks first."""
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings",
            "neuron", "spike_embedding", "lif_tau", "lif_v_th", "lif_v_reset", "lif_decay_input", "surrogate",
            "layer_norm_eps", "tie_word_embeddings", "embed_norm")
    out = {k: getattr(config, k) for k in keys}
    out["mixer_types"], out["mlp_types"] = sorted(set(config.mixer_types)), sorted(set(config.mlp_types))
    return out


def convert_spikegpt(src: str | Path, out_dir: str | Path, *, context_length: int, tokenizer: str | Path | None = None,
                     spiking: str = "lif", spike_embedding: bool = True) -> dict:
    """Convert a SpikeGPT ``.pth`` state dict into a spikelm Hugging Face directory.

    Args:
        src: the ``.pth`` file, or a folder holding exactly one.
        out_dir: the new directory (must not exist); written atomically.
        context_length: SpikeGPT's ``ctx_len`` (not stored in the file) -> ``max_position_embeddings``.
        tokenizer: a ``tokenizer.json`` file (wrapped as ``PreTrainedTokenizerFast``) or a tokenizer
            folder, saved with the model; None: ``src``'s own ``tokenizer.json`` when ``src`` is a
            folder holding one, else no tokenizer is written.
        spiking: ``"lif"`` (SpikeGPT's LIF neurons) or ``"off"`` (``neuron="none"``, the ANN RWKV-4).
        spike_embedding: binarise the embedding (``src/model.py``); False: ``run.py``'s embedding.
    Returns:
        The report (also ``out_dir/conversion_report.json``): ``source`` (path, sha256),
        ``format``, ``tensors`` (every source name -> ``{"to", "shape", "dtype", "note"}``),
        ``config`` (:func:`config_summary`), ``tokenizer``, ``semantics`` (the note above).
        Tensors keep their dtype, except that all become the source's one floating dtype.
    Raises:
        FileExistsError: ``out_dir`` exists. FileNotFoundError: ``src`` or ``tokenizer`` is missing.
        ConversionError (a ValueError): not a weights-only pickle; not a SpikeGPT state dict;
            tensors with no home in spikelm (named; e.g. ``head_q``, ``head_k``, ``copy_mask``,
            ``ffnPre``, ``pos_emb_*``); missing tensors or shape mismatches; a bad ``spiking`` or
            ``context_length``; a tokenizer larger than the embedding. Nothing is written then.
    """
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"output directory {out} already exists; choose a new one (convert never overwrites)")
    path = find_pth(src)
    sd = load_state_dict(path)
    unknown = sorted(k for k in sd if map_spikegpt_name(k) is None)
    if "emb.weight" not in sd and "blocks.0.att.time_decay" not in sd:
        raise ConversionError(f"{path} is not a SpikeGPT state dict (no emb.weight or blocks.0.att.time_decay; "
                              f"found e.g. {sorted(sd)[:4]})")
    if unknown:
        raise ConversionError(f"{len(unknown)} tensor(s) of {path.name} have no home in spikelm's SpikeGPT block: "
                              f"{unknown[:8]}{' ...' if len(unknown) > 8 else ''} (supported: the RWKV-4 "
                              "SpikeGPT of src/model.py with RWKV_HEAD_QK_DIM = 0, no ffnPre, no positional "
                              "embedding)")
    config = spikegpt_config(sd, context_length=context_length, spiking=spiking, spike_embedding=spike_embedding)
    dtypes = {v.dtype for v in sd.values() if v.is_floating_point()}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    tensors, source_of, report_tensors = {}, {}, {}
    for name in sorted(sd):
        t, dest = sd[name], map_spikegpt_name(name)
        note = "copied"
        if name.rsplit(".", 1)[-1] in MIX_VECTORS and t.dim() == 3 and t.shape[:2] == (1, 1):
            t, note = t.reshape(-1), "copied, [1, 1, D] -> [D]"
        if t.dtype != dtype:
            t, note = t.to(dtype), note + f", cast {t.dtype} -> {dtype}"
        tensors[dest], source_of[dest] = t, name
        report_tensors[name] = {"to": [dest], "shape": list(sd[name].shape),
                                "dtype": str(sd[name].dtype).removeprefix("torch."), "note": note}
    check_against_model(config, tensors, source_of)
    tok_path = tokenizer
    if tok_path is None and path.parent == Path(src) and (path.parent / "tokenizer.json").is_file():
        tok_path = path.parent / "tokenizer.json"
    tok = load_tokenizer(tok_path, config.vocab_size) if tok_path is not None else None
    if tok is not None:
        for attr in ("eos_token_id", "bos_token_id", "pad_token_id"):
            if getattr(tok, attr, None) is not None:
                setattr(config, attr, getattr(tok, attr))
    report = {
        "source": {"path": str(path), "sha256": sha256_file(path)}, "format": "spikegpt",
        "semantics": SEMANTICS, "spiking": spiking, "spike_embedding": spike_embedding,
        "config": config_summary(config),
        "tokenizer": None if tok is None else {"source": str(tok_path), "vocab": len(tok),
                                               "embedding_rows": config.vocab_size},
        "tensors": report_tensors,
    }
    write_converted(out, config, tensors, tok, report)
    return report
