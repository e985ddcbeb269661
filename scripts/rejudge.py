"""Judge a finished run's held-out answers again, with the eval judges as the code has them now: a judge's marker
lists change, and every recorded run can be read by the new rule without generating anything again.

    python scripts/rejudge.py runs/behaviour-s46                                # a run directory
    python scripts/rejudge.py docs/results/behaviour-s46-2026-12-06.json        # a record with its answers file
    python scripts/rejudge.py docs/results/behaviour-s46-2026-12-06.json \
        --out docs/results/behaviour-s46-2026-12-06.rejudged.json                 # and keep the new verdicts

The answers are the eval stage's (RUN/eval/samples.jsonl, or the `.answers.jsonl` that scripts/record_run.py
writes beside a record); the prompts' answer keys and kinds come from the run's eval dataset. Prints the eval
stage's gold-judge summary; `--out` writes it as JSON with the commit whose judges gave it, so the README can cite
a re-judged figure the way it cites a run's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ANSWER_SUFFIX = "_answer"
MODELS = ("policy", "sft", "base")  # the eval stage's answer columns, final policy first


def answers_path(record: Path) -> Path:
    """Where scripts/record_run.py keeps a record's held-out answers."""
    return record.with_suffix(".answers.jsonl")


def load_run(path: Path) -> tuple[dict, list[dict]]:
    """(resolved recipe tree, answer rows) of a run directory or of a record with its answers file."""
    if path.is_dir():
        if not (path / "recipe.yaml").is_file():
            raise SystemExit(f"{path}: not a run directory (no recipe.yaml)")
        recipe, answers = yaml.safe_load((path / "recipe.yaml").read_text()), path / "eval" / "samples.jsonl"
    else:
        recipe, answers = json.loads(path.read_text())["recipe"], answers_path(path)
    if not answers.is_file():
        raise SystemExit(f"{answers}: no held-out answers to judge (the run has no finished eval stage, or its "
                         f"record was written without them)")
    rows = [json.loads(line) for line in answers.read_text().splitlines() if line.strip()]
    return recipe, rows


def rejudge(recipe_tree: dict, rows: list[dict], where: str = "<answers>") -> dict:
    """The eval stage's gold comparison of `rows` (prompt and MODEL_answer per held-out prompt)."""
    from align.config import parse_recipe
    from align.data import load_prompts
    from align.stages.evaluate import judge_answers

    recipe = parse_recipe(recipe_tree, where)
    if not recipe.eval.judges:
        raise SystemExit(f"{where}: the recipe's eval lists no judges")
    prompt_rows = load_prompts(recipe.eval.dataset)[0][: recipe.eval.max_prompts]
    if len(prompt_rows) != len(rows) or any(r["prompt"] != a["prompt"] for r, a in zip(prompt_rows, rows)):
        raise SystemExit(f"{where}: its {len(rows)} answers are not to the {len(prompt_rows)} prompts of "
                         f"{recipe.eval.dataset} in order; was the dataset regenerated since the run?")
    texts = {name: [a[name + ANSWER_SUFFIX] for a in rows] for name in MODELS if name + ANSWER_SUFFIX in rows[0]}
    return judge_answers(recipe, prompt_rows, texts)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory (runs/NAME) or a record (docs/results/*.json)")
    parser.add_argument("--out", type=Path, help="also write the verdicts here as JSON (docs/results/*.rejudged.json)")
    args = parser.parse_args()
    from align.eval_metrics import gold_lines

    recipe, rows = load_run(args.run)
    print(f"{args.run}: {len(rows)} held-out answers per model, judged again", file=sys.stderr)
    gold = rejudge(recipe, rows, str(args.run))
    print("\n".join(gold_lines(gold)))
    if args.out:
        from record_run import provenance, write_record

        write_record({**provenance(" ".join(["python", *sys.argv])), "rejudged": str(args.run), "gold": gold},
                     args.out)


if __name__ == "__main__":
    main()
