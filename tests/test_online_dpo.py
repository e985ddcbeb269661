"""The online_dpo stage on tiny models: rounds of sample -> score -> pair -> DPO raise a toy reward that a toy
judge watches; finished rounds are skipped on re-run; and a proxy that rewards length, watched by a judge that wants brevity, is flagged as reward hacking."""

from __future__ import annotations

import json
import math

import pytest

from align.config import RecipeError, parse_recipe
from align.pipeline import run_recipe, summary
from tests.conftest import tiny_recipe
from tests.test_ppo import toy_gpt2  # noqa: F401  (a module fixture: a model with preferences RL can shift)

TOY = {
    "dataset": {"bundled": "sft", "limit": 32},
    "use_reward_model": False,
    "reward_functions": ["tests.toy_rewards:letter_e_fraction"],
    "rounds": 3, "prompts_per_round": 32, "samples_per_prompt": 4, "max_new_tokens": 8, "missing_eos_penalty": 0.0,
    "learning_rate": 1e-2, "num_train_epochs": 3, "per_device_train_batch_size": 8, "max_length": 256, "nll_weight": 0.0,
    "beta": 0.1, "kl_samples": 16,
}


def online_run(model_dir, root, **change):
    recipe = parse_recipe(tiny_recipe(model_dir, root, ["online_dpo"], online_dpo={**TOY, **change},
                                      eval={"judges": ["tests.toy_rewards:letter_e_fraction"]}))
    return recipe, run_recipe(recipe)


@pytest.mark.slow
def test_rounds_raise_the_reward_the_judge_watches(toy_gpt2, tmp_path):  # noqa: F811
    recipe, records = online_run(toy_gpt2, tmp_path)
    metrics = records["online_dpo"]["metrics"]
    log = metrics["log"]
    assert [row["policy"] for row in log] == ["start", "round-1", "round-2", "round-3"]
    assert metrics["rounds"] == 3 and metrics["pairs"] > 0 and all(row["round_pairs"] > 0 for row in log[:3])
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-4), "the first samples come from the starting policy"
    assert log[-1]["kl"] > log[0]["kl"] and all(math.isfinite(row["kl"]) for row in log)
    # the toy judge (here the same function as the reward: a toy) scores the policy's answers higher round by round
    assert log[-1]["gold_mean"] > log[0]["gold_mean"] + 0.05, [row["gold_mean"] for row in log]
    assert metrics["final_gold_mean"] == log[-1]["gold_mean"] and metrics["gold_judge"].endswith("letter_e_fraction")
    for row in log[:3]:
        assert {"train_loss", "chosen_logp_shift", "rejected_logp_shift"} <= set(row)
        assert row["chosen_logp_shift"] > row["rejected_logp_shift"], "DPO widened the margin"
    stage = tmp_path / "tiny" / "online_dpo"
    assert (stage / "adapter" / "adapter_model.safetensors").is_file()
    assert len((stage / "metrics.jsonl").read_text().splitlines()) == 4
    assert not (stage / "round-1" / "checkpoints").exists() and (stage / "round-1" / "samples.jsonl").is_file()
    assert "online_dpo round-3" in summary(recipe, records)

    # a re-run with round 3 and the final measurement undone redoes only those, from round 2's adapter
    import shutil

    for name in ("round-3", "round-4"):
        shutil.rmtree(stage / name)
    (stage / "stage.json").unlink()
    again = run_recipe(recipe)["online_dpo"]["metrics"]["log"]
    assert [row["reward_mean"] for row in again[:3]] == [row["reward_mean"] for row in log[:3]]

    # `align export RUN_DIR` merges the run's final policy, the online rounds' adapter (not SFT's or none)
    from align.cli import main
    from align.runs import read_stage

    assert main(["export", str(tmp_path / "tiny")]) == 0
    assert read_stage(tmp_path / "tiny" / "export")["metrics"]["merged_from"].endswith("online_dpo/adapter")


def test_nll_weight_becomes_trls_sft_loss_term_and_clashes_are_refused(toy_gpt2, tmp_path):  # noqa: F811
    from align.trainer_settings import trl_args

    recipe = parse_recipe(tiny_recipe(toy_gpt2, tmp_path, ["online_dpo"], online_dpo={**TOY, "nll_weight": 0.5}))
    args = trl_args(recipe, "online_dpo", tmp_path)
    assert list(args.loss_type) == ["sigmoid", "sft"] and list(args.loss_weights) == [1.0, 0.5]
    with pytest.raises(RecipeError, match="nll_weight"):
        parse_recipe(tiny_recipe(toy_gpt2, tmp_path, ["online_dpo"], online_dpo={**TOY, "nll_weight": 0.5, "loss_type": ["ipo"]}))


@pytest.mark.slow
def test_a_length_proxy_that_hurts_the_gold_judge_is_called_reward_hacking(toy_gpt2, tmp_path):  # noqa: F811
    ppo = {"dataset": {"bundled": "sft", "limit": 64}, "use_reward_model": False,
           "reward_functions": ["tests.toy_rewards:answer_length"], "missing_eos": "keep",
           "steps": 24, "rollout_batch_size": 32, "mini_batch_size": 8, "ppo_epochs": 4, "max_new_tokens": 8,
           "learning_rate": 1e-3, "lr_schedule": "constant", "kl_coef": 0.01, "save_steps": 24}
    recipe = parse_recipe(tiny_recipe(toy_gpt2, tmp_path, ["ppo"], ppo=ppo,
                                      eval={"judges": ["tests.toy_rewards:brevity"]}))
    records = run_recipe(recipe)
    rows = [json.loads(line) for line in (tmp_path / "tiny" / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert all("gold_mean" in row for row in rows)
    assert rows[-1]["reward_mean"] > rows[0]["reward_mean"] and rows[-1]["gold_mean"] < rows[0]["gold_mean"]
    text = summary(recipe, records)
    assert "ppo: reward hacking: from step" in text, text
    report = (tmp_path / "tiny" / "report.html").read_text()
    assert "ppo-proxy-vs-gold.png" in report and "reward hacking" in report


def test_people_judge_a_round_in_the_label_database_and_the_next_run_continues(toy_gpt2, tmp_path,  # noqa: F811
                                                                                 capsys):
    from align.cli import main
    from align.labelling.store import LabelStore
    from align.stages.online_dpo import LabelsPending

    db = tmp_path / "labels.db"
    people = {**TOY, "use_reward_model": False, "reward_functions": [], "label_db": str(db), "rounds": 1,
              "prompts_per_round": 8, "labels_needed": 6}
    recipe = parse_recipe(tiny_recipe(toy_gpt2, tmp_path / "runs", ["online_dpo"], online_dpo=people))
    with pytest.raises(LabelsPending, match=r"0 of 8 pairs labelled .* 6 needed"):
        run_recipe(recipe)
    store = LabelStore(db)
    assert store.counts()["items"] == 8
    # a person prefers the answer with more e's, for 6 of the 8 pairs
    for _ in range(6):
        shown = store.next_assignment("alice")
        a, b = shown["text_a"], shown["text_b"]
        store.submit("alice", shown["item_id"], "A" if a.count("e") >= b.count("e") else "B")
    store.close()
    records = run_recipe(recipe)  # the same command again: round 1 trains on the labels, nothing is resampled
    row = records["online_dpo"]["metrics"]["log"][0]
    assert row["labelled_by"] == "people (alice)" and row["labelled_items"] == 6 and 1 <= row["round_pairs"] <= 6
    assert (tmp_path / "runs" / "tiny" / "online_dpo" / "adapter" / "adapter_model.safetensors").is_file()

    # through the CLI, waiting for labels is exit code 3 with the instructions, not an error
    waiting = tmp_path / "waiting.yaml"
    import yaml

    waiting.write_text(yaml.safe_dump(tiny_recipe(toy_gpt2, tmp_path / "other", ["online_dpo"],
                                                  online_dpo={**people, "label_db": str(tmp_path / "new.db")})))
    # (an override after --from is still an override)
    capsys.readouterr()
    assert main(["run", str(waiting), "--from", "online_dpo", "online_dpo.labels_needed=2"]) == 3
    printed = capsys.readouterr().out
    assert "align run: waiting for labels" in printed and "0 of 8 pairs labelled" in printed
    assert "2 needed" in printed


@pytest.mark.parametrize("labels_per_pair", [1, 2])
def test_a_labeller_judges_each_rounds_pairs_in_the_label_database_and_the_run_goes_on(toy_gpt2, tmp_path,  # noqa: F811
                                                                                        labels_per_pair):
    from align.labelling.store import LabelStore

    root = tmp_path / "runs"
    db = root / "tiny" / "labels.db"
    db.parent.mkdir(parents=True)
    waiting = LabelStore(db)  # a pair people queued earlier: the labeller judges the round's pairs only
    waiting.add_items([{"id": "theirs", "prompt": "Hi?", "response_1": "Hello.", "response_2": "Hey."}], source="people")
    waiting.close()
    labelled = {**TOY, "dataset": {"bundled": "prefs_train", "limit": 16}, "use_reward_model": False,
                "reward_functions": ["tests.toy_rewards:letter_e_on_odd_prompts"],  # picks the pair to label
                "labeller": "tests.toy_rewards:e_labeller_on_odd_prompts", "labeller_noise": 0.0,
                "rounds": 1, "prompts_per_round": 16, "openings": ["Eee"], "balance_openings": "repeat",
                "labels_per_pair": labels_per_pair}
    recipe = parse_recipe(tiny_recipe(toy_gpt2, root, ["online_dpo"], online_dpo=labelled))
    records = run_recipe(recipe)  # no stop for labels: the labeller gave them
    row = records["online_dpo"]["metrics"]["log"][0]
    times = ", 2 labels per pair" if labels_per_pair == 2 else ""
    assert row["labelled_by"] == f"simulated-labeller (tests.toy_rewards:e_labeller_on_odd_prompts, noise 0{times})"
    stage = root / "tiny" / "online_dpo"
    queued = json.loads((stage / "round-1" / "queued.json").read_text())["item_ids"]
    store = LabelStore(db)
    judgments = store.judgments()
    items = [store.item(i) for i in queued]
    store.close()
    assert row["labelled_items"] == len(queued) > 0 and row["labeller_labelled"] == labels_per_pair * len(queued)
    assert {j["item_id"] for j in judgments} == set(queued), "the earlier pair waits for people, unjudged"
    names = ["simulated-labeller", "simulated-labeller-2"][:labels_per_pair]
    assert sorted(j["annotator"] for j in judgments) == sorted(names * len(queued)), "each pair judged by each"
    assert row.get("labeller_majority_flipped") == (0 if labels_per_pair > 1 else None)  # no noise, no flips
    assert all({"category", "answer"} <= set(item["extra"]) for item in items), "each pair carries its prompt row"
    # labelled, then balanced by openings: as many pairs choosing an "Eee" reply as rejecting one
    pairs = json.loads((stage / "round-1" / "pairs.json").read_text())["pairs"]
    starts = [[p[side][0]["content"].startswith("Eee") for side in ("chosen", "rejected")] for p in pairs]
    assert sum(c and not r for c, r in starts) == sum(r and not c for c, r in starts) > 0
    assert len(pairs) == row["round_pairs"] == row["labelled_pairs"] + row["round_repeated_for_balance"]
    assert (stage / "adapter" / "adapter_model.safetensors").is_file()
    signals = records["online_dpo"]["metrics"]
    assert signals["pairs"] == len(pairs)


def test_opening_pairs_add_each_prompts_opened_answer_against_a_free_one(toy_gpt2, tmp_path):  # noqa: F811
    settings = {**TOY, "dataset": {"bundled": "prefs_train", "limit": 8}, "use_reward_model": False,
                "reward_functions": ["tests.toy_rewards:letter_e_on_odd_prompts"], "rounds": 1,
                "prompts_per_round": 8, "openings": ["Eee"], "opening_pairs": True}
    recipe = parse_recipe(tiny_recipe(toy_gpt2, tmp_path / "runs", ["online_dpo"], online_dpo=settings))
    row = run_recipe(recipe)["online_dpo"]["metrics"]["log"][0]
    pairs = json.loads((tmp_path / "runs" / "tiny" / "online_dpo" / "round-1" / "pairs.json").read_text())["pairs"]
    assert len(pairs) == row["round_pairs"] > row["round_opening_pairs"] > 0
    added = pairs[-row["round_opening_pairs"]:]  # after the best-vs-worst pairs (nothing balanced here)
    assert all(p["chosen"][0]["content"].startswith("Eee") != p["rejected"][0]["content"].startswith("Eee")
               for p in added), "each added pair is an opened answer against a free one"
    texts = [(json.dumps(p["prompt"]), p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs]
    assert len(set(texts)) == len(texts), "no pair twice"


@pytest.mark.fault("bad input")
@pytest.mark.parametrize("change, message", [
    ({"stages": ["sft", "online_dpo"], "online_dpo": {**TOY, "use_reward_model": True, "reward_functions": []}},
     "add 'reward' to stages"),
    ({"stages": ["online_dpo"], "online_dpo": {**TOY, "reward_functions": []}}, "no judge"),
    ({"stages": ["online_dpo"], "online_dpo": {**TOY, "samples_per_prompt": 1}}, "samples_per_prompt"),
    ({"stages": ["online_dpo"], "online_dpo": {**TOY, "betta": 0.1}}, "did you mean beta"),
    ({"stages": ["online_dpo"], "online_dpo": TOY, "eval": {"judges": ["align.judges:no_such_judge"]}},
     "has no function 'no_such_judge'"),
    ({"stages": ["sft", "reward"], "reward": {"dataset": "bundled:prefs_train",
                                              "judge_labelled_pairs": {"judge": "align.judges:gold"}}},
     "judge_labelled_pairs.prompts"),
    ({"stages": ["online_dpo"], "online_dpo": {**TOY, "openings": ["Sure", ""]}}, "opening 2 is blank"),
    ({"stages": ["online_dpo"], "online_dpo": {**TOY, "openings": ["Sure"], "use_vllm": True}},
     "openings are continued by align's own decode loop"),
    ({"stages": ["online_dpo"], "online_dpo": {**TOY, "balance_openings": "drop"}}, "list openings too"),
    ({"stages": ["online_dpo"], "online_dpo": {**TOY, "opening_pairs": True}}, "opening_pairs pairs each prompt"),
    ({"stages": ["online_dpo"], "online_dpo": {**TOY, "labeller": "align.labeller:no_such_labeller"}},
     "has no function 'no_such_labeller'"),
    ({"stages": ["online_dpo"], "online_dpo": {**TOY, "labeller": "tests.toy_rewards:says_expected"}},
     "must accept"),
    ({"stages": ["online_dpo"], "online_dpo": {**TOY, "openings": ["Sure"], "balance_openings": True}},
     "balance_openings"),
    ({"stages": ["online_dpo"], "online_dpo": {**TOY, "labels_per_pair": 3}}, "labels_per_pair is how many times"),
    ({"stages": ["online_dpo"], "online_dpo": {**TOY, "labeller": "align.labeller:simulated", "labels_per_pair": 6}},
     "labels_per_pair"),
])
def test_bad_online_settings_fail_at_load_time(toy_gpt2, tmp_path, change, message):  # noqa: F811
    recipe = tiny_recipe(toy_gpt2, tmp_path, change.pop("stages"))
    for key, value in change.items():
        recipe[key] = value
    with pytest.raises(RecipeError, match=message):
        parse_recipe(recipe)


@pytest.mark.slow
def test_relabelling_retrains_the_reward_model_on_each_rounds_answers(tiny_llama, tmp_path):
    online = {**TOY, "use_reward_model": True, "reward_functions": [], "rounds": 1, "prompts_per_round": 8,
              "relabel_with": "tests.toy_rewards:letter_e_fraction", "require_trusted_reward_model": False,
              "max_steps": 2}
    recipe = parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["reward", "online_dpo"], online_dpo=online))
    records = run_recipe(recipe)
    first = records["online_dpo"]["metrics"]["log"][0]
    assert first["relabelled_pairs"] > 0 and math.isfinite(first["relabel_loss"])
    stage = tmp_path / "tiny" / "online_dpo"
    assert (stage / "round-1" / "reward_adapter" / "adapter_model.safetensors").is_file()
    from safetensors.torch import load_file

    before = load_file(tmp_path / "tiny" / "reward" / "adapter" / "adapter_model.safetensors")
    after = load_file(stage / "round-1" / "reward_adapter" / "adapter_model.safetensors")
    assert any(not (before[k] == after[k]).all() for k in before), "the reward model learned this round's pairs"


def test_openings_add_candidates_that_start_with_them(toy_gpt2, tmp_path):  # noqa: F811
    """Each opening adds one candidate per prompt continuing it, scored and paired with the policy's own."""
    recipe, records = online_run(toy_gpt2, tmp_path, rounds=1, prompts_per_round=8, samples_per_prompt=2,
                                 openings=["eee"], num_train_epochs=1)
    rows = [json.loads(line) for line in (tmp_path / "tiny" / "online_dpo" / "round-1" / "samples.jsonl").open()]
    assert len(rows) == 8
    for row in rows:
        texts = row["answers"]  # the greedy answer, a sample, then the opened one
        assert len(texts) == 3 and texts[-1].startswith("eee") and len(texts[-1]) > len("eee")
    assert records["online_dpo"]["metrics"]["pairs"] > 0


@pytest.mark.parametrize("how", ["drop", "repeat"])
def test_balanced_openings_train_as_many_pairs_for_an_opening_as_against_it(toy_gpt2, tmp_path, how):  # noqa: F811
    recipe, records = online_run(toy_gpt2, tmp_path, rounds=1, prompts_per_round=16, samples_per_prompt=2,
                                 openings=["eee"], balance_openings=how, num_train_epochs=1,
                                 reward_functions=["tests.toy_rewards:letter_e_on_odd_prompts"])
    first = records["online_dpo"]["metrics"]["log"][0]
    pairs = json.loads((tmp_path / "tiny" / "online_dpo" / "round-1" / "pairs.json").read_text())["pairs"]
    for_it = sum(p["chosen"][0]["content"].startswith("eee") and not p["rejected"][0]["content"].startswith("eee")
                 for p in pairs)
    against_it = sum(p["rejected"][0]["content"].startswith("eee") and not p["chosen"][0]["content"].startswith("eee")
                     for p in pairs)
    assert for_it == against_it > 0, (for_it, against_it)
    assert first["round_pairs"] == len(pairs) and first[{"drop": "round_dropped_for_balance", "repeat": "round_repeated_for_balance"}[how]] > 0


@pytest.mark.fault("bad input")
def test_balancing_that_leaves_no_pair_says_why(toy_gpt2, tmp_path):  # noqa: F811
    """letter_e_fraction prefers a reply opened by thirty e's on every prompt, over anything a random model writes:
    each pair chooses it and none rejects it, so balancing drops them all, and the stage says that rather than
    blaming ties."""
    with pytest.raises(RecipeError, match="balance_openings dropped every pair"):
        online_run(toy_gpt2, tmp_path, rounds=1, prompts_per_round=8, samples_per_prompt=2, openings=["e" * 30],
                   balance_openings="drop", num_train_epochs=1)
