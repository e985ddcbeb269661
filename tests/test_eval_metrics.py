"""Evaluation figures against hand-computed values on tiny inputs."""

from __future__ import annotations

import math

import pytest

from align.eval_metrics import (
    length_stats, pearson, ranks, reference_scores, repetition_rate, spearman, win_rate_with_interval,
)


def test_win_rate_counts_ties_half_and_gives_a_wilson_interval():
    win = win_rate_with_interval([3, 2, 1, 5], [1, 2, 4, 0])  # win, tie, loss, win
    assert (win["wins"], win["ties"], win["losses"], win["n"]) == (2, 1, 1, 4)
    assert win["win_rate"] == pytest.approx(0.625)
    # Wilson, z = 1.96, p = 0.625, n = 4, worked by hand:
    z2 = 1.96**2
    centre = (0.625 + z2 / 8) / (1 + z2 / 4)
    half = 1.96 * math.sqrt(0.625 * 0.375 / 4 + z2 / 64) / (1 + z2 / 4)
    assert (win["ci_low"], win["ci_high"]) == (pytest.approx(centre - half), pytest.approx(centre + half))
    assert win["ci_low"] == pytest.approx(0.2194, abs=1e-4) and win["ci_high"] == pytest.approx(0.9081, abs=1e-4)
    perfect = win_rate_with_interval([1] * 10, [0] * 10)  # the interval stays inside [0, 1]
    assert perfect["win_rate"] == 1.0 and perfect["ci_high"] == 1.0 and perfect["ci_low"] == pytest.approx(0.7225, abs=1e-4)
    with pytest.raises(ValueError):
        win_rate_with_interval([1], [1, 2])


def test_correlations():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x = 1..4, y = 1, 3, 2, 4: sxy = 4, sxx = syy = 5 -> 0.8
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert pearson([1, 1, 1], [1, 2, 3]) is None
    assert ranks([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]
    assert spearman([1, 2, 3, 100], [1, 2, 3, 4]) == pytest.approx(1.0)  # monotone: rank correlation 1
    assert pearson([1, 2, 3, 100], [1, 2, 3, 4]) < 0.9


def test_repetition_and_lengths():
    assert repetition_rate([[1, 2, 1, 2, 1, 2]], n=2) == pytest.approx(3 / 5)  # 12 21 [12] [21] [12]
    assert repetition_rate([[1, 2, 3, 4, 5]], n=4) == 0.0
    assert repetition_rate([[1, 2], [7, 7, 7, 7, 7]], n=4) == pytest.approx(1 / 2)  # short answers have no 4-grams
    assert length_stats([5, 1, 3, 10, 2, 4, 6, 7, 8, 9]) == {"mean": 5.5, "median": 5.5, "p90": 9, "max": 10}


def test_bleu_and_rouge_match_the_libraries_on_known_cases():
    same = reference_scores(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same["bleu"] == pytest.approx(100.0) and same["rougeL"] == pytest.approx(1.0)
    # ROUGE-L: the longest common subsequence of the two 6-token sentences is 5 tokens (all but sat/is).
    partial = reference_scores(["the cat is on the mat"], ["the cat sat on the mat"])
    assert partial["rougeL"] == pytest.approx(5 / 6)
    assert reference_scores(["xyz"], ["the cat"])["bleu"] == 0.0


def test_kl_along_the_answer_by_hand():
    """Two fake two-token models with fixed next-token distributions p = (1/4, 3/4) and q = (1/2, 1/2):
    KL(p || q) = 1/4 ln(1/2) + 3/4 ln(3/2) per position, summed over a 2-token answer."""
    import types

    import torch

    from align.eval_metrics import policy_kl

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))
            self.row = torch.tensor(logits)

        def forward(self, input_ids):
            return types.SimpleNamespace(logits=self.row.expand(1, input_ids.shape[1], 2))

    tokenizer = types.SimpleNamespace(get_vocab=lambda: {"a": 0, "b": 1})
    models = {"policy": (Fixed([0.0, math.log(3)]), tokenizer), "baseline": (Fixed([0.0, 0.0]), tokenizer)}
    context = lambda tok, prompt, add_generation_prompt=False: [0, 1, 0]  # noqa: E731
    kl = policy_kl(models, [[{"role": "user", "content": "x"}]], [{"token_ids": [1, 1]}], context)
    per_position = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kl == [pytest.approx(2 * per_position)] and per_position == pytest.approx(0.1308, abs=1e-4)
