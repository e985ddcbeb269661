"""Python functions a recipe names as `module:function` or `path/to/file.py:function`: reward functions (and the
gold judges, which share their signature) and labellers (align/labeller.py).

A reward function follows trl's convention, so one function serves PPO, RLOO and GRPO alike:

    def my_reward(prompts, completions, **columns) -> list[float]

`prompts` are message lists, `completions` are [{"role": "assistant", "content": text}] lists, and `columns` holds
every other field of the prompt rows (e.g. a reference `answer`), one list entry per completion. Return one float
per completion (None counts as 0).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from pathlib import Path
from typing import Callable


class RewardFunctionError(ValueError):
    """A reward function that cannot be found, called, or whose output is not one number per completion."""


def load_reward_function(spec: str) -> Callable:
    """Import `module:function` (a dotted module on sys.path or the current directory) or `file.py:function`."""
    function = import_function(spec)
    params = inspect.signature(function).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_any and not {"prompts", "completions"} <= set(params):
        raise RewardFunctionError(
            f"reward function '{spec}': must accept prompts=..., completions=... (and dataset columns or **kwargs)"
        )
    return function


def import_function(spec: str) -> Callable:
    """The callable named by `module:function` or `file.py:function`, whatever its signature."""
    if ":" not in spec:
        raise RewardFunctionError(f"reward function '{spec}': expected 'module:function' or 'path/to/file.py:function'")
    module_name, _, function_name = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise RewardFunctionError(f"reward function '{spec}': file {path} not found")
            module_spec = importlib.util.spec_from_file_location(f"align_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # so a module next to the recipe is found as with python -m
            module = importlib.import_module(module_name)
    except RewardFunctionError:
        raise
    except Exception as err:  # the user's module failed to import: show why
        raise RewardFunctionError(f"reward function '{spec}': cannot import {module_name}: {err}") from err
    function = getattr(module, function_name, None)
    if not callable(function):
        raise RewardFunctionError(f"reward function '{spec}': {module_name} has no function '{function_name}'")
    return function


def call_reward_function(function: Callable, name: str, prompts: list[list[dict]], texts: list[str],
                         columns: dict[str, list]) -> list[float]:
    """One float per completion, checked."""
    completions = [[{"role": "assistant", "content": text}] for text in texts]
    params = inspect.signature(function).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    extra = columns if accepts_any else {k: v for k, v in columns.items() if k in params}
    scores = function(prompts=prompts, completions=completions, **extra)
    if not isinstance(scores, (list, tuple)) or len(scores) != len(texts):
        got = len(scores) if isinstance(scores, (list, tuple)) else type(scores).__name__
        raise RewardFunctionError(f"reward function '{name}' returned {got} values for {len(texts)} completions")
    out = []
    for i, score in enumerate(scores):
        try:
            value = 0.0 if score is None else float(score)  # numpy and 0-d tensor scalars convert too
        except (TypeError, ValueError):
            value = math.nan
        if isinstance(score, (str, bytes)) or not math.isfinite(value):
            raise RewardFunctionError(f"reward function '{name}': value {i} is {score!r}, expected a finite number")
        out.append(value)
    return out


def load_labeller(spec: str) -> Callable:
    """'module:function' or 'file.py:function', taking (prompt, text_a, text_b, *, row, rng, noise)."""
    function = import_function(spec)
    params = inspect.signature(function).parameters
    if not (any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            or {"row", "rng", "noise"} <= set(params)):
        raise RewardFunctionError(f"labeller '{spec}': must accept (prompt, text_a, text_b, *, row=..., rng=..., "
                                  "noise=...): noise is the recipe's share of labels to flip")
    return function
