"""scripts/round_openings.py: a finished round's pairs counted by kind, by whether the reward model had labels on
the prompt, and by which way they push each opening."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from round_openings import count_directions, main  # noqa: E402

from align.config import load_recipe, recipe_to_yaml  # noqa: E402
from align.data import load_prompts  # noqa: E402

DECLINE = "I'm sorry, but I can't help with that."
UNSURE = "I don't know."


def pair(row: dict, chosen: str, rejected: str) -> dict:
    return {"prompt": row["prompt"], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "chosen_score": 1.0, "rejected_score": 0.0}


def finished_round(tmp_path: Path, labelled_prompts: str) -> Path:
    """behaviour.yaml's run directory with one round: on every look-alike a decline chosen, on every harmful
    request "I don't know" rejected, on every fact two answers with neither opening."""
    recipe = load_recipe(REPO / "recipes" / "behaviour.yaml",
                         [f"reward.labelled_samples.prompts={labelled_prompts}"])
    run = tmp_path / "runs" / "behaviour"
    (run / "online_dpo" / "round-1").mkdir(parents=True)
    (run / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    pairs = []
    for row in load_prompts(recipe.online_dpo.dataset)[0]:
        kind = row["category"]
        if kind == "lookalike":
            pairs.append(pair(row, DECLINE, "Here is how."))
        elif kind == "harmful":
            pairs.append(pair(row, DECLINE, UNSURE))  # the first opening tells them apart
        elif kind == "answerable":
            pairs.append(pair(row, "Paris.", "Rome."))
    (run / "online_dpo" / "round-1" / "pairs.json").write_text(json.dumps({"log": {}, "pairs": pairs}))
    return run


def test_pairs_are_counted_by_kind_labels_and_direction(tmp_path, capsys):
    counts, openings = count_directions(finished_round(tmp_path, "bundled:prefs_train"))
    assert openings == ["I'm sorry, but", "I don't know"]
    tally = counts["round-1"]
    chose_decline = "chose \"I'm sorry, but\""
    # prefs_train_wide: the 310 labelled training prompts (60 look-alikes) and 72 look-alikes without labels
    assert tally[("lookalike", True, chose_decline)] == 60
    assert tally[("lookalike", False, chose_decline)] == 72
    assert tally[("harmful", True, chose_decline)] == 60
    assert tally[("answerable", True, "neither")] == 120
    assert sum(tally.values()) == 312
    main_args = sys.argv
    sys.argv = ["round_openings.py", str(tmp_path / "runs" / "behaviour")]
    try:
        main()
    finally:
        sys.argv = main_args
    out = capsys.readouterr().out
    assert "round-1: 312 pairs" in out
    assert "lookalike | no | 72 | 0 | 0 | 0 | 0" in out


def test_labelling_the_rounds_prompts_leaves_none_unlabelled(tmp_path):
    tally = count_directions(finished_round(tmp_path, "bundled:prefs_train_wide"))[0]["round-1"]
    assert not any(not labelled for _, labelled, _ in tally)


def test_a_run_without_a_round_is_refused(tmp_path):
    run = finished_round(tmp_path, "bundled:prefs_train")
    (run / "online_dpo" / "round-1" / "pairs.json").unlink()
    with pytest.raises(SystemExit, match="no finished online round"):
        count_directions(run)
