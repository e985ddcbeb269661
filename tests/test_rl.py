"""PPO arithmetic against values worked out by hand (see the comments for the working)."""

from __future__ import annotations

import math

import pytest
import torch

from align.generation import mask_after_eos
from align.stages.ppo.arithmetic import (
    AdaptiveKLController, RunningMoments, balance_openings, gae, leave_one_out, masked_whiten, per_token_rewards, policy_loss,
    value_loss,
)
from align.stages.ppo.steps import prompt_indices


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 1.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # row 0, gamma 1, lambda 0.5: deltas 0.1, 0.1, 0.3 -> A2 = 0.3, A1 = 0.1 + 0.5*0.3, A0 = 0.1 + 0.5*0.25
    advantages, returns = gae(rewards[:1], values[:1], mask[:1], gamma=1.0, lam=0.5)
    assert advantages.tolist()[0] == pytest.approx([0.225, 0.25, 0.3])
    assert returns.tolist()[0] == pytest.approx([0.725, 0.85, 1.0])
    # row 1, gamma 0.9, lambda 1, last token is padding (its reward 5 and value 9 must be ignored):
    # delta1 = 2 + 0.9*0 - 1 = 1, delta0 = 0 + 0.9*1 - 1 = -0.1 -> A1 = 1, A0 = -0.1 + 0.9*1 = 0.8
    advantages, returns = gae(rewards[1:], values[1:], mask[1:], gamma=0.9, lam=1.0)
    assert advantages.tolist()[0] == pytest.approx([0.8, 1.0, 0.0])
    assert returns.tolist()[0] == pytest.approx([1.8, 2.0, 0.0])


def test_leave_one_out_measures_each_answer_against_the_others_to_its_prompt():
    # three prompts answered twice, as blocks: rows 0-2 then rows 3-5 answer prompts 0, 1, 2
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0, 4.0, 3.0])
    assert leave_one_out(scores, 2).tolist() == pytest.approx([-4.0, -2.0, 0.0, 4.0, 2.0, 0.0])
    # four answers to each of two prompts: each less the mean of its three siblings
    scores = torch.tensor([0.0, 10.0, 3.0, 10.0, 3.0, 10.0, 6.0, 14.0])
    assert leave_one_out(scores, 4).tolist() == pytest.approx([-4.0, -4 / 3, 0.0, -4 / 3, 0.0, -4 / 3, 4.0, 4.0])
    # a prompt's level cancels: adding 100 to every answer of prompt 1 changes nothing
    shifted = scores + torch.tensor([0.0, 100.0] * 4)
    assert leave_one_out(shifted, 4).tolist() == pytest.approx(leave_one_out(scores, 4).tolist(), abs=1e-4)


def test_balanced_openings_weigh_the_prompts_an_opening_won_on_as_those_it_lost_on():
    # four prompts answered twice, the first block from an opening: the opening wins prompt 0 by 1 and loses
    # prompts 1-3 by 1 each, so unbalanced the opening's total signal is 1 for and 3 against
    centred = leave_one_out(torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]), 2)
    opened = torch.tensor([True] * 4 + [False] * 4)
    balanced = balance_openings(centred, opened, 2)
    assert balanced.tolist() == pytest.approx([2.0, -2 / 3, -2 / 3, -2 / 3, -2.0, 2 / 3, 2 / 3, 2 / 3])
    opening_signal = balanced[:4]
    assert opening_signal[opening_signal > 0].sum() == pytest.approx(-opening_signal[opening_signal < 0].sum())
    # a prompt answered only freely keeps its scores; openings that only lost are left alone
    # (won by 2, lost by 2 and 2: the winner x 1.5, the losers x 0.75; prompt 3, never opened, as it was)
    opened = torch.tensor([True, True, True, False] + [False] * 4)
    assert balance_openings(centred, opened, 2).tolist() == pytest.approx([1.5, -0.75, -0.75, -1.0,
                                                                           -1.5, 0.75, 0.75, 1.0])
    assert balance_openings(centred, torch.tensor([False, True, True, True] + [False] * 4), 2).tolist() == \
        pytest.approx(centred.tolist())


def test_whitening_ignores_padding():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 2, unbiased variance (1 + 0 + 1) / 2 = 1
    assert masked_whiten(values, mask).tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert masked_whiten(values, mask, shift_mean=False).tolist()[0] == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))  # ratios 1.5, 0.5, 1
    advantages = torch.tensor([[1.0, -1.0, 2.0]])
    # per token max(-A*r, -A*clip(r, 0.8, 1.2)): max(-1.5, -1.2) = -1.2; max(0.5, 0.8) = 0.8; -2 -> mean -0.8
    loss, stats = policy_loss(new, old, advantages, torch.ones(1, 3), clip_range=0.2)
    assert loss.item() == pytest.approx(-0.8)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)
    assert stats["approx_kl"] == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3)
    # a masked token changes nothing
    padded = policy_loss(torch.cat([new, torch.tensor([[9.0]])], 1), torch.zeros(1, 4),
                         torch.cat([advantages, torch.tensor([[50.0]])], 1), torch.tensor([[1, 1, 1, 0]]), 0.2)[0]
    assert padded.item() == pytest.approx(-0.8)


def test_policy_loss_gradient_is_zero_where_clipped():
    new = torch.log(torch.tensor([[1.5, 1.0]])).requires_grad_(True)
    loss, _ = policy_loss(new, torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2), clip_range=0.2)
    loss.backward()
    assert new.grad[0, 0].item() == 0.0  # ratio 1.5 > 1.2 with positive advantage: no push further
    assert new.grad[0, 1].item() == pytest.approx(-0.5)  # d/dlogp of -A*exp(logp)/2 at ratio 1


def test_clipped_value_loss_by_hand():
    values, old, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0, 0.4]])
    # token 0: clipped value 0.7 -> max((1-2)^2, (0.7-2)^2) = 1.69; token 1: clipped 0.3 -> max(0.16, 0.01) = 0.16
    loss, stats = value_loss(values, old, returns, torch.ones(1, 2), clip_range=0.2)
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.16) / 2)
    assert stats["value_clip_fraction"] == pytest.approx(0.5)


def test_kl_penalty_and_score_placement():
    scores = torch.tensor([2.0])
    logprobs, ref = torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[-1.5, -2.0, -2.0]])
    rewards, kl = per_token_rewards(scores, logprobs, ref, torch.tensor([[1, 1, 0]]), kl_coef=0.1)
    assert kl.tolist()[0] == pytest.approx([0.5, 0.0, 0.0])
    assert rewards.tolist()[0] == pytest.approx([-0.05, 2.0, 0.0])  # score on the last valid token, not padding


def test_adaptive_kl_controller_by_hand():
    controller = AdaptiveKLController(0.1, target=6.0, horizon=100)
    controller.update(12.0, batch_size=10)  # error clipped to +0.2 -> 0.1 * (1 + 0.2 * 10/100)
    assert controller.value == pytest.approx(0.102)
    controller = AdaptiveKLController(0.1, target=6.0, horizon=100)
    controller.update(3.0, batch_size=10)  # error -0.5 clipped to -0.2
    assert controller.value == pytest.approx(0.098)
    restored = AdaptiveKLController(0.5, target=6.0, horizon=100)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == controller.value


def test_running_moments_match_the_whole_sample():
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 2.0, 3.0]))
    moments.update(torch.tensor([4.0, 5.0]))
    assert moments.mean == pytest.approx(3.0)
    assert moments.std == pytest.approx(math.sqrt(2.0))


def test_response_mask_keeps_the_first_eos_only():
    responses = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 2, 2, 2]])
    assert mask_after_eos(responses, eos_token_id=2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_prompt_order_covers_each_prompt_once_per_pass_across_processes():
    seen = [i for step in range(2) for rank in range(2) for i in prompt_indices(step, 8, 2, seed=3, rank=rank, world=2)]
    assert sorted(seen) == list(range(8))
    assert prompt_indices(5, 8, 2, 3, 1, 2) == prompt_indices(5, 8, 2, 3, 1, 2)  # a pure function of the step


def test_prompt_rows_from_every_layout():
    from align.data import DataError, normalise

    rows = [
        {"prompt": "What is 2 + 2?", "expected": "4"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"prompt": "Q", "chosen": "good", "rejected": "bad"},
        {"chosen": "\n\nHuman: Q2\n\nAssistant: good", "rejected": "\n\nHuman: Q2\n\nAssistant: bad"},
    ]
    prompts = normalise(rows, "p.jsonl", "prompts")
    assert prompts[0] == {"prompt": [{"role": "user", "content": "What is 2 + 2?"}], "expected": "4"}
    assert prompts[1] == {"prompt": [{"role": "user", "content": "Hi"}]}  # the demonstration's answer is dropped
    assert prompts[2]["prompt"] == [{"role": "user", "content": "Q"}] and "chosen" not in prompts[2]
    assert prompts[3]["prompt"] == [{"role": "user", "content": "Q2"}]
    with pytest.raises(DataError, match=r"p.jsonl: row 1: missing field 'prompt'"):
        normalise([{"question": "?"}], "p.jsonl", "prompts")
    with pytest.raises(DataError, match=r"row 1: field 'messages' has no user turn"):
        normalise([{"messages": [{"role": "assistant", "content": "x"}]}], "p.jsonl", "prompts")
