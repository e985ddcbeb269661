"""PPO's numbered steps one at a time, on tiny-llama on CPU: what each step promises, without running the loop."""

from __future__ import annotations

import contextlib
import json
import random
import types

import numpy as np
import pytest
import torch

from align.stages.ppo.checkpoints import load_checkpoint, newest_checkpoint, save_checkpoint
from align.models import load_tokenizer
from align.stages.ppo.steps import (
    Experience, RewardSources, Rollout, estimate_advantages, load_checked_prompts, load_roles, old_logprobs_and_values,
    opening_per_row, rollout, score, start_training, stop_check, update,
)

NO_AUTOCAST = contextlib.nullcontext  # float32 on CPU; run() passes a bf16 autocast on GPU


@pytest.fixture
def ppo(tiny_llama, make_recipe):
    """A PPO-only recipe's roles and training state, as run() sets them up (no SFT: the reference is the base)."""
    from accelerate import PartialState
    from transformers import set_seed

    section = {"dataset": {"bundled": "prefs_train", "limit": 8}, "rollout_batch_size": 4, "mini_batch_size": 2,
               "ppo_epochs": 2, "max_new_tokens": 6, "learning_rate": 1e-2, "use_reward_model": False,
               "reward_functions": ["tests.toy_rewards:letter_e_fraction"], "missing_eos": "keep"}
    recipe = make_recipe(tiny_llama, ["ppo"], ppo=section)
    set_seed(recipe.seed)
    tokenizer = load_tokenizer(recipe.model)
    rows, prompt_ids = load_checked_prompts(recipe.ppo, tokenizer)
    model, value_model, _, _ = load_roles(recipe, {}, tokenizer)
    state = PartialState()
    training = start_training(recipe.ppo, model, value_model, state)
    return types.SimpleNamespace(cfg=recipe.ppo, tokenizer=tokenizer, rows=rows[:4], prompt_ids=prompt_ids[:4],
                                 training=training, state=state)


def letter_e_sources(judges=()):
    from tests.toy_rewards import letter_e_fraction

    return RewardSources(model=None, tokenizer=None, functions=[("letter_e_fraction", letter_e_fraction)],
                         weights=[2.0], columns=[], judges=list(judges))


def test_rollout_masks_each_response_up_to_its_first_eos(ppo):
    # A random tiny model almost never samples its real EOS, so call a token it does sample the EOS: the same
    # seed samples the same tokens until a row ends, so row 0 then ends at its third token.
    torch.manual_seed(0)
    first = rollout(ppo.training.model, ppo.tokenizer, ppo.prompt_ids, ppo.cfg, NO_AUTOCAST)
    eos = int(first.responses[0, 2])
    tokenizer = types.SimpleNamespace(pad_token_id=ppo.tokenizer.pad_token_id, eos_token_id=eos,
                                      decode=ppo.tokenizer.decode)
    torch.manual_seed(0)
    answers = rollout(ppo.training.model, tokenizer, ppo.prompt_ids, ppo.cfg, NO_AUTOCAST)

    assert answers.responses.shape[0] == len(ppo.prompt_ids)
    assert answers.responses.shape[1] <= ppo.cfg.max_new_tokens
    assert answers.ended[0] and answers.response_mask[0].sum() <= 3
    for tokens, mask, ended, text in zip(answers.responses, answers.response_mask, answers.ended, answers.texts):
        hits = (tokens == eos).nonzero().flatten().tolist()
        length = hits[0] + 1 if hits else len(tokens)  # the EOS is part of the response: ending is learned
        assert mask.tolist() == [1] * length + [0] * (len(tokens) - length)
        assert (tokens[length:] == tokenizer.pad_token_id).all()
        assert bool(ended) == bool(hits)
        assert text == ppo.tokenizer.decode(tokens[:length], skip_special_tokens=True).strip()


def test_opening_per_row_opens_a_share_of_each_batch_with_the_openings_taking_turns():
    assert opening_per_row(0, 8, 0, 0.25) == [None] * 8
    assert opening_per_row(0, 8, 2, 0.25) == [0, 1, None, None, None, None, None, None]
    assert opening_per_row(1, 8, 3, 0.25) == [2, 0, None, None, None, None, None, None]  # turns go on across steps
    assert opening_per_row(5, 4, 2, 0.01) == [1, None, None, None]  # at least one row
    assert opening_per_row(0, 3, 2, 1.0) == [0, 1, 0]


def test_rollout_continues_openings_as_the_start_of_the_response(ppo):
    """An opened row's response starts with the opening, which is scored, masked in and trained on as the policy's
    own tokens; its query is the prompt alone, as an unopened row's."""
    opening = ppo.tokenizer.encode(" Sorry, I can not", add_special_tokens=False)
    openings = [opening, [], opening, []]
    torch.manual_seed(0)
    plain = rollout(ppo.training.model, ppo.tokenizer, ppo.prompt_ids, ppo.cfg, NO_AUTOCAST)
    torch.manual_seed(0)
    answers = rollout(ppo.training.model, ppo.tokenizer, ppo.prompt_ids, ppo.cfg, NO_AUTOCAST, openings=openings)
    assert torch.equal(answers.query, plain.query) and torch.equal(answers.query_mask, plain.query_mask)
    for row in (0, 2):
        assert answers.responses[row, : len(opening)].tolist() == opening
        assert answers.response_mask[row, : len(opening)].tolist() == [1] * len(opening)
        assert answers.response_mask[row].sum() > len(opening), "the policy continued it"
        assert answers.texts[row].startswith(ppo.tokenizer.decode(opening, skip_special_tokens=True).strip())
    for row in (1, 3):
        assert answers.responses[row, : len(opening)].tolist() != opening
    scores = score(ppo.rows, answers, letter_e_sources(), ppo.training.moments, ppo.cfg, ppo.state, NO_AUTOCAST)
    experience = old_logprobs_and_values(ppo.training, answers, ppo.cfg, NO_AUTOCAST)
    kl, advantages, returns = estimate_advantages(experience, scores.trained, ppo.training.kl_controller.value,
                                                  ppo.cfg)
    stats = update(ppo.training, experience, advantages, returns, ppo.cfg, ppo.state, NO_AUTOCAST)
    assert stats and all(np.isfinite(v) for row in stats for v in row.values() if isinstance(v, float))


def test_openings_need_aligns_own_decode_loop(tiny_llama, make_recipe):
    from align.config import RecipeError

    section = {"dataset": {"bundled": "prefs_train", "limit": 8}, "use_reward_model": False,
               "reward_functions": ["tests.toy_rewards:letter_e_fraction"], "openings": ["I'm sorry, but"]}
    assert make_recipe(tiny_llama, ["ppo"], ppo=section).ppo.opening_fraction == 0.25
    with pytest.raises(RecipeError, match="openings are continued by align's own decode loop"):
        make_recipe(tiny_llama, ["ppo"], ppo={**section, "use_vllm": True})


def test_score_weights_the_reward_functions_then_penalises_cut_off_answers(ppo):
    answers = Rollout(query=None, query_mask=None, responses=None, response_mask=None,
                      ended=torch.tensor([True, False, True]), texts=["eeee", "eeee", "abcd"], seconds=1.0)
    batch = [{"prompt": [{"role": "user", "content": "Say e."}]}] * 3
    cfg = ppo.cfg.model_copy(update={"missing_eos": "penalty", "missing_eos_penalty": 0.5})
    scores = score(batch, answers, letter_e_sources(judges=["tests.toy_rewards:brevity"]),
                   ppo.training.moments, cfg, ppo.state, NO_AUTOCAST)
    assert scores.raw.tolist() == pytest.approx([2.0, 2.0, 0.0])  # weight 2 x the share of 'e'
    assert scores.trained.tolist() == pytest.approx([2.0, 1.5, 0.0])  # only the cut-off answer pays
    assert scores.gold == pytest.approx([1 - 4 / 60] * 3)  # the judge watches; it changes no score

    cfg = cfg.model_copy(update={"missing_eos": "keep", "reward_normalization": "batch"})
    trained = score(batch, answers, letter_e_sources(), ppo.training.moments, cfg, ppo.state, NO_AUTOCAST).trained
    assert trained.mean().item() == pytest.approx(0.0, abs=1e-6) and trained.std().item() == pytest.approx(1.0)


def rollout_and_update(ppo):
    torch.manual_seed(0)
    answers = rollout(ppo.training.model, ppo.tokenizer, ppo.prompt_ids, ppo.cfg, NO_AUTOCAST)
    scores = score(ppo.rows, answers, letter_e_sources(), ppo.training.moments, ppo.cfg, ppo.state, NO_AUTOCAST)
    experience = old_logprobs_and_values(ppo.training, answers, ppo.cfg, NO_AUTOCAST)
    kl, advantages, returns = estimate_advantages(experience, scores.trained, ppo.training.kl_controller.value,
                                                  ppo.cfg)
    stats = update(ppo.training, experience, advantages, returns, ppo.cfg, ppo.state, NO_AUTOCAST)
    return experience, kl, stats


def test_update_trains_the_policy_and_value_adapters_and_leaves_the_base_alone(ppo):
    model = ppo.training.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    head_before = ppo.training.value_model.head.weight.detach().clone()
    experience, kl, stats = rollout_and_update(ppo)

    assert kl.abs().max().item() < 1e-5, "before any update the policy is the reference (here: the base)"
    assert torch.equal(experience.old_values, torch.zeros_like(experience.old_values)), "a fresh value head is 0"
    # 4 prompts in mini-batches of 2, 2 epochs: 4 optimiser steps, then one scheduler step
    assert len(stats) == 4 and ppo.training.scheduler.last_epoch == 1
    assert stats[0]["approx_kl"] == pytest.approx(0.0, abs=1e-6), "the first mini-batch's ratio is exactly 1"
    assert all(np.isfinite(s["policy_loss"]) and np.isfinite(s["value_loss"]) for s in stats)

    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # lora_B starts at zero and weight decay keeps zero at zero: only a gradient step moves it
    assert any(".default." in n and "lora_B" in n for n in changed), "the policy adapter must learn"
    assert any(".value." in n and "lora_B" in n for n in changed), "the value adapter must learn"
    assert changed <= {n for n in before if "lora_" in n}, f"base weights changed: {sorted(changed)[:3]}"
    assert not torch.equal(ppo.training.value_model.head.weight, head_before), "the value head must move"


def test_the_prompt_baseline_ranks_answers_within_their_prompt_not_across_prompts(ppo):
    """Prompt 0's answers score 0 and 1, prompt 1's 10 and 11 (a reward model's level differs between prompts).
    Against the other answer to the same prompt the better of each pair gains and the worse loses; against a
    value model (here a zero one) and the batch, both of prompt 1's answers gain and both of prompt 0's lose."""
    mask = torch.ones(4, 3)
    zeros = torch.zeros(4, 3)
    experience = Experience(sequences=None, attention=None, responses=None, context=0, mask=mask,
                            old_logprobs=zeros, ref_logprobs=zeros, old_values=zeros)
    scores = torch.tensor([0.0, 10.0, 1.0, 11.0])  # rows 0, 2 answer prompt 0; rows 1, 3 prompt 1
    prompt = ppo.cfg.model_copy(update={"answers_per_prompt": 2, "baseline": "prompt"})
    _, advantages, _ = estimate_advantages(experience, scores, 0.0, prompt)
    assert (advantages[2] > 0).all() and (advantages[3] > 0).all(), "the better answer of each prompt gains"
    assert (advantages[0] < 0).all() and (advantages[1] < 0).all(), "the worse answer of each prompt loses"
    assert advantages[0].tolist() == pytest.approx(advantages[1].tolist()), "both pairs differ by 1: same signal"

    _, advantages, _ = estimate_advantages(experience, scores, 0.0, ppo.cfg)  # baseline: value
    assert (advantages[1] > 0).all() and (advantages[0] < 0).all() and (advantages[2] < 0).all()

    # rows 0 and 1 continued an opening: it won prompt 0 by 3 and lost prompt 1 by 1; balanced, each side weighs 2
    scores, opened = torch.tensor([3.0, 10.0, 0.0, 11.0]), torch.tensor([True, True, False, False])
    _, plain, _ = estimate_advantages(experience, scores, 0.0, prompt, opened)
    assert plain[0].tolist() != pytest.approx(plain[3].tolist()), "unbalanced: the win counts three times the loss"
    balanced = prompt.model_copy(update={"openings": ["Sorry"], "balance_openings": True})
    _, advantages, _ = estimate_advantages(experience, scores, 0.0, balanced, opened)
    assert advantages[0].tolist() == pytest.approx(advantages[3].tolist())
    assert advantages[1].tolist() == pytest.approx(advantages[2].tolist()) and (advantages[1] < 0).all()


def test_with_the_prompt_baseline_only_the_policy_trains(ppo):
    """No value model: the value adapter and head keep their weights and the statistics have no value loss."""
    ppo.cfg = ppo.cfg.model_copy(update={"answers_per_prompt": 2, "baseline": "prompt"})
    ppo.prompt_ids = ppo.prompt_ids[:2] * 2
    ppo.rows = ppo.rows[:2] * 2
    model = ppo.training.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    head_before = ppo.training.value_model.head.weight.detach().clone()
    experience, kl, stats = rollout_and_update(ppo)

    assert torch.equal(experience.old_values, torch.zeros_like(experience.old_values))
    assert stats and all("value_loss" not in s and np.isfinite(s["policy_loss"]) for s in stats)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(".default." in n and "lora_B" in n for n in changed), "the policy adapter must learn"
    assert not any(".value." in n for n in changed), "no value model trains with the prompt baseline"
    assert torch.equal(ppo.training.value_model.head.weight, head_before)


def test_checkpoint_save_then_load_restores_step_optimiser_kl_and_rng(ppo, tmp_path):
    training = ppo.training
    rollout_and_update(ppo)
    training.kl_controller.value = 0.123
    training.moments.update(torch.tensor([1.0, 3.0]))
    for step in (9, 10, 11):  # keep 2: step-9 goes; step-10 < step-11 by number, not by name
        save_checkpoint(tmp_path, step, training.model, training.value_model, training.optimizer,
                        training.scheduler, training.kl_controller, training.moments, ppo.state, keep=2)
        if step == 10:
            saved_policy = {n: p.detach().clone() for n, p in training.model.named_parameters() if "lora_" in n}
            saved_adam = [s["exp_avg"].clone() for s in training.optimizer.state.values()]
            draws = (torch.rand(3), random.random(), np.random.rand())  # what the RNG gives right after step 10

    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-10", "step-11"]
    assert newest_checkpoint(tmp_path).name == "step-11"
    assert json.loads((tmp_path / "checkpoints/latest.json").read_text())["step"] == 11

    rollout_and_update(ppo)  # move everything on, then go back to step 10
    training.kl_controller.value, training.moments.mean = 9.0, 9.0
    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    step = load_checkpoint(tmp_path / "checkpoints/step-10", training.model, training.value_model, training.optimizer,
                           training.scheduler, training.kl_controller, training.moments, rank=0)

    assert step == 10
    assert all(torch.equal(p, saved_policy[n]) for n, p in training.model.named_parameters() if "lora_" in n)
    assert all(torch.equal(s["exp_avg"], a) for s, a in zip(training.optimizer.state.values(), saved_adam))
    assert training.scheduler.last_epoch == 1 and training.kl_controller.value == 0.123
    assert training.moments.mean == pytest.approx(2.0)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(again[0], draws[0]) and again[1:] == draws[1:], "a resumed run must sample what it would have"


def test_stop_check_stops_on_the_kl_bound_and_calls_non_finite_numbers_divergence():
    metrics = {"reward_mean": 1.0, "kl": 3.0, "policy_loss": 0.1, "value_loss": 0.2}
    weights = [torch.ones(2, 2), torch.zeros(3)]
    assert stop_check(metrics, weights, max_kl=None, step=4) == (None, False)
    assert stop_check(metrics, weights, max_kl=5.0, step=4) == (None, False)
    assert stop_check(metrics, weights, max_kl=2.5, step=4) == ("KL 3.00 exceeded ppo.max_kl=2.5 at step 5", False)

    reason, diverged = stop_check({**metrics, "value_loss": float("nan")}, weights, max_kl=None, step=4)
    assert diverged and reason == "value_loss not finite at step 5"
    reason, diverged = stop_check(metrics, [torch.ones(2), torch.tensor([1.0, float("inf")])], max_kl=2.5, step=0)
    assert diverged and reason == "adapter weights not finite at step 1", "divergence outranks the KL bound"
