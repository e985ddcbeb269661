"""Every online stage that optimises this run's reward model (online_dpo, ppo, rloo, grpo) first reads the reward
stage's on-policy check: an untrusted reward model is refused with a message naming the stage and its two ways
out, or, with keep_start_if_untrusted, the stage keeps its starting policy and says why in the run's summary."""

from __future__ import annotations

import pytest

from align.config import RecipeError, parse_recipe
from align.pipeline import run_recipe, summary
from align.runs import write_json_atomic
from tests.conftest import tiny_recipe

PROMPTS = {"dataset": {"bundled": "prefs_train", "limit": 8}}
SECTIONS = {  # a few steps of each, scored by the reward model alone
    "online_dpo": {**PROMPTS, "rounds": 1, "prompts_per_round": 4, "samples_per_prompt": 2, "max_new_tokens": 8,
                   "kl_samples": 4, "per_device_train_batch_size": 2, "max_length": 128},
    "ppo": {**PROMPTS, "steps": 2, "rollout_batch_size": 4, "mini_batch_size": 2, "max_new_tokens": 8},
    "rloo": {**PROMPTS, "max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 2,
             "max_completion_length": 6},
    "grpo": {**PROMPTS, "max_steps": 2, "per_device_train_batch_size": 4, "num_generations": 2,
             "max_completion_length": 6},
}
UNTRUSTED = {"policy_check_trusted": False, "policy_check_accuracy": 0.48, "policy_check_pairs": 50,
             "policy_check_n": 4, "policy_check_best_of_n": 0.40, "policy_check_greedy": 0.55,
             "policy_check_judge": "align.judges:gold",
             "policy_check_untrusted_because": "its best-of-4 minus greedy, -0.150 [-0.250, -0.050], is not above zero"}


def untrusted_reward_stage(run_dir):
    """A finished reward stage whose check found its model no better than greedy."""
    reward = run_dir / "reward"
    (reward / "adapter").mkdir(parents=True)
    write_json_atomic(reward / "stage.json", {"metrics": UNTRUSTED})
    return reward


@pytest.mark.parametrize("stage", list(SECTIONS))
def test_an_untrusted_reward_model_is_refused_unless_told_to_go_on(tiny_gpt2, tmp_path, stage, capsys):
    from align.stages.reward import untrusted_reward_model

    recipe = parse_recipe(tiny_recipe(tiny_gpt2, tmp_path, ["sft", "reward", stage], **{stage: SECTIONS[stage]}))
    inputs = {"sft": tmp_path / "sft", "reward": untrusted_reward_stage(tmp_path)}
    with pytest.raises(RecipeError, match=f"^{stage}: the reward model cannot rank the SFT model's own answers.*"
                                          r"minus greedy, -0.150 \[-0.250, -0.050\], is not above zero.*"
                                          f"{stage}.keep_start_if_untrusted.*{stage}.require_trusted_reward_model"):
        untrusted_reward_model(recipe, stage, inputs)
    going_on = parse_recipe(tiny_recipe(tiny_gpt2, tmp_path, ["sft", "reward", stage], **{
        stage: {**SECTIONS[stage], "require_trusted_reward_model": False}}))
    capsys.readouterr()
    assert untrusted_reward_model(going_on, stage, inputs) is None
    assert (f"[{stage}] the reward stage did not trust its model: its best-of-4 minus greedy, -0.150 [-0.250, "
            f"-0.050], is not above zero; going on because {stage}.require_trusted_reward_model is false"
            in capsys.readouterr().out)
    trusted = tmp_path / "trusted"
    write_json_atomic(trusted / "stage.json", {"metrics": {**UNTRUSTED, "policy_check_trusted": True}})
    assert untrusted_reward_model(recipe, stage, {**inputs, "reward": trusted}) is None


def test_a_reward_model_from_elsewhere_is_not_judged_by_this_runs_check(tiny_gpt2, tmp_path):
    """ppo.reward_model_path scores with another model: this run's reward stage says nothing about it."""
    from align.stages.reward import untrusted_reward_model

    recipe = parse_recipe(tiny_recipe(tiny_gpt2, tmp_path, ["sft", "reward", "ppo"], ppo={
        **SECTIONS["ppo"], "reward_model_path": str(tiny_gpt2)}))
    inputs = {"sft": tmp_path / "sft", "reward": untrusted_reward_stage(tmp_path)}
    assert untrusted_reward_model(recipe, "ppo", inputs) is None


@pytest.mark.parametrize("stage", list(SECTIONS))
def test_an_untrusted_reward_model_can_stop_the_stage_with_the_sft_policy(tiny_llama, tmp_path, stage):
    """keep_start_if_untrusted: the stage says why and stops before sampling; its adapter is SFT's, and the run goes
    on (the summary says so)."""
    recipe = parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["sft", "reward", stage], **{
        stage: {**SECTIONS[stage], "keep_start_if_untrusted": True}}))
    run_recipe(recipe, only="sft")
    run = tmp_path / "tiny"
    reward = untrusted_reward_stage(run)
    from align.stages import STAGES

    metrics = STAGES[stage].function()(recipe, run / stage, {"sft": run / "sft", "reward": reward})
    assert "best-of-4 scores 0.400 against greedy 0.550" in metrics["stopped"] and metrics["kept_policy"] == "sft"
    assert metrics["stopped"].endswith("is not above zero")
    sft, kept = run / "sft" / "adapter", run / stage / "adapter"
    assert (kept / "adapter_model.safetensors").read_bytes() == (sft / "adapter_model.safetensors").read_bytes()
    assert sorted(p.name for p in (run / stage).iterdir()) == ["adapter"], "nothing was sampled or trained"
    first = "round" if stage == "online_dpo" else "step"
    text = summary(recipe, {stage: {"seconds": 1.0, "metrics": metrics}})
    assert f"{stage} stopped before its first {first}: the reward model is not trusted" in text
    assert "the final policy is SFT's" in text


def test_the_run_summary_shows_the_check_with_its_intervals_and_verdict(tiny_gpt2, tmp_path):
    recipe = parse_recipe(tiny_recipe(tiny_gpt2, tmp_path, ["sft", "reward"]))
    stored = {**UNTRUSTED, "policy_check_prompts": 20, "policy_check_pass_at_1": 0.45, "policy_check_pass_at_n": 0.7,
              "policy_check_intervals": {"accuracy": [0.4, 0.56], "best_minus_greedy": [-0.25, -0.05]}}  # JSON lists
    text = summary(recipe, {"reward": {"seconds": 1.0, "metrics": stored}})
    assert "ranks the better one higher 0.480 [0.400, 0.560] of 50 pairs" in text
    assert "best-of-4 0.400 vs greedy 0.550, -0.150 [-0.250, -0.050]  (NOT trusted)" in text
    without = summary(recipe, {"reward": {"seconds": 1.0, "metrics": {**stored, "policy_check_intervals": {}}}})
    assert "0.480 of 50 pairs" in without and "-0.150  (NOT trusted)" in without


def test_the_run_summary_sets_the_labellers_own_ranking_beside_the_reward_models(tiny_gpt2, tmp_path):
    recipe = parse_recipe(tiny_recipe(tiny_gpt2, tmp_path, ["sft", "reward"]))
    stored = {**UNTRUSTED, "policy_check_prompts": 20, "policy_check_pass_at_1": 0.45, "policy_check_pass_at_n": 0.7,
              "policy_check_labeller": {"pairs": 50, "agrees": 0.7, "ties": 0.2, "reverses": 0.1},
              "policy_check_labeller_accuracy": 0.8,
              "policy_check_by_kind": {"lookalike": {"prompts": 5, "greedy": 0.4, "pass_at_1": 0.3, "pass_at_n": 0.6,
                                                     "accuracy": 0.5, "pairs": 12, "best_of_n": 0.4,
                                                     "labeller_accuracy": 0.625}}}
    text = summary(recipe, {"reward": {"seconds": 1.0, "metrics": stored}})
    assert ("the labeller without its noise on the same pairs: as the judge 0.700, tie 0.200, reversed 0.100; "
            "ranks 0.800 (ties half)") in text
    assert "SFT on lookalike (n=5)" in text and "ranks 0.500 of 12 pairs (the labeller 0.625)" in text
    unlabelled = {k: v for k, v in stored.items() if not k.startswith("policy_check_labeller")}
    assert "the labeller without" not in summary(recipe, {"reward": {"seconds": 1.0, "metrics": unlabelled}})

