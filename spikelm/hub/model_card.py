"""Model card (``README.md`` with YAML front matter) for an exported spikelm directory.

The card is built from what the directory and its run hold: the architecture from
``config.json``, the training data/steps/tokens from the run's ``recipe.json``,
``training_summary.json`` and ``metrics.jsonl`` (when present), evaluation results and spike
statistics / energy estimate when given (``spikelm eval --json`` output), and loading
instructions with and without spikelm installed. Hugging Face model card format:
https://huggingface.co/docs/hub/model-cards (metadata keys ``library_name``, ``tags``,
``license``, ``datasets``, ``pipeline_tag``).
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

TAGS = ["spiking-neural-network", "spikelm", "text-generation", "custom_code"]


def _read_json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except json.JSONDecodeError:
        return None


def _hub_dataset_names(files) -> list[str]:
    """Entries of a recipe's ``train_files`` that name Hub datasets (``owner/name``, not local)."""
    out = []
    for f in files or []:
        if (isinstance(f, str) and f.count("/") == 1 and not f.startswith((".", "/", "~")) and not os.path.exists(f)
                and "." not in f.rsplit("/", 1)[1] and ":" not in f):
            out.append(f)
    return out


def _yaml_list(key: str, values: list[str]) -> list[str]:
    return [f"{key}:"] + [f"- {json.dumps(v)}" for v in values] if values else []


def _fmt(x, spec: str = ".4f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def _architecture(cfg: dict, n_params: int | None) -> list[str]:
    layers = cfg.get("num_hidden_layers")
    mixers, mlps = cfg.get("mixer_types") or [], cfg.get("mlp_types") or []
    neurons = cfg.get("neuron_types") or []

    def counts(xs):
        return ", ".join(f"{k} x{v}" for k, v in Counter(xs).items()) or "n/a"

    rows = [("layers", layers), ("hidden size", cfg.get("hidden_size")),
            ("MLP width", cfg.get("intermediate_size")), ("vocabulary", cfg.get("vocab_size")),
            ("context (tokens)", cfg.get("max_position_embeddings") or cfg.get("context_length")), ("token mixers", counts(mixers)),
            ("MLPs", counts(mlps)), ("block-output neurons", counts(neurons)),
            ("norm", cfg.get("norm_type")), ("adaptive spiking", cfg.get("adaptive_spike_mode"))]
    if cfg.get("adaptive_spike_mode") not in (None, "off"):
        rows.append(("adaptive spiking k", cfg.get("adaptive_spike_k")))
    if "lif" in neurons or "plif" in neurons:
        rows.append(("LIF tau / threshold", f"{cfg.get('lif_tau')} / {cfg.get('lif_v_th')}"))
    if n_params:
        rows.append(("parameters", f"{n_params:,}"))
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    if mixers:
        lines += ["", "Per layer: " + "; ".join(
            f"{i}: {m}/{mlps[i] if i < len(mlps) else '?'}/{neurons[i] if i < len(neurons) else '?'}"
            for i, m in enumerate(mixers)) + " (mixer/MLP/neuron)"]
    return lines


def _count_params(model_dir: Path) -> int | None:
    f = model_dir / "model.safetensors"
    if not f.is_file():
        return None
    from safetensors import safe_open

    n = 0
    with safe_open(str(f), framework="pt") as sf:
        for k in sf.keys():
            n += math.prod(sf.get_slice(k).get_shape())
    return n


def model_card(model_dir: str | Path, run_dir: str | Path | None = None, eval_results: dict | None = None,
               license: str | None = None, repo_id: str | None = None) -> str:
    """The text of ``README.md`` for the HF directory ``model_dir``.

    Args:
        model_dir: directory with ``config.json`` (and ``model.safetensors`` for the parameter
            count; ``training_summary.json`` when written by the training loop).
        run_dir: the run directory (``recipe.json``, ``metrics.jsonl``,
            ``final/training_summary.json``); None: only what ``model_dir`` holds.
        eval_results: a ``spikelm eval --json`` result (``loss`` nats/token, ``bpb``,
            ``perplexity``, ``tokens``, ``files``, optional ``spikes``/``energy`` sections),
            or None.
        license: SPDX id for the front matter (omitted when None).
        repo_id: hub id used in the loading examples (default: the directory name).
    Returns:
        Markdown with YAML front matter.
    Raises:
        FileNotFoundError: no ``config.json`` in ``model_dir``.
    """
    d = Path(model_dir)
    cfg = _read_json(d / "config.json")
    if cfg is None:
        raise FileNotFoundError(f"{d} has no readable config.json")
    run = Path(run_dir) if run_dir else None
    recipe = _read_json(run / "recipe.json") if run else None
    summary = _read_json(d / "training_summary.json") or (_read_json(run / "final" / "training_summary.json")
                                                           if run else None)
    metrics = []
    if run and (run / "metrics.jsonl").is_file():
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    data = (recipe or {}).get("data", {})
    datasets = _hub_dataset_names(data.get("train_files"))
    name = repo_id or d.name
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation", *_yaml_list("tags", TAGS)]
    if license:
        front.append(f"license: {license}")
    front += _yaml_list("datasets", datasets) + ["---", ""]

    body = [f"# {name}", "",
            "A spiking language model trained with spikelm "
            f"(model_type `{cfg.get('model_type')}`).", "", "## Architecture", ""]
    body += _architecture(cfg, (summary or {}).get("parameters") or _count_params(d))

    body += ["", "## Training", ""]
    if recipe or summary or metrics:
        t = (recipe or {}).get("train", {})
        last = metrics[-1] if metrics else {}
        steps = (summary or {}).get("last_step") or last.get("step") or t.get("max_steps")
        tps = (summary or {}).get("tokens_per_step")
        rows = [("data", ", ".join(map(str, data.get("train_files") or [])) or "n/a"),
                ("validation data", ", ".join(map(str, data.get("val_files") or []))
                 or (f"last {data['val_fraction']:.0%} of the training bytes" if "val_fraction" in data else "n/a")),
                ("flavour", (recipe or {}).get("model", {}).get("flavour", "n/a")),
                ("optimizer steps", steps),
                ("tokens seen", f"{steps * tps:,}" if steps and tps else "n/a"),
                ("block size", data.get("block_size", "n/a")),
                ("learning rate", (recipe or {}).get("optim", {}).get("lr", "n/a")),
                ("precision / ZeRO stage / ranks", f"{(summary or {}).get('precision', 'n/a')} / "
                 f"{(summary or {}).get('zero_stage', t.get('zero_stage', 'n/a'))} / "
                 f"{(summary or {}).get('world_size', 'n/a')}"),
                ("final training loss (nats/token)", _fmt(last.get("loss")))]
        val = (summary or {}).get("val") or {}
        if val:
            rows.append(("validation loss / bits per byte / perplexity",
                         f"{_fmt(val.get('loss'))} / {_fmt(val.get('bpb'))} / {_fmt(val.get('perplexity'), '.2f')}"))
        body += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    else:
        body.append("No training record (recipe.json / training_summary.json / metrics.jsonl) was available.")

    if eval_results:
        e = eval_results
        body += ["", "## Evaluation", "",
                 f"`spikelm eval` on {', '.join(map(str, e.get('files', []))) or 'held-out text'}: "
                 f"{e.get('tokens', 'n/a')} tokens, {e.get('bytes', 'n/a')} bytes, block size "
                 f"{e.get('block_size', 'n/a')}, stride {e.get('stride', 'n/a')}.", "",
                 "| loss (nats/token) | bits per byte | perplexity |", "|---|---|---|",
                 f"| {_fmt(e.get('loss'))} | {_fmt(e.get('bpb'))} | {_fmt(e.get('perplexity'), '.2f')} |"]
        sp = e.get("spikes") or {}
        if sp.get("layers"):
            body += ["", "### Spike statistics", "",
                     "Per layer (spike rate = mean spikes per neuron per token; dead/saturated = fraction of "
                     "neurons that never / always fire):", "",
                     "| layer | spike rate | sparsity | dead | saturated | spikes/token |", "|---|---|---|---|---|---|"]
            for k, s in sp["layers"].items():
                body.append(f"| {k} | {_fmt(s['spike_rate'])} | {_fmt(s['sparsity'])} | {_fmt(s['dead_fraction'])} "
                            f"| {_fmt(s['saturated_fraction'])} | {_fmt(s['spikes_per_token'], '.1f')} |")
        en = e.get("energy") or {}
        if en:
            body += ["", "### Operations and energy estimate", "",
                     f"Per token: {en['dense_macs_per_token']:,.0f} dense MACs as an ANN; as an SNN "
                     f"{en['snn_macs_per_token']:,.0f} MACs + {en['snn_acs_per_token']:,.0f} accumulates. "
                     f"Energy (45 nm, E_MAC = {en['e_mac_pj']} pJ, E_AC = {en['e_ac_pj']} pJ, Horowitz 2014): "
                     f"{en['ann_energy_pj_per_token'] / 1e6:.4g} uJ/token as an ANN, "
                     f"{en['snn_energy_pj_per_token'] / 1e6:.4g} uJ/token as an SNN "
                     f"(ratio {en['energy_ratio']:.2f}). E_SNN = E_MAC * MAC_dense-input + E_AC * AC, with "
                     "AC = MAC * measured input spike rate for projections fed by spikes; attention/recurrence "
                     "products, norms and element-wise ops are not counted (see `spikelm.eval.energy`)."]

    body += ["", "## Usage", "",
             "With spikelm installed (`pip install spikelm`), its classes are used and no remote code runs:", "",
             "```python", "import spikelm  # registers model_type 'spikelm' with the Auto classes",
             "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f'model = AutoModelForCausalLM.from_pretrained("{name}")',
             f'tok = AutoTokenizer.from_pretrained("{name}")', "```", "",
             "Without spikelm, the modeling code shipped in this repository (`configuration_spikelm.py` and "
             "`modeling_spikelm.py`, generated from spikelm) is loaded:", "",
             "```python", "from transformers import pipeline", "",
             f'pipe = pipeline("text-generation", model="{name}", trust_remote_code=True)',
             'print(pipe("ROMEO:", max_new_tokens=50)[0]["generated_text"])', "```", "",
             "Generation carries the recurrent state as its cache (constant memory per token). "
             "The shipped code runs the torch paths only (no Triton); the Triton kernels are used only by an "
             "installed spikelm (`import spikelm`), on CUDA when `triton` is installed.", ""]
    return "\n".join(front + body)


def write_model_card(model_dir: str | Path, run_dir: str | Path | None = None, eval_results: dict | None = None,
                     license: str | None = None, repo_id: str | None = None) -> Path:
    """Write :func:`model_card` to ``model_dir/README.md`` (replacing one there); returns its path."""
    p = Path(model_dir) / "README.md"
    p.write_text(model_card(model_dir, run_dir, eval_results, license, repo_id))
    return p
