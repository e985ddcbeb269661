"""The `align` command: run recipes, validate them, export and chat with the results.

    align run recipes/quickstart.yaml                 # every stage; finished stages are skipped on re-run
    align run recipes/quickstart.yaml sft.num_train_epochs=2 --from dpo
    align validate recipes/gpu/qwen2.5-1.5b.yaml      # no training, no downloads
    align export runs/quickstart && align chat runs/quickstart
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="align",
        description="Align chat models the ChatGPT/InstructGPT way: supervised fine-tuning, a reward model on "
        "preference pairs, DPO, and a merged export, all on LoRA adapters (4-bit QLoRA on GPU).",
        epilog="Start with: align run recipes/quickstart.yaml   (CPU, embedded model, about 15 minutes)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a recipe's stages", description="Run a recipe. Outputs go to "
                         "<output_root>/<name>/<stage>/; finished stages are skipped when you run it again.")
    run.add_argument("recipe", help="recipe YAML file, e.g. recipes/quickstart.yaml")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override recipe keys, e.g. dpo.beta=0.2")
    group = run.add_mutually_exclusive_group()
    group.add_argument("--only", metavar="STAGE", help="run just this stage (earlier ones must have finished)")
    group.add_argument("--from", dest="start", metavar="STAGE",
                       help="redo this stage and the ones after it (earlier results are moved aside, not deleted)")

    val = sub.add_parser("validate", help="check a recipe and its datasets without training or downloading")
    val.add_argument("recipe")
    val.add_argument("overrides", nargs="*", metavar="KEY=VALUE")

    sub.add_parser("ls", help="list the shipped recipes")

    exp = sub.add_parser("export", help="merge a run's final adapter into a full model (needs only the run dir)")
    exp.add_argument("run_dir", help="e.g. runs/quickstart")

    chat = sub.add_parser("chat", help="chat in the terminal with an exported model or a run directory")
    chat.add_argument("model", help="export dir (runs/NAME/export/model), run dir, or any HF model dir")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    chat.add_argument("--top-p", type=float, default=0.9)

    sub.add_parser("env", help="print library versions and the device")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_library_noise()
    from align.config import RecipeError
    from align.data import DataError
    from align.models import ModelError

    try:
        return COMMANDS[args.command](args)
    except (RecipeError, DataError, ModelError, FileNotFoundError) as err:
        print(f"align {args.command}: error: {err}", file=sys.stderr)
        return 2


def quiet_library_noise() -> None:
    """Keep the terminal for what the user needs: deprecation chatter from the libraries is not it."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
    # bitsandbytes looks for an optional kernels package on CPU and logs a warning when it is absent.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def cmd_run(args) -> int:
    from align.config import load_recipe
    from align.pipeline import run_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    check_datasets(recipe, recipe.stages)  # bad rows fail now, not after an hour of SFT
    run_recipe(recipe, only=args.only, start=args.start)
    return 0


def cmd_validate(args) -> int:
    from align.config import load_recipe
    from align.pipeline import plan

    recipe = load_recipe(args.recipe, args.overrides)
    print(f"{args.recipe}: recipe OK: '{recipe.name}', stages {' -> '.join(recipe.stages)}, "
          f"base {recipe.model.name_or_path}{' (4-bit)' if recipe.quantization.load_in_4bit else ''}")
    for line in check_datasets(recipe, recipe.stages, skip_hub=True):
        print("  " + line)
    for stage, action in plan(recipe):
        print(f"  {stage}: {'will run' if action == 'run' else 'finished earlier, will be skipped'}")
    return 0


def check_datasets(recipe, stages, skip_hub: bool = False) -> list[str]:
    """Read and check every dataset the stages use; returns one line per dataset."""
    from align.data import load_demonstrations, load_preferences

    lines = []
    for stage in stages:
        section = getattr(recipe, stage)
        if stage in ("sft", "reward", "dpo"):
            sources = [("dataset", section.dataset), ("eval_dataset", section.eval_dataset)]
        elif stage == "eval":
            sources = [("dataset", section.dataset)]
        else:
            continue
        for field, source in sources:
            if source is None:
                continue
            if source.hub and skip_hub:
                lines.append(f"{stage}.{field}: {source.describe()} (hub dataset: checked when the run loads it)")
                continue
            loader = load_demonstrations if stage == "sft" else load_preferences
            rows, where = loader(source)
            lines.append(f"{stage}.{field}: {len(rows)} valid rows from {where}")
    return lines


def cmd_ls(args) -> int:
    import yaml

    for path in sorted(RECIPES_DIR.rglob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        stages = " -> ".join(data.get("stages", []))
        print(f"{path.relative_to(RECIPES_DIR.parent)}\n    {data.get('description', '').strip()}\n    [{stages}]")
    return 0


def cmd_export(args) -> int:
    import time

    from align.runs import finish_stage, is_finished, load_run_recipe, stage_dir
    from align.stages import export

    run = Path(args.run_dir).resolve()
    # The run dir may have been moved, copied or renamed: read its stages from where it is now.
    recipe = load_run_recipe(run).model_copy(update={"output_root": str(run.parent), "name": run.name})
    inputs = {s: stage_dir(recipe, s) for s in ("sft", "dpo") if is_finished(stage_dir(recipe, s))}
    if not inputs:
        raise FileNotFoundError(f"{args.run_dir}: no finished sft or dpo stage to export")
    stages = [s for s in recipe.stages if s in inputs] + ["export"]
    recipe = recipe.model_copy(update={"stages": stages})
    out = stage_dir(recipe, "export")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    metrics = export.run(recipe, out, inputs)
    finish_stage(out, recipe, "export", metrics, time.time() - started, inputs)
    print(f"exported to {out / 'model'}")
    return 0


def cmd_chat(args) -> int:
    from align.chat import chat

    chat(args.model, args.system, args.max_new_tokens, args.temperature, args.top_p)
    return 0


def cmd_env(args) -> int:
    from align.runs import versions

    for key, value in versions().items():
        print(f"{key:>13}: {value}")
    return 0


COMMANDS = {
    "run": cmd_run, "validate": cmd_validate, "ls": cmd_ls, "export": cmd_export, "chat": cmd_chat, "env": cmd_env
}

if __name__ == "__main__":
    raise SystemExit(main())
