"""One training step through the real Trainer, measured: ``python -m spikelm.bench.step RECIPE
[--compile] [--steps N] [--set key=value ...] [--out FILE] [--json FILE]``.

For the eager model (and with ``--compile`` a second Trainer with ``train.compile=true``, side by
side): tokens/s and MFU over ``N`` timed steps after warm-up (with ``--compile`` the two run in
alternating chunks, so other load on the machine falls on both alike); host syncs per step over the same
steps (``spikelm.bench.syncs``); one step under ``torch.profiler`` with its time by category
(``spikelm.bench.profile_categories``); the activation bytes saved for backward per token; the
kernel launches of one block of each layer type, forward and forward+backward
(``spikelm.bench.launches``; on CPU both the GPU path, our Triton kernels run by Triton's
interpreter, and the CPU training path). Prints a markdown report; ``--json`` writes the raw numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import itertools
import os
import platform
import shlex
import sys
import tempfile
import time

import torch

from . import launches as L
from .profile_categories import category_times
from .syncs import HostSyncCounter

PROG = "python -m spikelm.bench.step"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line (``--help`` lists it). Bad usage exits 2 with one line (argparse)."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", nargs="?", default="shakespeare", help="shipped recipe name or YAML path")
    p.add_argument("--compile", action="store_true", help="also run train.compile=true, side by side")
    p.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    p.add_argument("--rounds", type=int, default=5,
                   help="the timed steps run in this many chunks, alternating eager and compiled (default 5)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override, e.g. data.block_size=64 or train.micro_batch_size=8 (repeatable)")
    p.add_argument("--peak-tflops", type=float, help="device peak for MFU where the Trainer knows none (CPU)")
    p.add_argument("--launch-batch", type=int, default=1,
                   help="batch rows for the interpreted GPU-path launch count (launch counts do not depend on it)")
    p.add_argument("--timing-only", action="store_true", help="tokens/s only (no profile, launches, activations)")
    p.add_argument("--run-dir", help="folder for the runs (default: a temporary one; the same on every rank)")
    p.add_argument("--out", help="also write the markdown report here")
    p.add_argument("--json", help="write the raw numbers here (JSON)")
    args = p.parse_args(argv)
    if min(args.steps, args.rounds, args.launch_batch) < 1 or args.warmup < 0:
        p.error("--steps, --rounds and --launch-batch must be >= 1, --warmup >= 0")
    for s in args.set:
        if "=" not in s or "." not in s.split("=", 1)[0]:
            p.error(f"--set {s!r}: expected SECTION.KEY=VALUE, e.g. train.micro_batch_size=8")
    return args


def build_trainer(recipe: str, sets: list[str], run_dir: str, compiled: bool):
    """A fresh :class:`~spikelm.train.trainer.Trainer` of ``recipe`` with ``sets`` overrides, in
    ``run_dir`` (overwritten), with evaluation, checkpoints and samples off; ``train.compile``
    is ``compiled``. Raises ``CLIError`` for a bad recipe, key or value."""
    from ..cli.errors import CLIError
    from ..cli.recipe import load_recipe
    from ..train.trainer import Trainer

    overrides = [f"--{s}" for s in sets] + [
        f"--train.run_dir={run_dir}", "--train.eval_every=0", "--train.checkpoint_every=0",
        "--train.sample_tokens=0", f"--train.compile={'true' if compiled else 'false'}"]
    recipe_obj = load_recipe(recipe, overrides)
    try:
        trainer = Trainer(recipe_obj, overwrite=True)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from e
    trainer.engine.train()
    _mark_optimizer(trainer.engine)
    return trainer


def _mark_optimizer(engine) -> None:
    """Wrap ``engine.step`` (clipping, AdamW, zeroing) in a profiler range the categories claim."""
    step = engine.step

    def marked(*args, **kwargs):
        with torch.profiler.record_function("spikelm.bench::optimizer_step"):
            return step(*args, **kwargs)

    engine.step = marked


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(trainers: dict, first: int, steps: int, rounds: int) -> dict:
    """Time ``steps`` optimizer steps (from step ``first``) of each trainer in ``trainers``
    (``{name: Trainer}``), in ``rounds`` chunks that alternate between them (so load from other
    processes falls on every variant alike), each chunk timed end to end (device synchronised
    at its ends only), host syncs counted. Returns ``{name: {"seconds", "step_ms",
    "tokens_per_s" (all ranks), "syncs_per_step", "sync_sites": [[calls_per_step, method,
    "file:line"], ...]}}``."""
    counters = {name: HostSyncCounter() for name in trainers}
    seconds = dict.fromkeys(trainers, 0.0)
    bounds = [first + steps * i // rounds for i in range(rounds + 1)]
    for lo, hi in itertools.pairwise(bounds):
        for name, trainer in trainers.items():
            _sync(trainer.device)
            with counters[name]:
                t0 = time.perf_counter()
                for step in range(lo, hi):
                    trainer.train_step(step)
                _sync(trainer.device)
                seconds[name] += time.perf_counter() - t0
    out = {}
    for name, trainer in trainers.items():
        syncs = counters[name]
        out[name] = {"seconds": seconds[name], "step_ms": 1e3 * seconds[name] / steps,
                     "tokens_per_s": steps * trainer.tokens_per_step / seconds[name],
                     "syncs_per_step": syncs.total / steps,
                     "sync_sites": [[n / steps, m, site] for (m, site), n in syncs.by_site.most_common()]}
    return out


def profile_step(trainer, step: int) -> dict:
    """One step under ``torch.profiler``: ``{"wall_s", "categories": {name: seconds}}``
    (``profile_categories.category_times``; device time on CUDA)."""
    cuda = trainer.device.type == "cuda"
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=acts) as prof:
        _sync(trainer.device)
        t0 = time.perf_counter()
        trainer.train_step(step)
        _sync(trainer.device)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "categories": category_times(prof.events(), wall, cuda)}


def activation_bytes_per_token(trainer, step: int) -> float:
    """Bytes of the tensors one training forward of a micro-batch saves for backward (distinct
    storages, parameters excluded), over the micro-batch's tokens."""
    from ..data.batches import make_batch

    t = trainer.recipe.train
    micro = trainer.order.rank_micro_batches(step, trainer.rank, trainer.world, t.micro_batch_size)[0]
    batch = make_batch(trainer.train_blocks, micro, trainer.device)
    params = {p.untyped_storage().data_ptr() for p in trainer.engine.module.parameters()}
    seen: dict[int, int] = {}

    def pack(x):
        with contextlib.suppress(RuntimeError, NotImplementedError):  # tensors without storage
            storage = x.untyped_storage()
            if storage.data_ptr() not in params:
                seen[storage.data_ptr()] = storage.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = trainer.engine(**batch, use_cache=False)
    del out
    return sum(seen.values()) / batch["input_ids"].numel()


def _blocks(trainer) -> dict:
    """``{label: block}``: the last block of each layer type of a spikelm model ({} for other archs)."""
    inner = getattr(trainer.engine.module, "model", None)
    return {L.block_label(b): b for b in getattr(inner, "blocks", [])}


def launch_paths(trainer, launch_batch: int) -> dict:
    """``{path: (batch rows, interpret)}`` of the launch counts: ``"gpu"`` (CUDA device events; on
    CPU, when Triton imports, our Triton kernels in the interpreter on ``launch_batch`` rows)
    and, on CPU, ``"cpu"`` (this CPU's training path, on the micro-batch)."""
    from ..kernels.dispatch import triton_available

    mb = trainer.recipe.train.micro_batch_size
    if trainer.device.type == "cuda":
        return {"gpu": (mb, False)}
    return {"cpu": (mb, False), **({"gpu": (launch_batch, True)} if triton_available() else {})}


def block_launch_counts(trainer, rows: int, interpret: bool) -> dict:
    """``{label: {"fwd": n, "fwd_bwd": n, "fwd_parts": {"aten": n, "triton": n, "generated": n,
    "device": n}, "fwd_bwd_parts": ..., "top": [[name, n], ...]}}``: launches of one block of
    each layer type on random hidden states ``[rows, L, D]`` (``launches.block_launches``)."""
    r, dev = trainer.recipe, trainer.device
    out: dict = {}
    for label, block in _blocks(trainer).items():
        x = torch.randn(rows, r.data.block_size, trainer.config.hidden_size, device=dev,
                        dtype=next(block.parameters()).dtype)
        counts = L.block_launches(block, x, interpret=interpret)
        entry = {"top": [[n, c] for n, c in counts["fwd_bwd"].by_name.most_common(8)]}
        for key, n in counts.items():
            entry[key] = n.total
            entry[f"{key}_parts"] = {"aten": n.aten, "triton": n.triton, "generated": n.generated, "device": n.device}
        out[label] = entry
    return out


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@contextlib.contextmanager
def _run_dir(root: str | None, name: str):
    """``root/name`` (kept), or a temporary folder removed afterwards. Several ranks need ``root``
    (one shared folder); without it they share one named by the launcher's run id."""
    if root is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        root = os.path.join(tempfile.gettempdir(), f"spikelm-bench-{os.environ.get('TORCHELASTIC_RUN_ID', 'ranks')}")
    if root is not None:
        yield os.path.join(root, name)
        return
    with tempfile.TemporaryDirectory(prefix="spikelm-bench-") as tmp:
        yield tmp


def prepare(args, compiled: bool, run_dir: str) -> tuple:
    """``(trainer, {"warmup_s"})``: a fresh Trainer of the variant (eager or ``train.compile``)
    after its warm-up steps. Raises ``RuntimeError`` when ``train.compile`` compiled no graph."""
    trainer = build_trainer(args.recipe, args.set, run_dir, compiled)
    graphs = _compiled_graphs()
    t0 = time.perf_counter()
    for step in range(args.warmup):
        trainer.train_step(step)
    _sync(trainer.device)
    if compiled and _compiled_graphs() == graphs:
        raise RuntimeError("train.compile=true compiled no graph in the warm-up steps (the Trainer does not "
                           "apply it yet)")
    return trainer, {"warmup_s": time.perf_counter() - t0, "context": _context(trainer)}


def details(trainer, args, res: dict, strict: bool = True) -> None:
    """Add to ``res`` (one variant's results, timed) its MFU and, unless ``--timing-only``, the
    profiled step, activation bytes per token and block launches. ``strict=False``: a section
    that fails is left out and its one-line reason put in ``res["failed"][section]``."""
    res["mfu"] = trainer.mfu(res["tokens_per_s"])
    if res["mfu"] is None and args.peak_tflops:
        res["mfu"] = trainer.flops_per_token * res["tokens_per_s"] / (args.peak_tflops * 1e12 * trainer.world)
    if args.timing_only:
        return
    next_step = args.warmup + args.steps
    sections = {("profile",): lambda: profile_step(trainer, next_step),
                ("activation_bytes_per_token",): lambda: activation_bytes_per_token(trainer, next_step + 1)}
    for path, (rows, interpret) in launch_paths(trainer, args.launch_batch).items():
        sections["launches", path] = functools.partial(block_launch_counts, trainer, rows, interpret)
    for keys, measure in sections.items():
        try:
            value = measure()
        except Exception as e:
            if strict:
                raise
            res.setdefault("failed", {})[" ".join(keys)] = f"{type(e).__name__}: {_one_line(e)}"[:300]
            continue
        if len(keys) == 1:
            res[keys[0]] = value
        else:
            res.setdefault(keys[0], {})[keys[1]] = value


def _drop_compiled(trainers: dict, res: dict, e: BaseException) -> None:
    """Record why the compiled variant failed (one line) and drop its column."""
    trainers.pop("compiled", None)
    res.pop("compiled", None)
    res["compiled_error"] = f"{type(e).__name__}: {_one_line(e)}"[:400]


def run(args, res: dict) -> None:
    """Fill ``res["eager"]`` and, with ``--compile``, ``res["compiled"]`` (or ``res["compiled_error"]``,
    one line: the compiled column is optional) with every measurement. Raises ``CLIError`` for
    bad input."""
    with contextlib.ExitStack() as stack:
        trainers = {}
        for name in ("eager", "compiled") if args.compile else ("eager",):
            run_dir = stack.enter_context(_run_dir(args.run_dir, name))
            try:
                trainers[name], res[name] = prepare(args, name == "compiled", run_dir)
            except Exception as e:  # eager errors propagate; a failed compile is reported in one line
                if name == "eager":
                    raise
                _drop_compiled(trainers, res, e)
        graphs = _compiled_graphs()
        try:
            timed = time_interleaved(trainers, args.warmup, args.steps, min(args.rounds, args.steps))
        except Exception as e:  # a failing compiled step: report it, time eager alone
            if "compiled" not in trainers:
                raise
            _drop_compiled(trainers, res, e)
            timed = time_interleaved(trainers, args.warmup, args.steps, min(args.rounds, args.steps))
        recompiled = _compiled_graphs() - graphs
        for name, trainer in trainers.items():
            res[name].update(timed[name], recompiled_in_timed_steps=recompiled if name == "compiled" else 0)
            details(trainer, args, res[name], strict=name == "eager")
        if "compiled" in trainers:
            res["compiled_speedup"] = res["compiled"]["tokens_per_s"] / res["eager"]["tokens_per_s"]


def _context(trainer) -> dict:
    from ..train.archs import describe

    t, d = trainer.recipe.train, trainer.recipe.data
    return {"model": describe(trainer.config), "parameters": trainer.n_params, "world": trainer.world,
            "rank": trainer.rank, "micro_batch": t.micro_batch_size, "block_size": d.block_size,
            "grad_accum": t.grad_accum, "precision": trainer.precision, "tokens_per_step": trainer.tokens_per_step,
            "flops_per_token": trainer.flops_per_token, "device": str(trainer.device)}


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return (f"CPU {platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
            f"load average {os.getloadavg()[0]:.2f} at the start)")


def _code_version() -> str:
    """``commit abc1234`` of the spikelm checkout, ``+ uncommitted changes`` when its tree is dirty."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        sha = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {sha}" + (" + uncommitted changes" if dirty else "")


def _versions() -> str:
    parts = [f"torch {torch.__version__}"]
    for mod in ("triton", "deepspeed", "transformers"):
        with contextlib.suppress(ImportError):
            parts.append(f"{mod} {__import__(mod).__version__}")
    return ", ".join(parts)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the bench (module docstring); returns the exit status (2 for bad input, one line on stderr)."""
    from ..cli.errors import CLIError
    from .step_report import render

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # Inductor's C++ kernels appear in the profile (and are counted as launches) only with this set
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True
    res = {"recipe": args.recipe, "command": " ".join([PROG] + [shlex.quote(a) for a in argv]),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "device": _device_name(), "versions": _versions(), "code": _code_version(), "steps": args.steps,
           "warmup": args.warmup}
    try:
        run(args, res)
    except CLIError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if res["eager"]["context"]["rank"] != 0:
        return 0
    from .step_report import emit

    emit(render(res), res, args.out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
