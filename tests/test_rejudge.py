"""scripts/rejudge.py: a finished run's held-out answers judged again by the judges as they are now, from the run
directory or from the answers file scripts/record_run.py keeps beside a record."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from rejudge import load_run, main, rejudge  # noqa: E402
from record_run import write_answers  # noqa: E402

from align.config import load_recipe, recipe_to_yaml  # noqa: E402
from align.data import load_preferences  # noqa: E402

DECLINE = "I'm sorry, but I can't help with that."
PROMPTS = 24


def finished_run(tmp_path: Path) -> Path:
    """A run directory as the eval stage leaves it: the resolved recipe and samples.jsonl with scores beside the
    answers. The final policy answers with each held-out prompt's preferred answer, SFT declines everything."""
    recipe = load_recipe(REPO / "recipes" / "behaviour.yaml", [f"eval.max_prompts={PROMPTS}"])
    run = tmp_path / "runs" / "behaviour"
    (run / "eval").mkdir(parents=True)
    (run / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    rows = load_preferences(recipe.eval.dataset)[0][:PROMPTS]
    with (run / "eval" / "samples.jsonl").open("w") as fh:
        for row in rows:
            fh.write(json.dumps({"prompt": row["prompt"], "policy_answer": row["chosen"][0]["content"],
                                 "sft_answer": DECLINE, "base_answer": "", "policy_reward": 1.5,
                                 "sft_reward": -0.5, "policy_gold": 0.0}) + "\n")
    return run


def test_rejudging_a_run_gives_the_judges_verdicts_per_kind(tmp_path):
    recipe, rows = load_run(finished_run(tmp_path))
    gold = rejudge(recipe, rows)
    table = gold["categories"]["align.judges:gold"]
    assert {"answerable", "harmful", "lookalike", "unanswerable"} <= set(table)
    assert sum(t["n"] for t in table.values()) == PROMPTS
    # a decline passes only where the request is harmful; the preferred answers pass everywhere
    assert table["harmful"]["sft"] == 1.0
    assert table["answerable"]["sft"] == table["lookalike"]["sft"] == table["unanswerable"]["sft"] == 0.0
    assert all(t["online_dpo"] == 1.0 for t in table.values())
    assert all(t["base"] == 0.0 for t in table.values())  # empty answers
    assert gold["macro"]["align.judges:gold"]["rates"]["sft"] == pytest.approx(0.25)


def test_a_records_answers_file_judges_the_same_as_the_run(tmp_path):
    run = finished_run(tmp_path)
    record = tmp_path / "docs" / "results" / "behaviour-2026-12-06.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"recipe": yaml.safe_load((run / "recipe.yaml").read_text())}))
    answers = write_answers(run, record)
    assert answers == record.with_suffix(".answers.jsonl")
    kept = [json.loads(line) for line in answers.read_text().splitlines()]
    assert len(kept) == PROMPTS and set(kept[0]) == {"prompt", "policy_answer", "sft_answer", "base_answer"}
    assert rejudge(*load_run(record))["categories"] == rejudge(*load_run(run))["categories"]


def test_answers_to_other_prompts_are_refused(tmp_path):
    recipe, rows = load_run(finished_run(tmp_path))
    rows[3]["prompt"] = [{"role": "user", "content": "What is the capital of Atlantis?"}]
    with pytest.raises(SystemExit, match=f"its {PROMPTS} answers are not to the {PROMPTS} prompts"):
        rejudge(recipe, rows, "runs/behaviour")
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"recipe": recipe}))
    with pytest.raises(SystemExit, match="record.answers.jsonl: no held-out answers to judge"):
        load_run(record)
    with pytest.raises(SystemExit, match="not a run directory"):
        load_run(tmp_path)


def test_the_new_verdicts_are_written_with_the_commit_that_gave_them(tmp_path, monkeypatch, capsys):
    run = finished_run(tmp_path)
    out = tmp_path / "behaviour.rejudged.json"
    monkeypatch.setattr(sys, "argv", ["scripts/rejudge.py", str(run), "--out", str(out)])
    main()
    written = json.loads(out.read_text())
    assert written["rejudged"] == str(run) and len(written["commit"]) == 40
    assert written["gold"]["categories"] == rejudge(*load_run(run))["categories"]
    assert "macro average over categories" in capsys.readouterr().out
