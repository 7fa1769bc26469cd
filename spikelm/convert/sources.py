"""One entry point for every checkpoint ``spikelm convert`` reads: it recognises the source and
calls its converter, refusing options that do not apply to it.

| source | recognised by | converter | ``spiking`` |
|---|---|---|---|
| SpikeGPT ``.pth`` (ridgerchu/SpikeGPT's trainer) | a ``.pth`` file, or a folder without ``config.json`` holding one | :func:`spikelm.convert.spikegpt.convert_spikegpt` | ``lif`` (default), ``off`` |
| transformers RWKV-4 | ``config.json`` with ``model_type: rwkv`` | :func:`spikelm.convert.rwkv.convert_rwkv` | ``lif`` (default), ``off`` |
| SpikingBrain-7B | ``config.json`` with ``model_type: gla_swa`` | :func:`spikelm.convert.spikingbrain.convert_spikingbrain` | ``off``, ``ste`` (default), ``expanded`` |
| spikelm (upcycling only: ``moe_experts``) | ``config.json`` with ``model_type: spikelm`` | :func:`spikelm.convert.moe.upcycle_spikelm` | its own (no option) |
| Llama family (Llama, Qwen2/3, Mistral, Mixtral, Qwen2-MoE) | any other ``config.json`` | :func:`spikelm.convert.convert.convert_checkpoint` | ``off``, ``ste`` (default), ``expanded`` |

``moe_experts`` / ``moe_top_k`` / ``moe_shared`` (upcycling dense SwiGLU MLPs into MoE ones,
:mod:`spikelm.convert.moe`) apply to Llama-family and spikelm sources.
"""
from __future__ import annotations

from pathlib import Path

from .mapping import ConversionError

SOURCE_KINDS = ("spikegpt", "rwkv", "spikingbrain", "spikelm", "llama")
DEFAULT_SPIKING = {"spikegpt": "lif", "rwkv": "lif", "spikingbrain": "ste", "llama": "ste"}
ACCEPTED_SPIKING = {"spikegpt": ("lif", "off"), "rwkv": ("lif", "off"), "spikingbrain": ("off", "ste", "expanded"),
                    "llama": ("off", "ste", "expanded")}
_ONLY = {"context_length": ("spikegpt",), "spike_embedding": ("spikegpt", "rwkv"), "layout": ("llama",),
         "window": ("llama",), "gla_memory": ("llama",), "gla_norm_init": ("llama",), "seed": ("llama", "spikelm")}
"""Options that apply to some sources only (the others refuse them)."""
MOE_OPTIONS = ("moe_experts", "moe_top_k", "moe_shared")
"""Upcycling options (:mod:`spikelm.convert.moe`): Llama-family and spikelm sources only."""
UPCYCLE_KINDS = ("llama", "spikelm")


def source_kind(src: str | Path) -> str:
    """The kind of checkpoint at ``src`` (:data:`SOURCE_KINDS`; the module docstring's table).

    Raises:
        FileNotFoundError: ``src`` does not exist, or is a folder with neither ``config.json``
            nor a ``.pth`` file.
        ValueError: its ``config.json`` is not JSON.
    """
    from ..hub.ids import read_json_file

    p = Path(src)
    if p.is_file():
        if p.suffix == ".pth":
            return "spikegpt"
        raise FileNotFoundError(f"{p} is a file but not a SpikeGPT .pth checkpoint; pass a .pth file or a Hugging "
                                "Face checkpoint directory")
    if not p.is_dir():
        raise FileNotFoundError(f"{p} does not exist")
    if not (p / "config.json").is_file():
        if any(p.glob("*.pth")):
            return "spikegpt"
        raise FileNotFoundError(f"no config.json in {p}: not a Hugging Face checkpoint directory (nor a folder "
                                "with a SpikeGPT .pth)")
    kind = read_json_file(p / "config.json").get("model_type")
    return {"rwkv": "rwkv", "gla_swa": "spikingbrain", "spikelm": "spikelm"}.get(kind, "llama")


def convert_any(src: str | Path, out_dir: str | Path, *, spiking: str | None = None, tokenizer: str | None = None,
                **options) -> dict:
    """Convert the checkpoint at ``src`` into the spikelm directory ``out_dir``, whatever its kind.

    Args:
        src: a SpikeGPT ``.pth`` (or its folder) or a Hugging Face checkpoint directory.
        out_dir: the new directory (must not exist).
        spiking: the source's neurons (:data:`ACCEPTED_SPIKING`; None: :data:`DEFAULT_SPIKING`).
        tokenizer: a tokenizer folder (SpikeGPT: also a ``tokenizer.json`` file).
        options: the converter's own keywords; ``None`` values are left out. ``context_length``
            (required for SpikeGPT), ``spike_embedding`` (SpikeGPT, RWKV), ``layout``,
            ``window``, ``gla_memory``, ``gla_norm_init`` (Llama family), ``seed`` (Llama
            family, spikelm), ``moe_experts``, ``moe_top_k``, ``moe_shared`` (upcycling; Llama
            family, spikelm: the only conversion of a spikelm checkpoint).
    Returns:
        The conversion report (also in ``out_dir/conversion_report.json``), with ``source_kind``.
    Raises:
        ConversionError: an option that does not apply to this kind of source (named), a
            ``spiking`` mode it does not have, a missing ``context_length``, bad ``moe_*`` values
            (checked first); and every error of
            the converter (bad tensors, unknown keys, non-weights-only pickles, ...).
        FileExistsError / FileNotFoundError: as the converters.
    """
    from .moe import check_upcycle_args

    given = {k: v for k, v in options.items() if v is not None}
    check_upcycle_args(*(given.get(k) for k in MOE_OPTIONS))
    kind = source_kind(src)
    if kind not in UPCYCLE_KINDS and any(k in given for k in MOE_OPTIONS):
        hint = {"spikingbrain": " (convert it first, then upcycle the spikelm checkpoint)"}.get(
            kind, " (its MLPs are RWKV channel-mix, not SwiGLU)")
        raise ConversionError(f"--moe-experts upcycles dense SwiGLU MLPs of a Llama-family or spikelm checkpoint; "
                              f"{src} is a {kind} checkpoint{hint}")
    wrong = sorted(k for k in given if k in _ONLY and kind not in _ONLY[k])
    if wrong:
        raise ConversionError(f"{src} is a {kind} checkpoint, which takes no "
                              + "; no ".join(f"{k} (it applies to {' and '.join(_ONLY[k])} checkpoints)" for k in wrong))
    if kind == "spikelm":
        from .moe import upcycle_spikelm

        if spiking is not None:
            raise ConversionError(f"spiking does not apply to a spikelm checkpoint ({src}): upcycling keeps its "
                                  "adaptive_spike_mode")
        if tokenizer is not None:
            raise ConversionError(f"tokenizer does not apply to a spikelm checkpoint ({src}): upcycling copies its own")
        report = upcycle_spikelm(src, out_dir, **given)
        report["source_kind"] = kind
        return report
    spiking = spiking or DEFAULT_SPIKING[kind]
    if spiking not in ACCEPTED_SPIKING[kind]:
        raise ConversionError(f"spiking {spiking!r} does not apply to a {kind} checkpoint; accepted: "
                              f"{', '.join(ACCEPTED_SPIKING[kind])}")
    if kind == "spikegpt":
        from .spikegpt import convert_spikegpt

        if "context_length" not in given:
            raise ConversionError("a SpikeGPT .pth does not hold its context length: give --context-length N "
                                  "(SpikeGPT-216M: 1024)")
        report = convert_spikegpt(src, out_dir, tokenizer=tokenizer, spiking=spiking, **given)
    elif kind == "rwkv":
        from .rwkv import convert_rwkv

        report = convert_rwkv(src, out_dir, spiking=spiking, tokenizer_dir=tokenizer, **given)
    elif kind == "spikingbrain":
        from .spikingbrain import convert_spikingbrain

        report = convert_spikingbrain(src, out_dir, spiking=spiking, tokenizer_dir=tokenizer)
    else:
        from .convert import convert_checkpoint

        report = convert_checkpoint(src, out_dir, spiking=spiking, tokenizer_dir=tokenizer, **given)
    report["source_kind"] = kind
    return report
