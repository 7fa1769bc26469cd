"""Where a run's starting weights come from: ``model.init_from`` (a spikelm or Llama
directory, or a Hub id), converted on the fly with ``model.convert_layout``.

Rank 0 converts (``spikelm.convert.convert_checkpoint``) into ``run_dir/converted`` while the
other ranks wait; an error there is raised on every rank.
"""
from __future__ import annotations

import json
from pathlib import Path

from .archs import load_config_file
from .config import Recipe

CONVERTED = "converted"
"""Folder of the run directory holding ``model.init_from`` converted to spikelm (``model.convert_layout``)."""


def init_dir(recipe: Recipe, run_dir: Path) -> Path | None:
    """Where the starting weights of a run are read from: ``run_dir/converted`` with
    ``model.convert_layout``, else ``model.init_from`` (None without it). No checks."""
    if recipe.model.init_from is None:
        return None
    return run_dir / CONVERTED if recipe.model.convert_layout is not None else Path(recipe.model.init_from)


def _convert(recipe: Recipe, src: Path, out: Path, rank: int) -> None:
    """Rank 0 converts the ANN ``src`` into ``out`` (reusing an ``out`` that holds the same
    conversion) while the others wait; an error on rank 0 is raised on every rank."""
    import shutil

    import torch.distributed as dist

    m = recipe.model
    error = [None]
    if rank == 0:
        try:
            from ..convert import REPORT_NAME, convert_checkpoint

            # reuse an earlier conversion only for the very same request (the window as asked,
            # None included, and the seed of the new GLA parameters)
            want = {"source": str(src.resolve()), "layout": m.convert_layout, "spiking": m.convert_spiking,
                    "window": m.convert_window, "seed": recipe.train.seed}
            memory = {} if m.convert_gla_memory is None else {"gla_memory": m.convert_gla_memory}
            want.update(memory)  # (an older request without the key stays valid for the default)
            request = out.parent / (out.name + ".request.json")
            same = (out / REPORT_NAME).is_file() and request.is_file() and json.loads(request.read_text()) == want
            if not same:
                if out.exists():  # another conversion: derived data, regenerated from the source
                    shutil.rmtree(out)
                created = not out.parent.exists()
                try:
                    convert_checkpoint(src.resolve(), out, layout=m.convert_layout, spiking=m.convert_spiking,
                                       window=m.convert_window, seed=recipe.train.seed, **memory)
                    request.write_text(json.dumps(want, indent=2) + "\n")
                except BaseException:
                    if created:  # leave no run directory behind for a source that cannot be converted
                        shutil.rmtree(out.parent, ignore_errors=True)
                    raise
        except (ValueError, OSError) as e:  # ConversionError is a ValueError; OSError: files
            error = [f"model.init_from {src}: conversion to spikelm failed: {e}"]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise ValueError(error[0])


def init_source(recipe: Recipe, rank: int, run_dir: Path) -> Path | None:
    """The Hugging Face directory whose weights start the run, or None without ``model.init_from``.

    With ``model.convert_layout``, the ANN in ``model.init_from`` is first converted by
    ``spikelm.convert.convert_checkpoint`` into ``run_dir/converted`` (see :func:`_convert`).

    Raises:
        FileNotFoundError: ``model.init_from`` is neither a directory with a config.json nor a
            Hub model id that can be fetched (offline: not in the cache).
        ValueError: its model type is not ``model.arch`` (names the fix), a spikelm model with
            ``model.convert_layout``, or a failed conversion (the converter's message).
    """
    src = recipe.model.init_from
    if src is None:
        return None
    from ..hub.ids import local_model_dir, read_json_file

    try:  # a local directory, or a Hub model id (downloaded into the HF cache)
        d = local_model_dir(src)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"model.init_from: {e}; pass a model directory, e.g. runs/shakespeare/final, "
                                "or a Hub model id") from None
    kind = read_json_file(d / "config.json").get("model_type")
    if recipe.model.convert_layout is not None:
        if kind == "spikelm":
            raise ValueError(f"model.init_from {src} is already a spikelm model; drop model.convert_layout")
        _convert(recipe, d, run_dir / CONVERTED, rank)
        return run_dir / CONVERTED
    if kind != recipe.model.arch:
        hint = " or model.convert_layout (e.g. hybrid) to convert it to spikelm" if kind != "spikelm" else ""
        raise ValueError(f"model.init_from {src} holds a {kind!r} model but model.arch is {recipe.model.arch!r}; "
                         f"set model.arch: {kind} to train it as it is{hint}")
    return d


def init_config(recipe: Recipe, model_dir: Path):
    """The config of ``model_dir`` with the recipe's layout keys applied (``ModelConfig.layout()``:
    any field but the vocabulary size and special token ids), checked against ``data.block_size``.

    Raises:
        ValueError: a key the config class has no field for, a key that belongs to the
            weights, or a ``data.block_size`` over the model's context.
    """
    config = load_config_file(model_dir / "config.json")
    layout = recipe.model.layout()
    fixed = sorted({"vocab_size", "eos_token_id", "bos_token_id", "pad_token_id"} & set(layout))
    if fixed:
        raise ValueError(f"model.overrides may not set {fixed} with model.init_from: they belong to the weights")
    for k, v in layout.items():
        if not hasattr(config, k):
            raise ValueError(f"model.overrides.{k}: {type(config).__name__} has no field {k!r}")
        setattr(config, k, v)
    if recipe.data.block_size > config.max_position_embeddings:
        raise ValueError(f"data.block_size {recipe.data.block_size} exceeds the context length "
                         f"{config.max_position_embeddings} of model.init_from {model_dir}; lower data.block_size")
    return config
