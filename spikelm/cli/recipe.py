"""Recipes on the command line: a YAML file or shipped name plus ``--section.key value``
overrides, parsed by jsonargparse against the typed :class:`spikelm.train.config.Recipe`."""
from __future__ import annotations

import re
import typing
from pathlib import Path

from ..recipes import recipe_path, shipped_recipes
from .errors import CLIError

DEFAULT_RECIPE = "shakespeare"

__all__ = ["DEFAULT_RECIPE", "load_recipe", "recipe_parser", "resolve_recipe", "shipped_recipes"]


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe path: an existing file, or a shipped recipe by name. Raises CLIError otherwise."""
    try:
        return recipe_path(name_or_path)
    except FileNotFoundError as e:
        raise CLIError(str(e)) from None


def recipe_parser():
    """jsonargparse parser of a :class:`~spikelm.train.config.Recipe` (YAML via ``--config``)."""
    from jsonargparse import ArgumentParser

    from ..train.config import Recipe

    p = ArgumentParser(prog="spikelm train", exit_on_error=False, allow_abbrev=False,
                       description="Train a spiking language model from a recipe.")
    p.add_argument("--config", action="config", help="recipe YAML")
    p.add_class_arguments(Recipe, nested_key=None, as_group=False)
    return p


def _literal_values(tp) -> tuple[list, bool]:
    """``(values, in_a_list)``: the values of the ``Literal`` types inside a field's type
    (``Literal[...] | list[Literal[...]] | None``), and whether a list of them is accepted."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Literal:
        return list(args), False
    values, listed = [], typing.get_origin(tp) is list
    for a in args:
        v, inner = _literal_values(a)
        values += [x for x in v if x not in values]
        listed = listed or inner
    return values, listed


def _parse_error(path: Path, e: BaseException) -> str:
    """One line for a jsonargparse error: an unknown key lists the section's accepted keys; a
    value outside an enumerated key's ``Literal`` lists the accepted values."""
    from dataclasses import fields

    from ..train import config

    sections = {"model": config.ModelConfig, "data": config.DataConfig, "optim": config.OptimConfig,
                "train": config.TrainConfig}
    msg = str(e).strip()
    m = re.search(r"Group '(\w+)' does not accept option '([\w.]+)'", msg) or \
        re.search(r"Key '(\w+)\.([\w.]+)' is not expected", msg) or \
        re.search(r"unrecognized arguments: --(\w+)\.([\w.]+)", msg)
    if m and m.group(1) in sections:
        names = [f.name for f in fields(sections[m.group(1)])]
        return f"bad recipe {path} or override: unknown key {m.group(1)}.{m.group(2)}; accepted {m.group(1)} keys: " \
               f"{', '.join(names)}"
    m = re.search(r'Parser key "(\w+)\.(\w+)"', msg)
    given = re.search(r"(?:Given|Got) value: (.*)", msg)
    if m and m.group(1) in sections:
        hints = typing.get_type_hints(sections[m.group(1)])
        values, listed = _literal_values(hints.get(m.group(2)))
        if values:
            shown = [str(v) for v in values]
            accepted = f"{', '.join(shown[:-1])} or {shown[-1]}" if len(shown) > 1 else shown[0]
            got = f", got {given.group(1).strip()}" if given else ""
            return f"{m.group(1)}.{m.group(2)} must be {accepted}{' (or a list of them)' if listed else ''}{got}"
    return f"bad recipe {path} or override: {' '.join(msg.split())}"


def load_recipe(recipe: str | None, overrides: list[str]):
    """Parse a recipe file plus ``--section.key value`` overrides into a validated ``Recipe``.

    Raises:
        CLIError: no such recipe, a key or value jsonargparse rejects (unknown keys list the
            accepted ones), or a value the sections' checks reject.
    """
    import warnings

    from jsonargparse import ArgumentError

    from ..train.config import DataConfig, ModelConfig, OptimConfig, Recipe, TrainConfig, validate_recipe

    path = resolve_recipe(recipe or DEFAULT_RECIPE)
    parser = recipe_parser()
    try:
        ns = parser.parse_args(["--config", str(path), *overrides])
    except (ArgumentError, SystemExit) as e:
        raise CLIError(_parse_error(path, e)) from None
    for name in ("model", "data", "optim", "train"):
        section = getattr(ns, name, None)
        if not hasattr(section, "as_dict"):
            raise CLIError(f"bad recipe {path}: section {name!r} must be a mapping of keys, got {section!r}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DeprecationWarning)
            r = Recipe(model=ModelConfig(**ns.model.as_dict()), data=DataConfig(**ns.data.as_dict()),
                       optim=OptimConfig(**ns.optim.as_dict()), train=TrainConfig(**ns.train.as_dict()))
        for w in caught:
            if issubclass(w.category, DeprecationWarning):
                print(f"spikelm: {path}: {w.message}", flush=True)
        validate_recipe(r)
    except ValueError as e:
        raise CLIError(str(e)) from e
    return r
