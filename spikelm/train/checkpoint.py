"""Training checkpoints that survive a SIGKILL and never run code from a file.

A checkpoint is DeepSpeed's engine checkpoint (weights, optimizer, scheduler; any ZeRO stage)
plus the run's client state (step, RNG) in ``checkpoints/step{N}``. Guarantees:

* **complete or ignored**: after every rank has written its files, rank 0 fsyncs them and
  writes ``step{N}/spikelm_manifest.json`` (every file with its size) last, atomically; only
  then does ``checkpoints/latest`` move, itself written atomically (temp file, fsync, rename).
  DeepSpeed's own plain write of ``latest`` is not used (``save_latest=False``), so a kill at
  any moment leaves either the previous checkpoint or the new one as the newest complete step;
* **fallback**: resuming (:func:`load_checkpoint`) and ``spikelm export``
  (:func:`newest_complete_step`) take the newest complete step, and say which damaged or
  incomplete steps they skipped and why;
* **weights only**: every checkpoint file is unpickled with ``torch.load(weights_only=True)``
  (DeepSpeed's loads too, through :func:`safe_torch_load`), allowing only tensors, plain
  containers and the DeepSpeed state classes of :func:`deepspeed_safe_globals`. A file holding
  anything else (a pickle payload) is refused with :class:`CheckpointError`, never executed.

Checkpoints written before manifests existed (no ``spikelm_manifest.json`` in any step, and a
``latest`` that names a step) are still read: a step then counts as complete when it holds
DeepSpeed's model states.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
from pathlib import Path

import torch

from .distributed import all_reduce_sum, barrier

CHECKPOINTS = "checkpoints"
"""Folder of the run directory holding the checkpoints."""
MANIFEST = "spikelm_manifest.json"
"""File of a step folder, written last: the step and every file of the checkpoint with its size."""
LATEST = "latest"
"""File of the checkpoints folder naming the newest complete step (DeepSpeed's convention)."""


class CheckpointError(ValueError):
    """No usable checkpoint, or a checkpoint file that is not weights-only (names the file)."""


def deepspeed_safe_globals() -> list:
    """DeepSpeed's classes that its ZeRO optimizer states pickle (loss scalers, the ZeRO stage
    enum, tensor-fragment addresses): plain records, safe to rebuild."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _refused(path, e: Exception) -> CheckpointError:
    return CheckpointError(f"{path} is not a weights-only checkpoint file (it holds objects other than tensors "
                           f"and DeepSpeed's state classes: {' '.join(str(e).split())[:200]}); refusing to load it, "
                           "as it could run code. Use checkpoints you wrote yourself")


def safe_load(path, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with DeepSpeed's state classes allowed.

    Raises:
        CheckpointError: the file holds other objects (e.g. a planted pickle payload).
        RuntimeError / EOFError / OSError: a truncated, damaged or missing file.
    """
    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        try:
            return _TORCH_LOAD(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            raise _refused(path, e) from None


_TORCH_LOAD = torch.load


@contextlib.contextmanager
def safe_torch_load():
    """Within the block, every ``torch.load`` (DeepSpeed's ``load_checkpoint`` and
    ``zero_to_fp32`` call it with ``weights_only=False``) goes through :func:`safe_load`."""
    def load(f, map_location=None, *args, **kwargs):
        return safe_load(f, map_location=map_location)

    torch.load = load
    try:
        yield
    finally:
        torch.load = _TORCH_LOAD


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a kill leaves the old content or the new, never a
    torn file: a temp file in the same folder, fsync, rename, fsync of the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_tags(ckpt_dir: Path) -> list[Path]:
    """The ``step{N}`` checkpoint folders of ``ckpt_dir``, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    return sorted((p for p in ckpt_dir.glob("step*") if p.is_dir() and p.name[4:].isdigit()),
                  key=lambda p: int(p.name[4:]))


def write_manifest(tag_dir: Path, step: int) -> None:
    """Fsync every file of ``tag_dir`` and record it with its size in :data:`MANIFEST` (last)."""
    files = {}
    for p in sorted(tag_dir.iterdir()):
        if p.is_file() and p.name != MANIFEST and not p.name.startswith("."):
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            files[p.name] = p.stat().st_size
    atomic_write_text(tag_dir / MANIFEST, json.dumps({"step": step, "files": files}, indent=1) + "\n")


def step_problem(tag_dir: Path, legacy: bool = False) -> str | None:
    """Why ``tag_dir`` is not a complete checkpoint, or None when it is: its manifest is missing
    (interrupted while saving) or unreadable, or a listed file is missing or has another size
    (truncated). ``legacy``: a run without manifests; the model states must be there."""
    if legacy:
        states = list(tag_dir.glob("mp_rank_*_model_states.pt"))
        return None if states and all(p.stat().st_size > 0 for p in states) else "no DeepSpeed model states"
    m = tag_dir / MANIFEST
    if not m.is_file():
        return "incomplete (no manifest: interrupted while saving)"
    try:
        files = json.loads(m.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable manifest ({e})"
    for name, size in files.items():
        p = tag_dir / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != size:
            return f"{name} is truncated ({p.stat().st_size} of {size} bytes)"
    return None


def complete_steps(ckpt_dir: Path) -> tuple[list[str], list[str]]:
    """``(complete tags, newest first; skipped: "stepN: why" for each unusable step)``."""
    tags = step_tags(ckpt_dir)
    # written before manifests existed: no manifest anywhere, and DeepSpeed's `latest` names a step
    latest = Path(ckpt_dir) / LATEST
    legacy = not any((t / MANIFEST).is_file() for t in tags) and latest.is_file() and \
        (Path(ckpt_dir) / latest.read_text().strip()).is_dir()
    good, skipped = [], []
    for t in reversed(tags):
        why = step_problem(t, legacy)
        (skipped.append(f"{t.name}: {why}") if why else good.append(t.name))
    return good, skipped


def newest_complete_step(ckpt_dir: Path) -> tuple[str, list[str]]:
    """``(tag, skipped)``: the newest complete step of ``ckpt_dir`` and the newer ones skipped.

    Raises:
        CheckpointError: no complete step (lists why each one was skipped).
    """
    good, skipped = complete_steps(ckpt_dir)
    if not good:
        why = "; ".join(skipped) or "no step folders"
        raise CheckpointError(f"no usable checkpoint in {ckpt_dir} ({why})")
    newest = int(good[0][4:])
    return good[0], [s for s in skipped if int(s.split(":")[0][4:]) > newest]


def rng_state() -> dict:
    """The RNG state a checkpoint restores (torch's CPU generator)."""
    return {"rng_cpu": torch.get_rng_state()}


def restore_rng(client: dict) -> None:
    """Restore the RNG state saved by :func:`rng_state`."""
    torch.set_rng_state(client["rng_cpu"])


def save_checkpoint(engine, ckpt_dir: Path, step: int, keep: int, rank: int) -> None:
    """Save ``ckpt_dir/step{step}`` on every rank; then rank 0 writes its manifest and moves
    ``latest`` to it (both atomically) and deletes all but the newest ``keep`` steps."""
    tag = f"step{step}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step, **rng_state()}, save_latest=False)
    barrier()  # every rank's files are written
    if rank == 0:
        write_manifest(Path(ckpt_dir) / tag, step)
        atomic_write_text(Path(ckpt_dir) / LATEST, tag)
        for old in step_tags(ckpt_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()


def load_checkpoint(engine, ckpt_dir: Path, device, log=print) -> int:
    """Load the newest complete, loadable checkpoint of ``ckpt_dir`` into ``engine`` (weights
    only), restore the RNG and return its step. Damaged steps are skipped, each with one
    ``log`` line saying why; every rank takes the same decision.

    Raises:
        CheckpointError: no usable step (each one's reason listed), or a file that is not
            weights-only (never skipped: it is reported).
    """
    good, skipped = complete_steps(ckpt_dir)
    for s in skipped:
        log(f"checkpoint {s}; skipped")
    for tag in good:
        why = None
        try:
            with safe_torch_load():
                _, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
            if client is None or "step" not in client:
                why = "DeepSpeed found no checkpoint there"
        except CheckpointError:
            raise
        except (RuntimeError, EOFError, OSError, KeyError, AssertionError, pickle.UnpicklingError) as e:
            why = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
        if all_reduce_sum([float(why is not None)], device)[0] == 0:
            restore_rng(client)
            return int(client["step"])
        skipped.append(f"{tag}: {why or 'failed to load on another rank'}")
        log(f"checkpoint {skipped[-1]}; skipped")
    raise CheckpointError(f"no usable checkpoint in {ckpt_dir} ({'; '.join(skipped) or 'no step folders'}); "
                          "start the run again with --overwrite")
