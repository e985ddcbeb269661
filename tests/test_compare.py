"""`align eval`: two models compared on held-out prompts, by the reward model and by (simulated) people."""

from __future__ import annotations

import json

import pytest

from align.cli import main
from align.labelling.store import LabelStore
from align.pipeline import run_recipe


@pytest.fixture(scope="module")
def tiny_run(tiny_llama, tmp_path_factory):
    from align.config import parse_recipe
    from tests.conftest import tiny_recipe

    root = tmp_path_factory.mktemp("runs")
    run_recipe(parse_recipe(tiny_recipe(tiny_llama, root, ["sft", "reward", "dpo"])))
    return root / "tiny"


def test_eval_compares_a_run_with_its_sft_and_reads_human_labels(tiny_run, tiny_llama, tmp_path):
    assert main(["eval", str(tiny_run), "--max-prompts", "6", "--max-new-tokens", "6"]) == 0
    (directory,) = [d for d in tiny_run.glob("compare-*")]
    metrics = json.loads((directory / "eval" / "stage.json").read_text())["metrics"]
    assert metrics["policy"] == str(tiny_run) and metrics["baseline"] == str(tiny_run / "sft")
    assert sum(metrics["wins_ties_losses"]) == 6 and metrics["win_rate_ci_low"] <= metrics["win_rate"]
    assert metrics["kl_to_baseline"] >= 0
    assert (directory / "report.html").is_file()

    # --human queues the differing pairs; tiny random models mostly answer with nothing, so see below for labels.
    db = tmp_path / "labels.db"
    assert main(["eval", str(tiny_run), "--against", str(tiny_llama), "--max-prompts", "3", "--max-new-tokens", "4",
                 "--human", str(db), "--out", str(tmp_path / "vs-base")]) == 0
    metrics = json.loads((tmp_path / "vs-base" / "eval" / "stage.json").read_text())["metrics"]
    assert metrics["human_judgments"] == 0 and LabelStore(db).counts()["judgments"] == 0


@pytest.mark.parametrize("target, against", [("alpha-model", "zeta-model"), ("zeta-model", "alpha-model")])
def test_human_win_rate_is_read_back_from_the_labels(tmp_path, target, against):
    from align.compare_models import human_comparison

    db = tmp_path / "labels.db"
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(4)]
    answers = {"policy": [{"text": f"good {i}"} for i in range(4)],
               "baseline": [{"text": "same" if i == 3 else f"bad {i}"} for i in range(4)]}
    answers["policy"][3]["text"] = "same"  # identical answers are not queued
    assert human_comparison(str(db), prompts, answers, target, against) == {"human_win_rate": None,
                                                                           "human_judgments": 0}
    store = LabelStore(db)
    assert store.counts()["items"] == 3
    choices = iter(["target", "target", "tie"])
    while (shown := store.next_assignment("alice")) is not None:
        pick = next(choices)
        store.submit("alice", shown["item_id"], "tie" if pick == "tie" else ("A" if shown["model_a"] == target else "B"))
    again = human_comparison(str(db), prompts, answers, target, against)
    assert again == {"human_win_rate": pytest.approx(2.5 / 3), "human_judgments": 3}
    assert store.counts()["items"] == 3  # asking again queues nothing new


def test_eval_of_models_with_different_tokenizers_has_no_kl(tiny_run, tiny_gpt2, tmp_path):
    out = tmp_path / "cmp"
    assert main(["eval", str(tiny_run / "sft"), "--against", str(tiny_gpt2), "--reward", str(tiny_run),
                 "--max-prompts", "3", "--max-new-tokens", "5", "--out", str(out)]) == 0
    metrics = json.loads((out / "eval" / "stage.json").read_text())["metrics"]
    assert metrics["kl_to_baseline"] is None and metrics["prompts"] == 3
    assert main(["eval", str(tiny_gpt2), "--max-prompts", "3"]) == 2  # no run: needs --against
