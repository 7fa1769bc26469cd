"""``spikelm eval``: loss, bits per byte, perplexity, spike statistics and energy of a saved model;
with ``--tasks``, benchmarks through lm-evaluation-harness (:mod:`spikelm.eval.harness`)."""
from __future__ import annotations

import argparse
import json

from .errors import CLIError


def cmd_eval(argv: list[str]) -> int:
    """``spikelm eval MODEL [FILE ...] [--tasks T,...]``: print (or ``--json``) loss, BPB, spikes and energy
    of the files, and/or the lm-evaluation-harness results of the tasks (table; JSON in
    ``--output-dir/lm_eval_results.json``). Raises CLIError."""
    p = argparse.ArgumentParser(prog="spikelm eval", description="Loss, bits per byte and perplexity (full-context "
                                "strided), spike statistics and an operation/energy estimate of a saved model "
                                "(spikelm or any HF causal LM; a directory or a Hub id) on text files.")
    p.add_argument("model_dir", help="HF model directory or Hub model id")
    p.add_argument("files", nargs="*", help="text/json(l)/parquet files, or one Hub dataset name (optional with "
                   "--tasks)")
    p.add_argument("--block-size", type=int, default=None, help="tokens per window (default: the model's context)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--stride", type=int, default=None,
                   help="window step in tokens (default: the block size); smaller gives every token more left "
                        "context at block/stride times the compute")
    p.add_argument("--text-field", default="text")
    p.add_argument("--label-field", default="label",
                   help="a sequence classifier's labelled jsonl/parquet files: the label column")
    p.add_argument("--split", default=None, help="split of a Hub dataset (default: validation, test, else train)")
    p.add_argument("--no-spikes", action="store_true", help="skip the spike statistics and energy estimate")
    p.add_argument("--spike-tokens", type=int, default=16384,
                   help="tokens measured for spike statistics/energy (disjoint blocks from the start)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="replace a config field at load time (JSON value), e.g. adaptive_spike_k=2")
    p.add_argument("--sweep", default=None, metavar="KEY=V1,V2,...",
                   help="evaluate once per value of one config field (JSON values, on top of --override), e.g. "
                        "adaptive_spike_k=1,2,3 or lif_v_th=0.8,1,1.5: a table of BPB against sparsity; with --json "
                        '{"sweep": KEY, "points": [result, ...]} (spikelm plot draws it as one trade-off curve)')
    p.add_argument("--json", action="store_true", help="print one JSON object")
    h = p.add_argument_group("lm-evaluation-harness (pip install spikelm[eval])")
    h.add_argument("--tasks", default=None, help="comma-separated harness task/group names, e.g. arc_easy,piqa")
    h.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's own)")
    h.add_argument("--limit", type=float, default=None, help="at most N documents per task (< 1: a fraction)")
    h.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="folder of extra task YAML files (repeatable; the shipped tasks, e.g. "
                        "shakespeare_cloze, are always included)")
    h.add_argument("--bootstrap-iters", type=int, default=100000,
                   help="bootstrap resamples for stderrs without a closed form (0: skip)")
    h.add_argument("--output-dir", default=".", help="where lm_eval_results.json is written (default: .)")
    a = p.parse_args(argv)
    if not a.files and a.tasks is None:
        p.error("the following arguments are required: files (or --tasks)")
    overrides = {}
    for item in a.override:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--override expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(val)
        except json.JSONDecodeError:
            overrides[key] = val
    sweep = _parse_sweep(a.sweep, overrides) if a.sweep is not None else None
    if sweep is not None and (a.tasks is not None or not a.files):
        raise CLIError("--sweep evaluates FILE arguments; it does not combine with --tasks")
    if a.spike_tokens < 1:
        raise CLIError(f"--spike-tokens must be >= 1, got {a.spike_tokens}")
    if a.tasks is not None:
        from ..eval.harness import HarnessMissingError, check_available

        try:  # fail before any model loading: the extra missing, a bad folder
            check_available(a.include_path)
        except HarnessMissingError as e:
            raise CLIError(str(e)) from None
        except FileNotFoundError as e:
            raise CLIError(str(e)) from e
    if sweep is not None:
        key, values = sweep
        points = [_eval_files(a, {**overrides, key: v}) for v in values]
        if a.json:
            print(json.dumps({"sweep": key, "points": points}))
        else:
            _print_sweep(key, values, points)
        return 0
    res = _eval_files(a, overrides) if a.files else {}
    if a.tasks is not None:
        res["lm_eval"] = _eval_tasks(a, overrides)
    if a.json:
        print(json.dumps(res))
        return 0
    if a.files:
        _print_files(res)
    if a.tasks is not None:
        from ..eval.harness import results_table

        print(("\n" if a.files else "") + results_table(res["lm_eval"]))
        print(f"lm-eval results written to {res['lm_eval']['results_file']}")
    return 0


def _parse_sweep(spec: str, overrides: dict) -> tuple[str, list]:
    """``KEY=V1,V2,...`` -> ``(KEY, [V1, V2, ...])`` (each value JSON, else a string). Raises
    CLIError for a malformed spec, fewer than two values or a key that --override sets too."""
    key, sep, vals = spec.partition("=")
    values = [v.strip() for v in vals.split(",") if v.strip()] if sep else []
    if not key or len(values) < 2:
        raise CLIError(f"--sweep expects KEY=V1,V2,... with two or more values, got {spec!r}")
    if key in overrides:
        raise CLIError(f"--sweep {key} is also set by --override; give it in one place")
    out = []
    for v in values:
        try:
            out.append(json.loads(v))
        except json.JSONDecodeError:
            out.append(v)
    return key, out


def _print_sweep(key: str, values: list, points: list[dict]) -> None:
    """The text table of a ``--sweep``: one row per value."""
    w = max(len(key), *(len(str(v)) for v in values))
    print(f"{key:<{w}}  loss (nats/token)  bits/byte  perplexity  sparsity  spike rate  energy/token (uJ)")
    for v, r in zip(values, points):
        ov = (r.get("spikes") or {}).get("overall") or {}
        en = r.get("energy") or {}
        sp = f"{ov['sparsity']:.4f}" if ov else "-"
        rate = f"{ov['spike_rate']:.4f}" if ov else "-"
        energy = f"{en['snn_energy_pj_per_token'] / 1e6:.4g}" if en else "-"
        print(f"{str(v):<{w}}  {r['loss']:<17.4f}  {r['bpb']:<9.4f}  {r['perplexity']:<10.2f}  {sp:<8}  {rate:<10}  {energy}")


def _eval_tasks(a: argparse.Namespace, overrides: dict) -> dict:
    """Run the harness (``--tasks``), write its JSON; returns it with ``results_file``. Raises CLIError."""
    from ..eval.harness import run_harness, write_results

    limit = int(a.limit) if a.limit is not None and a.limit >= 1 else a.limit
    if limit is not None and limit <= 0:
        raise CLIError(f"--limit must be > 0, got {a.limit}")
    try:
        from ..recipes import LM_EVAL_DIR

        res = run_harness(a.model_dir, a.tasks.split(","), num_fewshot=a.num_fewshot, limit=limit,
                          include_path=[*a.include_path, str(LM_EVAL_DIR)], batch_size=a.batch_size, config_overrides=overrides,
                          bootstrap_iters=a.bootstrap_iters)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from e
    res["results_file"] = str(write_results(res, a.output_dir))
    return res


def _eval_files(a: argparse.Namespace, overrides: dict) -> dict:
    """Loss/BPB/spikes/energy of the FILE arguments; for a sequence classifier, accuracy and
    macro-F1 on labelled files. Raises CLIError."""
    from ..eval.classification import evaluate_classifier, is_classifier_dir
    from ..eval.perplexity import evaluate_files

    if is_classifier_dir(a.model_dir):
        try:
            return evaluate_classifier(a.model_dir, a.files, text_field=a.text_field, label_field=a.label_field,
                                       batch_size=a.batch_size, block_size=a.block_size)
        except (ValueError, FileNotFoundError) as e:
            raise CLIError(str(e)) from e
    try:
        return evaluate_files(a.model_dir, a.files, block_size=a.block_size, batch_size=a.batch_size,
                             text_field=a.text_field, stride=a.stride, spikes=not a.no_spikes,
                             spike_max_tokens=a.spike_tokens, split=a.split, config_overrides=overrides)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from e


def _print_files(res: dict) -> None:
    """Print the text report of :func:`_eval_files`."""
    if "accuracy" in res:
        print(f"{res['rows']} labelled rows, {len(res['labels'])} labels: accuracy {res['accuracy']:.4f}, macro-F1 "
              f"{res['macro_f1']:.4f}, loss {res['loss']:.4f} nats/row (majority class {res['majority_accuracy']:.4f})")
        return
    print(f"{res['tokens']} tokens, {res['bytes']} bytes: loss {res['loss']:.4f} nats/token, "
          f"{res['bpb']:.4f} bits/byte, perplexity {res['perplexity']:.2f} "
          f"(block {res['block_size']}, stride {res['stride']})")
    sp, en = res.get("spikes") or {}, res.get("energy")
    if sp.get("sites"):
        ov = sp["overall"]
        print(f"\nspikes (measured on {en['tokens']} tokens): rate {ov['spike_rate']:.4f}, sparsity "
              f"{ov['sparsity']:.4f}, {ov['spikes_per_token']:.1f} spikes/token")
        w = max(len(k) for k in sp["sites"])
        print(f"  {'site':<{w}}  kind      rate    sparsity  dead    saturated  spikes/token")
        for k, s in sp["sites"].items():
            print(f"  {k:<{w}}  {s['kind']:<8}  {s['spike_rate']:.4f}  {s['sparsity']:.4f}    "
                  f"{s['dead_fraction']:.4f}  {s['saturated_fraction']:.4f}     {s['spikes_per_token']:.1f}")
    elif en is not None:
        print("\nno spiking neurons: dense ANN")
    moe = res.get("moe")
    if moe:
        print(f"\nexperts: {moe['active_expert_fraction']:.4f} of the routed experts' weights active per token "
              f"(routing sparsity {moe['routing_sparsity']:.4f}), {moe['dropped_fraction']:.4f} of assignments dropped")
        w = max(len(k) for k in moe["layers"])
        print(f"  {'layer':<{w}}  experts  top-k  max load  min load  load per expert")
        for k, s in moe["layers"].items():
            loads = " ".join(f"{x:.3f}" for x in s["expert_load"])
            print(f"  {k:<{w}}  {s['experts']:<7}  {s['top_k']:<5}  {s['max_load']:.4f}    {s['min_load']:.4f}    {loads}")
    if en is not None:
        print(f"operations per token: {en['dense_macs_per_token']:,.0f} MACs dense (ANN "
              f"{en['ann_energy_pj_per_token'] / 1e6:.4g} uJ); as SNN {en['snn_macs_per_token']:,.0f} MACs + "
              f"{en['snn_acs_per_token']:,.0f} ACs ({en['snn_energy_pj_per_token'] / 1e6:.4g} uJ), ANN/SNN energy "
              f"{en['energy_ratio']:.2f}x (45 nm: E_MAC {en['e_mac_pj']} pJ, E_AC {en['e_ac_pj']} pJ)")
