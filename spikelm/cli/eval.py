"""``spikelm eval``: loss, bits per byte, perplexity, spike statistics and energy of a saved model."""
from __future__ import annotations

import argparse
import json

from .errors import CLIError

def cmd_eval(argv: list[str]) -> int:
    """``spikelm eval MODEL FILE ...``: print (or ``--json``) loss, BPB, spikes and energy. Raises CLIError."""
    p = argparse.ArgumentParser(prog="spikelm eval", description="Loss, bits per byte and perplexity (full-context "
                                "strided), spike statistics and an operation/energy estimate of a saved model "
                                "(spikelm or any HF causal LM; a directory or a Hub id) on text files.")
    p.add_argument("model_dir", help="HF model directory or Hub model id")
    p.add_argument("files", nargs="+", help="text/json(l)/parquet files, or one Hub dataset name")
    p.add_argument("--block-size", type=int, default=None, help="tokens per window (default: the model's context)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--stride", type=int, default=None,
                   help="window step in tokens (default: the block size); smaller gives every token more left "
                        "context at block/stride times the compute")
    p.add_argument("--text-field", default="text")
    p.add_argument("--split", default=None, help="split of a Hub dataset (default: validation, test, else train)")
    p.add_argument("--no-spikes", action="store_true", help="skip the spike statistics and energy estimate")
    p.add_argument("--spike-tokens", type=int, default=16384,
                   help="tokens measured for spike statistics/energy (disjoint blocks from the start)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="replace a config field at load time (JSON value), e.g. adaptive_spike_k=2")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    overrides = {}
    for item in a.override:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--override expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(val)
        except json.JSONDecodeError:
            overrides[key] = val
    if a.spike_tokens < 1:
        raise CLIError(f"--spike-tokens must be >= 1, got {a.spike_tokens}")
    from ..eval.perplexity import evaluate_files

    try:
        res = evaluate_files(a.model_dir, a.files, block_size=a.block_size, batch_size=a.batch_size,
                             text_field=a.text_field, stride=a.stride, spikes=not a.no_spikes,
                             spike_max_tokens=a.spike_tokens, split=a.split, config_overrides=overrides)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from e
    if a.json:
        print(json.dumps(res))
        return 0
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
    if en is not None:
        print(f"operations per token: {en['dense_macs_per_token']:,.0f} MACs dense (ANN "
              f"{en['ann_energy_pj_per_token'] / 1e6:.4g} uJ); as SNN {en['snn_macs_per_token']:,.0f} MACs + "
              f"{en['snn_acs_per_token']:,.0f} ACs ({en['snn_energy_pj_per_token'] / 1e6:.4g} uJ), ANN/SNN energy "
              f"{en['energy_ratio']:.2f}x (45 nm: E_MAC {en['e_mac_pj']} pJ, E_AC {en['e_ac_pj']} pJ)")
    return 0
