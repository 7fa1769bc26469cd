"""The run directory: refuse to clobber a run, write outputs atomically."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

RUN_MARKERS = ("checkpoints", "final", "metrics.jsonl", "tokenizer")
RUN_OUTPUTS = RUN_MARKERS + ("tb", "model_config.json", "recipe.json")
"""What a run writes into its directory (``converted/``, derived from the source, is kept)."""
REPLACED = ".replaced-run"
"""Folder of the run directory holding the old run under ``--overwrite`` until the new run has
written its first checkpoint."""


class RunDirError(ValueError):
    """A run directory cannot be used as asked (it holds a run, or no run to resume)."""


def check_run_dir(run_dir: str | os.PathLike, resume: bool, overwrite: bool) -> Path:
    """Check ``run_dir`` against the resume/overwrite flags without touching it.

    Raises:
        RunDirError: ``run_dir`` holds a run and neither flag is set; ``resume`` without a
            checkpoint to resume from; both flags at once.
    """
    path = Path(run_dir)
    if resume and overwrite:
        raise RunDirError("pass --resume or --overwrite, not both")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"train.run_dir {path} is a file, not a directory; choose another --train.run_dir")
    parent = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(f"train.run_dir {path}: {parent} is not writable; choose another --train.run_dir")
    holds_run = path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)
    if resume:
        from .checkpoint import CHECKPOINTS, complete_steps

        good, skipped = complete_steps(path / CHECKPOINTS)
        if not good:
            why = f" ({'; '.join(skipped)})" if skipped else ""
            fix = "start it again with --overwrite" if holds_run else "start without --resume"
            raise RunDirError(f"--resume: no complete checkpoint in {path}/{CHECKPOINTS}{why} (nothing to resume); "
                              f"{fix}")
        return path
    if holds_run and not overwrite:
        raise RunDirError(f"{path} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                          "or choose another --train.run_dir")
    return path


def prepare_run_dir(run_dir: str | os.PathLike, resume: bool, overwrite: bool) -> Path:
    """:func:`check_run_dir`, then create ``run_dir``. With ``overwrite`` the old run's outputs
    are moved into ``run_dir/.replaced-run`` (not deleted): :func:`drop_replaced` deletes them
    once the new run has a checkpoint, :func:`restore_replaced` puts them back if it fails
    first. Call it once all input has been validated."""
    path = check_run_dir(run_dir, resume, overwrite)
    if resume:
        return path
    holds_run = path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)
    if holds_run and overwrite:
        old = path / REPLACED
        if old.exists():  # an earlier replacement that never finished: the user asked to overwrite again
            shutil.rmtree(old)
        old.mkdir()
        for m in RUN_OUTPUTS:
            if (path / m).exists():
                (path / m).rename(old / m)
    path.mkdir(parents=True, exist_ok=True)
    return path


def drop_replaced(run_dir: str | os.PathLike) -> bool:
    """Delete the run that ``--overwrite`` moved aside; returns whether there was one."""
    old = Path(run_dir) / REPLACED
    if not old.is_dir():
        return False
    shutil.rmtree(old)
    return True


def restore_replaced(run_dir: str | os.PathLike) -> bool:
    """Put back the run that ``--overwrite`` moved aside, deleting what the failed new run wrote
    in its place; returns whether there was one."""
    path = Path(run_dir)
    old = path / REPLACED
    if not old.is_dir():
        return False
    for m in RUN_OUTPUTS:
        new = path / m
        if new.is_dir():
            shutil.rmtree(new)
        elif new.exists():
            new.unlink()
        if (old / m).exists():
            (old / m).rename(new)
    old.rmdir()
    return True


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a temporary directory next to ``final``; on success it replaces ``final`` in one
    rename, on error it is deleted, so ``final`` is never half-written."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make exports unreadable to colleagues
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temps(run_dir: str | os.PathLike) -> list[Path]:
    """Delete what interrupted atomic writes left in ``run_dir`` (``.NAME.tmp-*`` folders of
    :func:`atomic_dir`, ``.NAME.old-*`` of a replaced output, ``checkpoints/.latest.tmp-*``);
    returns what was removed. Call it once on rank 0 before a run writes."""
    path = Path(run_dir)
    stale = [*path.glob(".*.tmp-*"), *path.glob(".*.old-*"), *(path / "checkpoints").glob(".*.tmp-*")]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return stale

