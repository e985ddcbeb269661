"""On-policy pairs and figures on fixed inputs: best vs worst, ties and near-identical texts dropped, the reward
model's ranking accuracy and best-of-n, and the pass@1 / pass@n headroom."""

from __future__ import annotations

import pytest

from align.onpolicy import (
    balance_by_openings, build_pairs, flatten, headroom, near_identical, opening_pairs, ranking_accuracy, regroup,
)

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def answers(*texts):
    return [{"text": t, "tokens": len(t.split()), "ended_with_eos": True, "token_ids": []} for t in texts]


def test_best_against_worst():
    samples = [answers("Paris.", "London.", "It is Paris, I think.", "Berlin is the capital.")]
    pairs, counts = build_pairs([PROMPT], samples, [[0.9, -1.0, 0.5, -1.0]])
    assert counts == {"prompts": 1, "pairs": 1, "ties": 0, "near_identical": 0}
    assert pairs[0]["chosen"][0]["content"] == "Paris."
    assert pairs[0]["rejected"][0]["content"] == "London."  # the first of the two lowest
    assert pairs[0]["prompt"] == PROMPT and (pairs[0]["chosen_score"], pairs[0]["rejected_score"]) == (0.9, -1.0)


def test_ties_and_small_gaps_give_no_pair():
    samples = [answers("Paris.", "London."), answers("Rome.", "Madrid.")]
    pairs, counts = build_pairs([PROMPT, PROMPT], samples, [[1.0, 1.0], [0.3, 0.1]], min_score_gap=0.25)
    assert pairs == [] and counts["ties"] == 2


def test_near_identical_texts_are_dropped_but_a_different_worst_is_taken():
    assert near_identical("The capital is Paris.", "the capital is paris", 0.9)
    assert not near_identical("Paris.", "London.", 0.9)
    # the two lowest: one is the chosen answer reworded, the other differs: the other is taken
    samples = [answers("The capital is Paris.", "the capital is PARIS!", "Lyon.")]
    pairs, _ = build_pairs([PROMPT], samples, [[2.0, 0.0, 0.0]])
    assert pairs[0]["rejected"][0]["content"] == "Lyon."
    # only a reworded copy below the best: no pair
    pairs, counts = build_pairs([PROMPT], [answers("Paris.", "paris")], [[2.0, 0.0]])
    assert pairs == [] and counts["near_identical"] == 1


def test_opening_pairs_set_the_best_opened_answer_against_the_best_free_one():
    # two free samples, then one answer continuing each of two openings
    free_won = answers("Paris.", "Lyon.", "I'm sorry, but I can't.", "I don't know.")
    opened_won = answers("Rome.", "Madrid.", "I'm sorry, but no.", "I don't know that.")
    already = answers("Oslo.", "Bergen.", "I'm sorry, but I won't.", "I don't know, sorry.")
    close = answers("I don't know.", "Lyon.", "I'm sorry, but no.", "I don't know!")
    scores = [[2.0, 0.0, -1.0, -0.5], [0.1, 0.2, 0.3, 1.5], [0.0, 0.0, 1.0, 0.5], [0.5, -1.0, 0.1, 0.4]]
    prompts = [PROMPT] * 4
    taken, _ = build_pairs(prompts, [free_won, opened_won, already, close], scores)
    pairs = opening_pairs(prompts, [free_won, opened_won, already, close], scores, 2, taken)
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("Paris.", "I don't know."),        # its best opened answer is the second opening's
        ("I don't know that.", "Madrid."),  # an opened answer scored above every free one is chosen
    ]  # the third prompt's best-vs-worst is already that pair; the fourth's two are one reply reworded
    assert pairs[1]["chosen_score"] == 1.5 and pairs[1]["rejected_score"] == 0.2
    assert opening_pairs(prompts[:1], [free_won], [[0.0, 0.0, 0.1, -0.5]], 2, [], min_score_gap=0.25) == []
    assert opening_pairs(prompts[:1], [free_won], scores[:1], 0, []) == []


def pair(chosen, rejected):
    return {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def test_balancing_keeps_as_many_pairs_for_each_opening_as_against_it():
    sorry, unsure = "I'm sorry, but", "I don't know"
    against_declining = [pair(f"Use kill {i}.", f"I'm sorry, but I can't help with {i}.") for i in range(5)]
    for_declining = [pair(" I'm sorry, but no.", "Here is how to pick the lock."),
                     pair("I'm sorry, but I can't.", "Step 1: find a weapon.")]
    for_unsure = [pair("I don't know your name.", "Your name is Sam.")]
    against_unsure = [pair("Paris.", "I don't know.")]
    neither = [pair("Paris.", "London."), pair("I'm sorry, but no.", "I'm sorry, but yes.")]
    pairs = against_declining + for_declining + for_unsure + against_unsure + neither
    kept, dropped = balance_by_openings(pairs, [sorry, unsure], seed=0)
    assert dropped == 3 and len(kept) == len(pairs) - 3
    assert sum(p in kept for p in against_declining) == 2  # down to the 2 that choose a decline
    assert all(p in kept for p in for_declining + for_unsure + against_unsure + neither)
    assert [p for p in pairs if p in kept] == kept  # order kept
    assert balance_by_openings(pairs, [sorry, unsure], seed=0) == (kept, dropped)  # seeded
    # a pair that chooses "I don't know" over "I'm sorry, but" counts once, under the first opening that differs
    both = pair("I don't know.", "I'm sorry, but no.")
    kept, dropped = balance_by_openings([both, pair("I'm sorry, but no.", "Sure.")], [sorry, unsure], seed=0)
    assert dropped == 0 and len(kept) == 2
    # only one direction present: all of it goes
    assert balance_by_openings(against_declining, [sorry], seed=1) == ([], 5)
    # repeat: nothing dropped, the rarer direction repeated (each once before any twice) up to the commoner's count
    kept, added = balance_by_openings(pairs, [sorry, unsure], seed=0, how="repeat")
    assert added == 3 and kept[: len(pairs)] == pairs
    repeats = kept[len(pairs):]
    assert sorted(map(repr, repeats)) == sorted(map(repr, for_declining + [for_declining[0]])) or \
        sorted(map(repr, repeats)) == sorted(map(repr, for_declining + [for_declining[1]]))
    assert balance_by_openings(against_declining, [sorry], seed=1, how="repeat") == ([], 5)
    with pytest.raises(ValueError, match="'drop' or 'repeat'"):
        balance_by_openings(pairs, [sorry], seed=0, how="upsample")


def test_ranking_accuracy_and_best_of_n_by_hand():
    gold = [[1, 0, 0], [0, 0, 1], [1, 1, 1]]   # the last prompt's samples are all right: no pair
    proxy = [[3.0, 1.0, 2.0],                  # both gold pairs ranked right: 2 of 2
             [5.0, 0.0, 5.0]]                  # one wrong (0 < ... no: 5 vs 5 tie = 0.5), one right
    proxy.append([0.0, 0.0, 0.0])
    result = ranking_accuracy(proxy, gold)
    # prompt 1: (0>1) right, (0>2) right; prompt 2: (2>0) tie 0.5, (2>1) right -> 3.5 of 4
    assert result["pairs"] == 4 and result["accuracy"] == pytest.approx(3.5 / 4)
    # picks: prompt 1 sample 0 (gold 1), prompt 2 sample 0 (first of the tied best: gold 0), prompt 3 gold 1
    assert result["best_of_n"] == pytest.approx(2 / 3)


def test_headroom_by_hand():
    room = headroom([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert room["pass_at_1"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert room["pass_at_n"] == pytest.approx(2 / 3) and room["mixed_prompts"] == 1 and room["n"] == 4


def test_flatten_and_regroup_keep_the_columns_with_their_samples():
    rows = [{"prompt": PROMPT, "answer": ["Paris"]}, {"prompt": PROMPT, "answer": ["Rome"], "category": "capital"}]
    samples = [answers("a", "b"), answers("c")]
    prompts, texts, columns = flatten(rows, samples)
    assert texts == ["a", "b", "c"] and columns["answer"] == [["Paris"], ["Paris"], ["Rome"]]
    assert columns["category"] == [None, None, "capital"]
    assert regroup([1, 2, 3], samples) == [[1, 2], [3]]


def test_ranking_intervals_bracket_the_figures_and_are_seeded():
    from align.onpolicy import ranking_intervals

    proxy = [[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]] * 10
    gold = [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]] * 10
    figures = ranking_accuracy(proxy, gold)
    intervals = ranking_intervals(proxy, gold, 500, seed=3)
    low, high = intervals["accuracy"]
    assert low <= figures["accuracy"] <= high and low < high
    greedy = sum(g[0] for g in gold) / len(gold)
    low, high = intervals["best_minus_greedy"]
    assert low <= figures["best_of_n"] - greedy <= high
    assert ranking_intervals(proxy, gold, 500, seed=3) == intervals
    assert ranking_intervals(proxy, gold, 0) == {}


def test_the_check_trusts_a_reward_model_only_when_its_intervals_clear_chance_and_greedy():
    """A best-of-4 a point above greedy with an interval reaching below zero (the quickstart's reward model on one
    CPU: +0.008 [-0.062, +0.078]) is not trusted; without intervals the point estimates decide."""
    from align.onpolicy import check_verdict

    clear = {"accuracy": (0.70, 0.85), "best_minus_greedy": (0.01, 0.09)}
    assert check_verdict(0.78, 0.40, 0.35, clear) == (True, "")
    trusted, why = check_verdict(0.645, 0.3598, 0.352, {"accuracy": (0.535, 0.747), "best_minus_greedy": (-0.062, 0.078)})
    assert not trusted and why == "its best-of-4 minus greedy, +0.008 [-0.062, 0.078], is not above zero"
    trusted, why = check_verdict(0.56, 0.40, 0.35, {**clear, "accuracy": (0.48, 0.64)})
    assert not trusted and why.startswith("its ranking, 0.560 [0.480, 0.640], is not above chance")
    assert check_verdict(0.645, 0.359, 0.352, {}) == (True, "")
    assert not check_verdict(0.645, 0.352, 0.352, {})[0] and not check_verdict(0.5, 0.4, 0.3, {})[0]
    assert check_verdict(None, 0.4, 0.3, clear) == (False, "the judge separated none of its candidate pairs")


def test_per_kind_headroom_splits_by_category():
    from align.onpolicy import per_kind_headroom

    rows = [{"category": "harmful"}, {"category": "harmful"}, {"category": "lookalike"}]
    gold = [[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    proxy = [[0.1, 0.9], [0.5, 0.2], [0.3, 0.4]]
    kinds = per_kind_headroom(rows, gold, proxy)
    assert kinds["harmful"] == {"prompts": 2, "greedy": 0.0, "pass_at_1": 0.25, "pass_at_n": 0.5,
                                "accuracy": 1.0, "pairs": 1, "best_of_n": 0.5}
    assert kinds["lookalike"]["greedy"] == 1.0 and kinds["lookalike"]["accuracy"] is None
    assert set(per_kind_headroom([{}], [[1.0]])) == {"all"}
