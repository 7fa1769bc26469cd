"""Benchmarks through EleutherAI's lm-evaluation-harness (``pip install spikelm[eval]``).

:func:`run_harness` loads a saved model (spikelm or any HF causal LM) the way ``spikelm eval``
does, wraps the loaded model object in the harness's HF model (``lm_eval.models.huggingface.HFLM``;
no remote code: importing spikelm registers its classes) and runs ``lm_eval.simple_evaluate`` on
the named tasks (the harness's own, or YAML tasks in ``include_path``). :func:`write_results`
writes its JSON (``lm_eval_results.json``) and :func:`results_table` gives its table.

An exported directory (with ``auto_map``) also runs with the harness's own command line, without
spikelm: ``lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True --tasks ...``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

RESULTS_FILE = "lm_eval_results.json"
"""Name of the harness's JSON written by ``spikelm eval --tasks``."""
INSTALL_HINT = "pip install spikelm[eval]"


class HarnessMissingError(ImportError):
    """lm-evaluation-harness (``lm_eval``) is not installed; the message names ``pip install spikelm[eval]``."""


def _lm_eval():
    """The ``lm_eval`` module. Raises :class:`HarnessMissingError` when it is not installed."""
    try:
        import lm_eval
        import lm_eval.models.huggingface
    except ImportError as e:
        raise HarnessMissingError(f"--tasks needs lm-evaluation-harness, which is not installed ({e}): "
                                  f"{INSTALL_HINT}") from None
    return lm_eval


def _paths(include_path) -> list[str]:
    paths = [] if include_path is None else [include_path] if isinstance(include_path, (str, Path)) else include_path
    for p in paths:
        if not Path(p).is_dir():
            raise FileNotFoundError(f"--include-path {p} is not a folder of task YAML files")
    return [str(p) for p in paths]


def check_available(include_path: str | Path | list[str | Path] | None = None) -> None:
    """Raise :class:`HarnessMissingError` when lm_eval is not installed, FileNotFoundError when an
    ``include_path`` folder does not exist (cheap: indexes no task)."""
    _lm_eval()
    _paths(include_path)


def task_manager(include_path: str | Path | list[str | Path] | None = None, tasks: list[str] | None = None):
    """The harness's ``TaskManager`` over its own tasks and the YAML task folders ``include_path``.

    With ``tasks``: when the ``include_path`` folders alone define (and load) all of them, a
    manager of those folders only (indexing the harness's ~15k built-in YAML files takes ~20 s).

    Raises:
        HarnessMissingError: lm_eval is not installed.
        FileNotFoundError: an ``include_path`` folder does not exist.
    """
    _lm_eval()
    from lm_eval.tasks import TaskManager

    paths = _paths(include_path)
    if paths and tasks:
        local = TaskManager(include_path=paths, include_defaults=False)
        try:
            if set(tasks) <= set(local.match_tasks(tasks)):
                local.load(tasks)
                return local
        except (KeyError, ValueError, TypeError, FileNotFoundError) as e:  # e.g. a local group of built-in tasks
            logging.getLogger(__name__).debug("local tasks need the full index: %s", e)
    return TaskManager(include_path=paths or None)


def check_tasks(tasks: list[str], manager) -> None:
    """Raise ValueError naming the tasks (names or glob patterns) ``manager`` does not know."""
    known = set(manager.match_tasks(tasks))
    missing = [t for t in tasks if t not in known and not any(ch in t for ch in "*?[")]
    missing += [t for t in tasks if any(ch in t for ch in "*?[") and not manager.match_tasks([t])]
    if missing:
        raise ValueError(f"unknown lm-eval task {', '.join(missing)}: not among the harness's "
                         f"{len(manager.all_tasks)} tasks, groups and tags (lm_eval ls tasks lists them); a task of "
                         "your own goes in a YAML file under --include-path DIR")


def run_harness(model_dir: str | Path, tasks: list[str], num_fewshot: int | None = None,
                limit: float | None = None, include_path: str | Path | list[str | Path] | None = None,
                batch_size: int = 1, device: str | None = None, config_overrides: dict | None = None,
                bootstrap_iters: int = 100000, log_samples: bool = False, model=None, tokenizer=None) -> dict:
    """Run lm-evaluation-harness tasks on a saved model (or on a loaded ``model`` + ``tokenizer``).

    Args:
        model_dir: a directory with ``config.json``, weights and the tokenizer, or a Hub model id
            (spikelm or any HF causal LM, loaded with :func:`spikelm.hub.ids.load_causal_lm`).
        tasks: harness task, group or tag names (glob patterns allowed).
        num_fewshot: few-shot examples per prompt (default: each task's own).
        limit: at most this many documents per task (a float < 1: that fraction), or all.
        include_path: folder(s) of extra task YAML files (``TaskManager(include_path=...)``).
        batch_size: requests per forward call.
        device: torch device (default cuda when available).
        config_overrides: config fields replaced at load time (as ``spikelm eval --override``).
        bootstrap_iters: bootstrap resamples for the stderr of metrics without a closed form
            (0 skips them).
        log_samples: keep the per-document requests and responses (``"samples"``).
        model, tokenizer: an already loaded ``PreTrainedModel`` (causal LM) and its tokenizer,
            used instead of loading ``model_dir`` (then only named in the results).
    Returns:
        The JSON-able dict of ``lm_eval.simple_evaluate``: ``results`` ({task: {"acc,none": ...,
        "acc_stderr,none": ...}}), ``groups``, ``configs``, ``versions``, ``n-shot``,
        ``higher_is_better``, ``n-samples``, ``config`` (model named by ``model_dir``), and
        ``samples`` ({task: [per-document dicts]}) when ``log_samples``.
    Raises:
        HarnessMissingError: lm_eval is not installed.
        ValueError: an unknown task (:func:`check_tasks`), no task, ``batch_size < 1``, an override
            of a field the model's config does not have.
        FileNotFoundError: a missing model directory / unreachable Hub id / tokenizer, or a
            missing ``include_path`` folder.
    """
    lm_eval = _lm_eval()
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import handle_non_serializable

    tasks = [t.strip() for t in tasks if t.strip()]
    if not tasks:
        raise ValueError("--tasks needs at least one task name")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    manager = task_manager(include_path, tasks)
    check_tasks(tasks, manager)
    if model is None:
        from .perplexity import load_model

        model, tokenizer = load_model(model_dir, config_overrides, device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size,
              max_length=_context_length(model))
    with torch.no_grad():
        res = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                      task_manager=manager, bootstrap_iters=bootstrap_iters,
                                      log_samples=log_samples)
    res = json.loads(json.dumps(res, default=handle_non_serializable))
    res.setdefault("config", {})["model"] = str(model_dir)
    res["config"]["model_type"] = getattr(model.config, "model_type", None)
    return res


def _context_length(model) -> int | None:
    """The model's context length from its config (``max_position_embeddings``), or None."""
    return getattr(model.config, "max_position_embeddings", None)


def results_table(res: dict) -> str:
    """The harness's results table (``lm_eval.utils.make_table``), and its groups table when there are groups.
    Raises HarnessMissingError when lm_eval is not installed."""
    _lm_eval()
    from lm_eval.utils import make_table

    out = make_table(res)
    if res.get("groups"):
        out += "\n" + make_table(res, "groups")
    return out


def write_results(res: dict, out_dir: str | Path) -> Path:
    """Write ``res`` (without ``samples``) as ``out_dir/lm_eval_results.json``; returns its path.
    Raises OSError when ``out_dir`` cannot be created or written."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / RESULTS_FILE
    path.write_text(json.dumps({k: v for k, v in res.items() if k != "samples"}, indent=2, sort_keys=True) + "\n")
    return path
