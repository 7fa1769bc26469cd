"""The markdown report of ``spikelm.bench.step``: its results dict -> tables (eager and compiled side by side)."""
from __future__ import annotations

from .profile_categories import ORDER

PATHS = {
    "gpu": "GPU path: CUDA device events, or on CPU our Triton kernels run by Triton's interpreter "
           "(TRITON_INTERPRET=1), i.e. what a GPU launches",
    "cpu": "CPU path: this CPU's training path (the pure-torch kernels)",
}


def _num(v, fmt: str = ",.0f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _ratio(a, b) -> str:
    return f"{b / a:.2f}x" if a and b is not None else ""


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _throughput(e: dict, c: dict | None) -> list[str]:
    def mfu(r):
        return "n/a (CPU peak unknown)" if r.get("mfu") is None else f"{100 * r['mfu']:.2f}%"

    rows = []
    for name, key, fmt, ratio in (("tokens/s", "tokens_per_s", ",.0f", True), ("step time (ms)", "step_ms", ",.1f", False),
                                  ("warm-up incl. compile (s)", "warmup_s", ".1f", False),
                                  ("host syncs per step", "syncs_per_step", ".2f", False),
                                  ("activation bytes per token", "activation_bytes_per_token", ",.0f", True)):
        ev, cv = e.get(key), (c or {}).get(key)
        row = [name, _num(ev, fmt)] + ([_num(cv, fmt), _ratio(ev, cv) if ratio else ""] if c is not None else [])
        rows.append(row)
    rows.insert(2, ["MFU", mfu(e)] + ([mfu(c), ""] if c is not None else []))
    header = ["", "eager"] + (["compiled", "compiled/eager"] if c is not None else [])
    return _table(header, rows)


def _categories(e: dict, c: dict | None) -> list[str]:
    variants = [("eager", e)] + ([("compiled", c)] if c is not None and "profile" in c else [])
    header = ["category"] + [f"{n} {u}" for n, _ in variants for u in ("ms", "%")]
    rows = []
    for cat in ORDER + ["profiled step wall"]:
        row = [cat if cat != "profiled step wall" else f"**{cat}**"]
        for _, r in variants:
            wall = r["profile"]["wall_s"]
            s = wall if cat == "profiled step wall" else r["profile"]["categories"][cat]
            row += [f"{1e3 * s:,.1f}", f"{100 * s / wall:.1f}"]
        rows.append(row)
    return _table(header, rows)


def _launches(e: dict, c: dict | None) -> list[str]:
    out = []
    for path, counts in e.get("launches", {}).items():
        other = (c or {}).get("launches", {}).get(path, {})
        rows = []
        for label, n in counts.items():
            for key, name in (("fwd", "fwd"), ("fwd_bwd", "fwd+bwd")):
                o = other.get(label, {})
                row = [label, name, str(n[key]), _parts(n.get(f"{key}_parts"))]
                if c is not None:
                    row += [_num(o.get(key), "d"), _parts(o.get(f"{key}_parts")), _ratio(n[key], o.get(key))]
                rows.append(row)
        out += ["", f"*{PATHS[path]}*", ""]
        header = ["block", "pass", "eager", "of which"]
        out += _table(header + (["compiled", "of which", "compiled/eager"] if c is not None else []), rows)
        for label, n in counts.items():
            top = ", ".join(f"{name} {k}" for name, k in n["top"])
            out += ["", f"Most launched by {label} (eager, fwd+bwd): {top}"]
    return out or ["", "n/a: the model has no spikelm blocks"]


def _parts(p: dict | None) -> str:
    """``"119 aten + 6 triton"``: the non-zero parts of a launch count."""
    if not p:
        return ""
    return " + ".join(f"{v} {k}" for k, v in p.items() if v) or "0"


def _syncs(name: str, r: dict) -> list[str]:
    sites = r.get("sync_sites", [])
    if not sites:
        return [f"{name}: none"]
    return [f"{name}:", ""] + _table(["per step", "method", "site"], [[f"{n:.2f}", m, f"`{s}`"] for n, m, s in sites[:8]])


def render(res: dict) -> str:
    """The report of one bench run (``step.main``'s results: ``command``, ``date``, ``device``,
    ``versions``, ``eager``, ``compiled`` or ``compiled_error``)."""
    e, c = res["eager"], res.get("compiled")
    ctx = e["context"]
    lines = [f"# Step bench: {res['recipe']}", "",
             f"- command: `{res['command']}`", f"- date: {res['date']}", f"- device: {res['device']}",
             f"- software: {res['versions']}", f"- code: {res['code']}",
             f"- model: {ctx['model']}, {ctx['parameters'] / 1e6:.2f}M parameters, precision {ctx['precision']}",
             (f"- step: {ctx['world']} rank(s) x {ctx['grad_accum']} x {ctx['micro_batch']} sequences x "
              f"{ctx['block_size']} tokens = {ctx['tokens_per_step']:,} tokens; {res['warmup']} warm-up + "
              f"{res['steps']} timed steps")]
    if "compiled_error" in res:
        lines.append(f"- compiled: failed: {res['compiled_error']}")
    for section, why in (c or {}).get("failed", {}).items():
        lines.append(f"- compiled: {section} failed (left out): {why}")
    for name, r in (("eager", e), ("compiled", c or {})):
        if r.get("recompiled_in_timed_steps"):
            lines.append(f"- warning: {name}: {r['recompiled_in_timed_steps']} graph(s) compiled during the timed steps")
    lines += ["", "## Throughput", ""] + _throughput(e, c)
    if "profile" in e:
        lines += ["", "## Time by category (one profiled step)", "",
                  ("Self time of each op, claimed by its enclosing recurrent/neuron/optimizer op; host time on "
                   "CPU, kernel time on CUDA; idle host = wall minus busy time."), ""] + _categories(e, c)
        lines += ["", "## Kernel launches per block (one block of each layer type)"] + _launches(e, c)
    lines += ["", "## Host syncs (timed steps)", ""] + _syncs("eager", e)
    if c is not None:
        lines += [""] + _syncs("compiled", c)
    return "\n".join(lines) + "\n"


def emit(report: str, res: dict, out: str | None, json_path: str | None) -> None:
    """Print ``report`` and write it to ``out`` and ``res`` as JSON to ``json_path`` (each when given)."""
    import json

    print(report, end="", flush=True)
    if out:
        with open(out, "w") as f:
            f.write(report)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
