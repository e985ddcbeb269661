"""Run directories describe themselves: runs/<name>/ holds the resolved recipe and library versions, and each
runs/<name>/<stage>/ holds its outputs, metrics.jsonl and a stage.json written last (its presence = finished).

Directories that must never look complete while half-written (adapters, exports) are written to a temporary
sibling and renamed into place.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path

import yaml

from align.config import Recipe, RecipeError, parse_recipe, recipe_to_yaml

STAGE_FILE = "stage.json"
LIBRARIES = ("align", "torch", "transformers", "trl", "peft", "datasets", "bitsandbytes", "accelerate", "gguf")


def versions() -> dict:
    import torch

    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    from align.models import cpu_capability

    out["cpu"] = cpu_capability()  # whether `dtype: auto` could take bf16 on this CPU
    return out


def run_dir(recipe: Recipe) -> Path:
    return Path(recipe.output_root) / recipe.name


def stage_dir(recipe: Recipe, stage: str) -> Path:
    return run_dir(recipe) / stage


def is_finished(directory: Path) -> bool:
    return (directory / STAGE_FILE).is_file()


def read_stage(directory: Path) -> dict:
    return json.loads((directory / STAGE_FILE).read_text())


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a fully written directory into place; an older one is kept aside, never deleted blind."""
    if target.exists():
        aside = target.with_name(f"{target.name}.old-{int(time.time())}")
        os.replace(target, aside)
        os.replace(tmp, target)
        shutil.rmtree(aside)
    else:
        os.replace(tmp, target)


def temp_dir_for(target: Path) -> Path:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def stage_fingerprint(recipe: Recipe, stage: str) -> dict:
    """The parts of the recipe a stage's result depends on; a change means the old result is stale."""
    data = recipe.model_dump(mode="json")
    keys = ["model", "quantization", "lora", "seed", stage]
    return {k: data.get(k) for k in keys}


def finished_with_recipe(directory: Path, recipe: Recipe, stage: str) -> bool:
    """Whether the finished stage in `directory` was made with what `recipe` now says for it. Its stored recipe is
    also read again with today's fields, so a knob added to align since, left at its default, changes nothing."""
    current = stage_fingerprint(recipe, stage)
    if read_stage(directory).get("fingerprint") == current:
        return True
    try:
        then = load_run_recipe(directory)
    except (OSError, yaml.YAMLError, RecipeError):
        return False
    return stage_fingerprint(then, stage) == current


def finish_stage(directory: Path, recipe: Recipe, stage: str, metrics: dict, seconds: float, inputs: dict,
                 resources: dict | None = None) -> dict:
    record = {
        "stage": stage,
        "seconds": round(seconds, 1),
        "resources": resources or {},  # peak memory and wall time (align/resources.py)
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {k: str(v) for k, v in inputs.items()},
        "metrics": metrics,
        "versions": versions(),
        "fingerprint": stage_fingerprint(recipe, stage),
    }
    write_text_atomic(directory / "recipe.yaml", recipe_to_yaml(recipe))
    write_json_atomic(directory / STAGE_FILE, record)  # last: its presence marks the stage finished
    return record


def load_run_recipe(run: Path) -> Recipe:
    """The resolved recipe a run was made with; later commands need nothing but the run directory."""
    path = Path(run) / "recipe.yaml"
    if not path.is_file():
        raise RecipeError(f"{run}: not a run directory (no recipe.yaml); runs are made by `align run RECIPE`")
    return parse_recipe(yaml.safe_load(path.read_text()), str(path))


def trim_log(path: Path, step: int) -> None:
    """Keep the log lines of steps up to `step` (a resumed run redoes the later ones). A line cut off by a kill
    and a finished run's closing summary (train_runtime) are dropped too: the resumed run writes its own."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("step", 0) <= step and "train_runtime" not in row:
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a run's JSON-lines file (metrics.jsonl, samples.jsonl); none when it is not there yet."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
