"""The PPO stage on tiny models: it learns a toy reward, the KL penalty holds it back, the roles share one base
correctly, a separate reward model only ever sees text, and an interrupted run resumes where it stopped."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from align.config import RecipeError, parse_recipe
from align.pipeline import run_recipe
from tests.conftest import REPO, tiny_recipe


def metric_rows(stage_dir):
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def toy_gpt2(tiny_gpt2, tmp_path_factory):
    """tiny-gpt2's tokenizer on a model with larger initial weights: random-init GPT-2 at the usual 0.02 is
    uniform over its vocabulary and a LoRA can barely move it; at 0.2 it has preferences that RL can shift."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=64, n_layer=2, n_head=4,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        initializer_range=0.2)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("toy-gpt2")
    GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def toy_run(model_dir, root, kl_coef, **settings):
    toy = {
        "dataset": {"bundled": "sft", "limit": 64},
        "use_reward_model": False,
        "reward_functions": ["tests.toy_rewards:letter_e_fraction"],
        "reward_weights": [10.0],
        "missing_eos": "keep",
        "steps": 40, "rollout_batch_size": 32, "mini_batch_size": 8, "ppo_epochs": 4, "max_new_tokens": 8,
        "learning_rate": 1e-3, "lr_schedule": "constant", "kl_coef": kl_coef, "save_steps": 20, **settings,
    }
    recipe = parse_recipe(tiny_recipe(model_dir, root, ["ppo"], ppo=toy))
    records = run_recipe(recipe)
    return metric_rows(root / "tiny" / "ppo"), records["ppo"]["metrics"]


@pytest.mark.slow
def test_ppo_raises_a_toy_reward_and_the_kl_penalty_bounds_it(toy_gpt2, tmp_path):
    rows, metrics = toy_run(toy_gpt2, tmp_path / "loose", kl_coef=0.05)
    first = sum(r["reward_mean"] for r in rows[:5]) / 5
    last = sum(r["reward_mean"] for r in rows[-5:]) / 5
    assert len(rows) == 40 and metrics["steps"] == 40
    assert rows[0]["kl"] == 0.0, "the policy starts as the reference"
    assert last > 2 * first and last - first > 1.0, f"reward did not rise clearly: {first:.3f} -> {last:.3f}"
    assert all(math.isfinite(r["kl"]) and r["kl"] < 40 for r in rows)
    assert rows[-1]["entropy"] < rows[0]["entropy"]  # the policy concentrates on 'e'-rich tokens
    for key in ("reward_std", "policy_loss", "value_loss", "clip_fraction", "approx_kl", "response_length",
                "eos_fraction", "kl_coef", "rollout_tokens_per_second"):
        assert all(math.isfinite(r[key]) for r in rows), key

    # Ten times the KL weight: the policy stays much closer to the reference.
    tight_rows, _ = toy_run(toy_gpt2, tmp_path / "tight", kl_coef=0.5)
    loose_kl = sum(r["kl"] for r in rows[-10:]) / 10
    tight_kl = sum(r["kl"] for r in tight_rows[-10:]) / 10
    assert tight_kl < 0.5 * loose_kl, f"KL with kl_coef 0.5: {tight_kl:.2f}, with 0.05: {loose_kl:.2f}"


@pytest.mark.slow
def test_ppo_with_the_prompt_baseline_raises_the_toy_reward_without_a_value_model(toy_gpt2, tmp_path):
    rows, metrics = toy_run(toy_gpt2, tmp_path, kl_coef=0.05, answers_per_prompt=4, baseline="prompt")
    first = sum(r["reward_mean"] for r in rows[:5]) / 5
    last = sum(r["reward_mean"] for r in rows[-5:]) / 5
    assert len(rows) == 40 and metrics["steps"] == 40
    assert last > 2 * first and last - first > 1.0, f"reward did not rise clearly: {first:.3f} -> {last:.3f}"
    assert all("value_loss" not in r and "value_mean" not in r for r in rows), "no value model trains"
    assert all(math.isfinite(r["kl"]) and r["kl"] < 40 for r in rows)


@pytest.fixture(scope="module")
def chatgpt_run(tiny_llama, tmp_path_factory):
    """SFT -> reward -> PPO (some rollouts continuing an opening) -> eval -> export on tiny-llama."""
    root = tmp_path_factory.mktemp("runs")
    ppo = {"dataset": {"bundled": "prefs_train", "limit": 16}, "steps": 4, "rollout_batch_size": 8,
           "mini_batch_size": 4, "max_new_tokens": 8, "save_steps": 2, "learning_rate": 1e-3, "sample_every": 2,
           "openings": ["Sorry"]}
    recipe = parse_recipe(tiny_recipe(tiny_llama, root, ["sft", "reward", "ppo", "eval", "export"], ppo=ppo))
    return recipe, run_recipe(recipe), root / "tiny"


def test_ppo_continues_sft_and_reports_every_step(chatgpt_run):
    _, records, run = chatgpt_run
    rows = metric_rows(run / "ppo")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["kl"] == 0.0, "the reference is the SFT adapter the policy starts from"
    sft = load_file(run / "sft/adapter/adapter_model.safetensors")
    ppo = load_file(run / "ppo/adapter/adapter_model.safetensors")
    assert sft.keys() == ppo.keys()
    assert any(not torch.equal(sft[k], ppo[k]) for k in sft), "PPO must move the policy away from SFT"
    assert sorted(p.name for p in (run / "ppo/checkpoints").glob("step-*")) == ["step-2", "step-4"]
    samples = [json.loads(line) for line in (run / "ppo/samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 3, 4} and all("response" in s for s in samples)
    assert samples[0]["response"].startswith("Sorry"), "a quarter of each batch continues the opening"
    evaluation = records["eval"]["metrics"]
    assert evaluation["policy"] == "ppo" and evaluation["baseline"] == "sft"
    assert 0.0 <= evaluation["win_rate"] <= 1.0 and evaluation["kl_to_baseline"] >= 0.0
    assert records["export"]["metrics"]["merged_from"].endswith("ppo/adapter")


def test_reward_adapter_on_the_shared_base_scores_like_the_reward_model(chatgpt_run, tiny_llama):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from align.models import load_tokenizer
    from align.reward import AdapterHead, attach_reward_adapter, load_reward_model, score_conversations

    recipe, _, run = chatgpt_run
    tokenizer = load_tokenizer(recipe.model)
    conversations = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                     for q, a in [("What is 2 + 2?", "4"), ("Capital of France?", "Paris is the capital."),
                                  ("Say hi.", "Hello there, how can I help you today?")]]
    standalone = load_reward_model(str(tiny_llama), {"dtype": torch.float32}, tokenizer.pad_token_id,
                                   adapter_dir=run / "reward/adapter", trainable=False)
    expected = score_conversations(standalone, tokenizer, conversations)

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    shared = PeftModel.from_pretrained(base, str(run / "sft/adapter"))
    head, _ = attach_reward_adapter(shared, run / "reward/adapter", "reward")
    scorer = AdapterHead(shared, "reward", head, tokenizer.pad_token_id, trainable=False)
    assert score_conversations(scorer, tokenizer, conversations) == pytest.approx(expected, abs=1e-4)
    assert len(set(round(s, 4) for s in expected)) == 3  # the scores differ, so the comparison means something


def test_ppo_with_a_separate_reward_model_scores_decoded_text(tiny_llama, tiny_gpt2, tmp_path):
    """A reward model with another tokenizer (GPT-2 BPE) judges a Llama-tokenised policy: the logged scores must
    equal the reward model's score of the logged response text, re-tokenised with its own tokenizer."""
    from transformers import AutoModelForSequenceClassification

    from align.config import ModelSection
    from align.models import load_tokenizer
    from align.reward import score_conversations

    torch.manual_seed(1)
    reward_dir = tmp_path / "gpt2-reward"
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=1)
    rm.save_pretrained(reward_dir)
    load_tokenizer(ModelSection(name_or_path=str(tiny_gpt2))).save_pretrained(reward_dir)

    ppo = {"dataset": {"bundled": "prefs_test", "limit": 8}, "steps": 2, "rollout_batch_size": 4,
           "mini_batch_size": 4, "max_new_tokens": 6, "reward_model_path": str(reward_dir), "sample_every": 1,
           "missing_eos": "keep"}
    recipe = parse_recipe(tiny_recipe(tiny_llama, tmp_path / "runs", ["sft", "ppo"], ppo=ppo))
    run_recipe(recipe)
    samples = [json.loads(line) for line in (tmp_path / "runs/tiny/ppo/samples.jsonl").read_text().splitlines()]
    reward_tokenizer = load_tokenizer(ModelSection(name_or_path=str(reward_dir)))
    rm = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1).eval()
    rm.config.pad_token_id = reward_tokenizer.pad_token_id
    rescored = score_conversations(
        rm, reward_tokenizer, [s["prompt"] + [{"role": "assistant", "content": s["response"]}] for s in samples]
    )
    assert [s["score"] for s in samples] == pytest.approx(rescored, abs=1e-4)


def test_reward_function_reads_dataset_columns(tiny_llama, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Repeat the number {n}.", "expected": n}) + "\n"
                               for n in range(8)))
    ppo = {"dataset": str(prompts), "steps": 2, "rollout_batch_size": 4, "mini_batch_size": 2, "max_new_tokens": 4,
           "use_reward_model": False, "reward_functions": ["tests.toy_rewards:says_expected"],
           "gradient_checkpointing": True}
    recipe = parse_recipe(tiny_recipe(tiny_llama, tmp_path / "runs", ["ppo"], ppo=ppo))
    metrics = run_recipe(recipe)["ppo"]["metrics"]
    assert metrics["steps"] == 2 and math.isfinite(metrics["final_reward_mean"])
    assert metric_rows(tmp_path / "runs/tiny/ppo")[0]["kl"] == 0.0  # no dropout: train mode changes nothing


@pytest.mark.slow
@pytest.mark.fault("kill -9")
def test_interrupted_ppo_resumes_on_the_same_trajectory(tiny_llama, tmp_path):
    """kill -9 mid-run, run again: it continues from the last checkpoint (adapters, optimiser, KL controller, RNG,
    step) and logs the same rewards as a run that was never interrupted."""
    ppo = {"dataset": {"bundled": "prefs_train", "limit": 32}, "steps": 10, "rollout_batch_size": 4,
           "mini_batch_size": 2, "max_new_tokens": 6, "save_steps": 2, "learning_rate": 1e-3,
           "kl_controller": "adaptive", "kl_horizon": 50, "reward_normalization": "running",
           "use_reward_model": False, "reward_functions": ["tests.toy_rewards:letter_e_fraction"]}
    reference = parse_recipe(tiny_recipe(tiny_llama, tmp_path / "straight", ["ppo"], ppo=ppo))
    run_recipe(reference)
    expected = metric_rows(tmp_path / "straight/tiny/ppo")

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tiny_llama, tmp_path / "killed", ["ppo"], ppo=ppo)))
    stage = tmp_path / "killed/tiny/ppo"
    cmd = [sys.executable, "-m", "align", "run", str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (stage / "checkpoints/step-4").is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (stage / "stage.json").exists(), "the run finished before it could be interrupted"

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout
    resumed = metric_rows(stage)
    assert [r["step"] for r in resumed] == list(range(1, 11))
    for got, want in zip(resumed, expected):
        for key in ("reward_mean", "kl", "kl_coef", "policy_loss"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), (got["step"], key)


@pytest.mark.fault("bad input")
@pytest.mark.parametrize(
    ("ppo", "message"),
    [
        ({"rollout_batch_size": 6, "mini_batch_size": 4}, "must divide rollout_batch_size"),
        ({"rollout_batch_size": 8, "mini_batch_size": 4, "answers_per_prompt": 3}, "answers_per_prompt 3 must divide"),
        ({"baseline": "prompt"}, "set answers_per_prompt to 2 or more"),
        ({"baseline": "critic"}, "baseline"),
        ({"balance_openings": True, "answers_per_prompt": 2, "baseline": "prompt"}, "needs openings and baseline"),
        ({"balance_openings": True, "openings": ["Sorry"]}, "needs openings and baseline: prompt"),
        ({"use_reward_model": False}, "no reward"),
        ({"reward_functions": ["tests.toy_rewards:no_such_function"]}, "has no function 'no_such_function'"),
        ({"reward_functions": ["no_such_module_xyz:f"]}, "cannot import no_such_module_xyz"),
        ({"reward_functions": ["missing.py:f"]}, "file missing.py not found"),
        ({"reward_functions": ["tests.toy_rewards"]}, "expected 'module:function'"),
        ({"reward_weights": [1.0, 2.0]}, "reward_weights has 2 entries for 1 reward sources"),
        ({"kl_coef": -1}, "greater than or equal to 0"),
        ({"clip_rnage": 0.1}, "unknown key"),
    ],
)
def test_bad_ppo_settings_fail_at_load_time(tiny_llama, tmp_path, ppo, message):
    section = {"dataset": "bundled:prefs_train", **ppo}
    with pytest.raises(RecipeError, match=message):
        parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["sft", "reward", "ppo"], ppo=section))


def test_ppo_without_a_reward_stage_needs_another_reward(tiny_llama, tmp_path):
    with pytest.raises(RecipeError, match="add 'reward' to stages"):
        parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["sft", "ppo"], ppo={"dataset": "bundled:prefs_train"}))


def test_overlong_prompts_are_refused_before_loading_the_model(tiny_llama, tmp_path):
    from align.data import DataError

    ppo = {"dataset": {"bundled": "prefs_train", "limit": 4}, "max_prompt_length": 5, "use_reward_model": False,
           "reward_functions": ["tests.toy_rewards:letter_e_fraction"]}
    with pytest.raises(DataError, match="max_prompt_length=5"):
        run_recipe(parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["ppo"], ppo=ppo)))


@pytest.mark.parametrize("stage", ["rloo", "grpo"])
def test_trl_online_stages_use_the_reward_model_and_functions(tiny_llama, tmp_path, stage):
    section = {"dataset": {"bundled": "prefs_train", "limit": 8}, "max_steps": 2, "per_device_train_batch_size": 4,
               "num_generations": 2, "max_completion_length": 6, "logging_steps": 1, "learning_rate": 1e-3,
               "beta": 0.05, "reward_functions": ["tests.toy_rewards:letter_e_fraction"], "reward_weights": [1.0, 2.0]}
    recipe = parse_recipe(tiny_recipe(tiny_llama, tmp_path / "runs", ["sft", "reward", stage], **{stage: section}))
    records = run_recipe(recipe)
    run = tmp_path / "runs/tiny"
    rows = metric_rows(run / stage)
    assert {"rewards/reward_model/mean", "rewards/letter_e_fraction/mean", "kl"} <= rows[0].keys()
    # trl sums the weighted rewards: reward = 1 * reward model + 2 * letter_e_fraction
    weighted = rows[0]["rewards/reward_model/mean"] + 2 * rows[0]["rewards/letter_e_fraction/mean"]
    assert rows[0]["reward"] == pytest.approx(weighted, abs=1e-4)
    sft = load_file(run / "sft/adapter/adapter_model.safetensors")
    tuned = load_file(run / stage / "adapter/adapter_model.safetensors")
    assert sft.keys() == tuned.keys(), "the saved adapter is the policy alone (not trl's 'ref' copy)"
    assert any(not torch.equal(sft[k], tuned[k]) for k in sft)
    assert math.isfinite(records[stage]["metrics"]["final_reward"])


def test_align_export_of_a_ppo_run_merges_the_ppo_adapter(chatgpt_run, tiny_llama):
    from tests.conftest import export_again_and_compare

    _, _, run = chatgpt_run
    metrics = export_again_and_compare(run, tiny_llama, "ppo")
    assert metrics["max_logit_diff"] <= 1e-3
