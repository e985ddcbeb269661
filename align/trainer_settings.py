"""The trl config each stage trains with: trl's defaults, align's (config.TRL_DEFAULTS and the stage table's
`trl_defaults`), then the recipe's keys; what differs from trl's defaults, and the record each stage keeps of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from align.config import RENAMED_TRL_KEYS, TRL_DEFAULTS, Recipe, RecipeError
from align.runs import write_json_atomic
from align.stages import STAGES

TRL_CONFIG_FILE = "trl_config.json"


def derived_from_recipe(recipe: Recipe, directory: Path) -> dict:
    """The settings align derives from the recipe rather than from a fixed default."""
    import torch

    from align.models import torch_dtype

    return {
        "output_dir": str(directory / "checkpoints"),
        "seed": recipe.seed,
        "data_seed": recipe.seed,
        "report_to": list(recipe.report_to) or "none",
        # bf16 autocast whenever the base is bf16: on GPU, and on CPUs with bf16 instructions (about 3x float32).
        "bf16": torch_dtype(recipe.model.dtype) == torch.bfloat16,
        "use_cpu": not torch.cuda.is_available(),
    }


def recipe_keys(recipe: Recipe, stage: str) -> dict:
    """The trl keys the recipe's stage section sets, under transformers' current names."""
    settings = dict(getattr(recipe, stage).trl_args)
    for old, new in RENAMED_TRL_KEYS.items():  # the recipe may use either name; transformers warns on the old
        if old in settings and new in settings:
            raise RecipeError(f"{stage}: {old} and {new} are one setting (the old and the new name); give one")
        if old in settings:
            settings[new] = settings.pop(old)
    return settings


def trl_config_class(stage: str):
    import trl

    return getattr(trl, STAGES[stage].trl_config)


def trl_args(recipe: Recipe, stage: str, directory: Path):
    """The stage's trl config. Built by the pipeline for every stage before the first one trains, so trl's own
    cross-field checks fail at start, not mid-run."""
    cls = trl_config_class(stage)
    settings = {**derived_from_recipe(recipe, directory), **TRL_DEFAULTS, **STAGES[stage].trl_defaults,
                **recipe_keys(recipe, stage)}
    try:
        return cls(**settings)
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{stage}: trl.{cls.__name__} rejects these settings: {err}") from None


def trainer_args(recipe: Recipe, stage: str, directory: Path):
    """trl_args for a stage about to train, with TensorBoard pointed at <stage>/tensorboard: transformers'
    TensorBoard callback takes its directory only from the environment (else ./runs/<date>), so this sets
    TENSORBOARD_LOGGING_DIR in this process."""
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(directory / "tensorboard")
    return trl_args(recipe, stage, directory)


def changed_from_trl_defaults(recipe: Recipe, stage: str, directory: Path) -> list[tuple[str, object, object, str]]:
    """[(key, value, trl's default, who set it: 'recipe' or 'align')] for every setting that differs from the trl
    config trl builds on this machine when nothing is set."""
    import dataclasses

    import torch

    args = trl_args(recipe, stage, directory)
    # use_cpu: without it trl's bf16 default refuses a machine with no GPU
    trl_own = trl_config_class(stage)(output_dir=args.output_dir, use_cpu=not torch.cuda.is_available())
    from_recipe = recipe_keys(recipe, stage)
    changed = []
    for field in dataclasses.fields(args):
        value, default = getattr(args, field.name), getattr(trl_own, field.name)
        # the old names of renamed settings mirror the new ones
        if field.init and field.name not in ("logging_dir", *RENAMED_TRL_KEYS) and value != default:
            changed.append((field.name, value, default, "recipe" if field.name in from_recipe else "align"))
    return changed


def record_trl_config(args, directory: Path) -> None:
    """Write the whole trl config a stage trains with beside its outputs (a finished run then says what batch
    size, learning rate and schedule it used)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / TRL_CONFIG_FILE, {"class": f"trl.{type(args).__name__}", **args.to_dict()})


def show(value) -> str:
    return json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
