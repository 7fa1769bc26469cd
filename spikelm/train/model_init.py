"""Creating the model for training: plainly, or partitioned at creation under ZeRO-3; from a
seeded random init or from the weights of a Hugging Face directory."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch


class SafetensorsWeights:
    """Lazy, by-name access to the weights of a Hugging Face directory (``model.safetensors``
    or a sharded ``model.safetensors.index.json``); a tensor is read only when asked for.

    Raises:
        FileNotFoundError: the directory holds no safetensors weights (``.bin`` checkpoints
            are not read: re-save them with ``save_pretrained``).
    """

    def __init__(self, model_dir: str | Path):
        d = Path(model_dir)
        index = d / "model.safetensors.index.json"
        if index.is_file():
            self.files = {k: d / v for k, v in json.loads(index.read_text())["weight_map"].items()}
        elif (d / "model.safetensors").is_file():
            from safetensors import SafetensorError, safe_open

            from ..hub.ids import damaged_weights

            try:
                with safe_open(str(d / "model.safetensors"), framework="pt") as f:
                    self.files = {k: d / "model.safetensors" for k in f.keys()}
            except SafetensorError as e:
                raise damaged_weights(d, e) from None
        else:
            raise FileNotFoundError(f"{d} holds no model.safetensors (or model.safetensors.index.json); "
                                    "init_from needs a directory written by save_pretrained")
        self._open: dict[Path, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def names(self) -> set[str]:
        return set(self.files)

    def _handle(self, name: str):
        from safetensors import safe_open

        path = self.files[name]
        if path not in self._open:
            self._open[path] = safe_open(str(path), framework="pt")
        return self._open[path]

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of the stored tensor ``name`` (read from the header, no data)."""
        return tuple(self._handle(name).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        """The stored tensor ``name`` (its saved dtype, CPU)."""
        return self._handle(name).get_tensor(name)


def _check_names(model, weights: SafetensorsWeights, model_dir, new: tuple[str, ...] = (),
                 unused: tuple[str, ...] = ()) -> None:
    """Every parameter and persistent buffer of ``model`` must be stored in ``weights`` with its
    shape (a tied copy under one of its names), and nothing else; raises ``ValueError``
    naming the differences. Names starting with a prefix in ``new`` may be missing (a new
    head), stored names starting with one in ``unused`` may be left over (the LM head of a
    causal LM under a classifier). Reads shapes only, on every rank (so all ranks fail together)."""
    want = {n: tuple(getattr(p, "ds_shape", p.shape)) for n, p in model.named_parameters()}  # tied: once
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    for mod_name, mod in model.named_modules():
        for n, b in mod.named_buffers(recurse=False):
            if n not in mod._non_persistent_buffers_set:
                want[f"{mod_name}.{n}" if mod_name else n] = tuple(b.shape)
                aliases.add(f"{mod_name}.{n}" if mod_name else n)
    have = weights.names()
    missing = sorted(n for n in set(want) - have if not n.startswith(new or ("\0",)))
    unexpected = sorted(n for n in have - set(want) - aliases if not n.startswith(unused or ("\0",)))
    wrong = [f"{n} {weights.shape(n)} (model: {s})" for n, s in want.items() if n in have and weights.shape(n) != s]
    if missing or unexpected or wrong:
        def cut(xs):
            return f"{xs[:8]}{' ...' if len(xs) > 8 else ''}"
        raise ValueError(f"the weights in {model_dir} do not fit its config: missing {cut(missing)}, "
                         f"unexpected {cut(unexpected)}, wrong shapes {cut(wrong)}")


def build_model(config, ds_config: dict, zero_stage: int, seed: int, weights_dir: str | Path | None = None,
                cls=None):
    """The ``*ForCausalLM`` of ``config`` (spikelm or llama), or ``cls`` (a
    ``*ForSequenceClassification``: its ``score`` head is new, initialised from the seed, and
    the causal LM's ``lm_head`` is not used), identical for every ZeRO stage.

    The modules are created with initialisation switched off. Then, module by module in
    ``model.modules()`` order, each module's own parameters and persistent buffers are set:
    from ``weights_dir`` (a Hugging Face directory's safetensors, cast to the parameter
    dtype) when given, else by the model's ``_init_weights`` from ``torch.manual_seed(seed)``.
    Under ZeRO stage 3 the creation happens inside ``deepspeed.zero.Init``, so parameters are
    partitioned across ranks as they are made and no rank ever holds the whole model; each
    module's parameters are gathered for its initialisation on rank 0 and scattered back
    (``GatheredParameters(modifier_rank=0)``), and only rank 0 reads the weight files. Same
    seed or same weights, same model, whatever the stage.

    Raises:
        FileNotFoundError: ``weights_dir`` holds no safetensors weights.
        ValueError: the stored tensors do not match the model's names or shapes (names them),
            or ``config.model_type`` is neither spikelm nor llama.
    """
    from transformers import initialization as hf_init

    from .archs import causal_lm_class

    classifier = cls is not None
    cls = cls or causal_lm_class(config)
    zero3 = zero_stage == 3
    if zero3:
        import deepspeed

        creation = deepspeed.zero.Init(config_dict_or_path=ds_config)
    else:
        creation = contextlib.nullcontext()
    with creation, hf_init.no_init_weights():
        model = cls(config)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    weights = SafetensorsWeights(weights_dir) if weights_dir is not None else None
    if weights is not None:
        _check_names(model, weights, weights_dir, *((("score.",), ("lm_head.", "head.")) if classifier else ()))
    torch.manual_seed(seed)
    names = {id(m): n for n, m in model.named_modules()}
    done: set[int] = set()  # a tied parameter is set once, under its first name
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=0) if zero3 and params \
            else contextlib.nullcontext()
        with gather, torch.no_grad():
            if weights is None:
                if rank == 0 or not zero3:
                    for p in params:
                        p._is_hf_initialized = False
                    model._init_weights(module)
                continue
            prefix = names[id(module)] + "." if names[id(module)] else ""
            if classifier and params and not any(prefix + n in weights for n, _ in module.named_parameters(recurse=False)):
                if rank == 0 or not zero3:  # a new module (the classification head): initialised
                    for p in params:
                        p._is_hf_initialized = False
                    model._init_weights(module)
                continue
            tensors = [(n, t, True) for n, t in module.named_parameters(recurse=False)]
            tensors += [(n, t, False) for n, t in module.named_buffers(recurse=False)
                        if n not in module._non_persistent_buffers_set]
            for n, t, is_param in tensors:
                if id(t) in done or (prefix + n) not in weights:
                    continue  # a tied copy, set under its other name
                done.add(id(t))
                if is_param and zero3 and rank != 0:
                    continue  # rank 0 writes, GatheredParameters scatters
                t.copy_(weights.get(prefix + n).to(t.dtype))  # shapes checked by _check_names
    return model
