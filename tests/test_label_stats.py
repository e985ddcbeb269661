"""Label statistics against hand-worked and textbook values; no models, milliseconds."""

from __future__ import annotations

import json

import pytest

from align.labelling.stats import (
    binomial_two_sided_p,
    cohen_kappa,
    fleiss_kappa,
    format_report,
    label_report,
    outcome,
)


def judgment(annotator: str, item: str, choice: str, a_response: int = 1,
             model_a: str | None = None, model_b: str | None = None) -> dict:
    return {"annotator": annotator, "item_id": item, "choice": choice, "a_response": a_response,
            "model_a": model_a, "model_b": model_b}


def shown(annotator: str, item: str, preferred: str, a_response: int) -> dict:
    """A decisive judgment for `preferred` ("1" or "2") as clicked with the given A/B layout."""
    choice = "A" if preferred == str(a_response) else "B"
    return judgment(annotator, item, choice, a_response)


# ------------------------------------------------------------------------------------------------ outcome


@pytest.mark.parametrize(("choice", "a_response", "expected"), [
    ("A", 1, "1"), ("A", 2, "2"), ("B", 1, "2"), ("B", 2, "1"),
    ("tie", 1, "tie"), ("tie", 2, "tie"), ("both_bad", 1, "both_bad"), ("both_bad", 2, "both_bad"),
])
def test_outcome_maps_position_to_item_space(choice, a_response, expected):
    assert outcome(judgment("x", "i", choice, a_response)) == expected


@pytest.mark.parametrize(("choice", "a_response"), [("C", 1), ("a", 1), ("A", 0), ("B", 3)])
def test_outcome_rejects_unknown_values(choice, a_response):
    with pytest.raises(ValueError):
        outcome(judgment("x", "i", choice, a_response))


# ------------------------------------------------------------------------------------------------ Cohen


def test_cohen_kappa_classic_example():
    # 50 items: both yes 20, both no 15, yes/no 5, no/yes 10. p_o = 0.7, p_e = 0.5*0.6 + 0.5*0.4 = 0.5.
    pairs = [("yes", "yes")] * 20 + [("no", "no")] * 15 + [("yes", "no")] * 5 + [("no", "yes")] * 10
    assert cohen_kappa(pairs) == pytest.approx(0.4)


def test_cohen_kappa_perfect_agreement_is_one():
    assert cohen_kappa([("1", "1"), ("2", "2"), ("tie", "tie"), ("1", "1")]) == pytest.approx(1.0)


def test_cohen_kappa_systematic_disagreement_is_minus_one():
    assert cohen_kappa([("1", "2"), ("2", "1")]) == pytest.approx(-1.0)


def test_cohen_kappa_chance_level_is_zero():
    # Rater 1 always says "1": observed agreement 0.5 equals chance agreement 1 * 0.5.
    assert cohen_kappa([("1", "1"), ("1", "2")]) == pytest.approx(0.0)


@pytest.mark.parametrize("pairs", [[], [("1", "1")], [("tie", "tie")] * 5])
def test_cohen_kappa_undefined_is_none(pairs):
    assert cohen_kappa(pairs) is None


# ------------------------------------------------------------------------------------------------ Fleiss


WIKIPEDIA_FLEISS_COUNTS = [
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
]


def labels_from_counts(counts: list[int]) -> list[str]:
    return [f"c{category}" for category, count in enumerate(counts, start=1) for _ in range(count)]


def test_fleiss_kappa_wikipedia_example():
    ratings = [labels_from_counts(row) for row in WIKIPEDIA_FLEISS_COUNTS]
    assert all(len(labels) == 14 for labels in ratings)
    # P_bar = 0.378, P_e = 0.213 (Wikipedia, "Fleiss' kappa", worked example)
    assert fleiss_kappa(ratings) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_kappa_variable_rater_counts_by_hand():
    # P_i = 1, 0, 1 -> P_bar = 2/3; x: 4 of 7 ratings, y: 3 of 7 -> P_e = 25/49; kappa = 23/72.
    # The single-rating item carries no agreement information and must not change p_j.
    ratings = [["x", "x", "x"], ["x", "y"], ["y", "y"], ["z"]]
    assert fleiss_kappa(ratings) == pytest.approx(23 / 72)


def test_fleiss_kappa_perfect_agreement_is_one():
    assert fleiss_kappa([["1", "1"], ["2", "2", "2"], ["tie", "tie"]]) == pytest.approx(1.0)


@pytest.mark.parametrize("ratings", [[], [["1"], ["2"]], [["1", "1"], ["1", "1", "1"]]])
def test_fleiss_kappa_undefined_is_none(ratings):
    assert fleiss_kappa(ratings) is None


# ------------------------------------------------------------------------------------------------ binomial


@pytest.mark.parametrize(("k", "n", "p", "expected"), [
    (9, 10, 0.5, 0.021484375),      # 2 * (10 + 1) / 1024
    (1, 10, 0.5, 0.021484375),
    (5, 10, 0.5, 1.0),
    (4, 10, 0.5, 772 / 1024),        # outcome 6 is exactly as likely as 4 and must be counted
    (0, 5, 0.5, 0.0625),             # 2 / 32
    (3, 10, 0.2, 0.429574656),       # 1 - P(1) - P(2): the only outcomes more likely than 3
    (0, 0, 0.5, 1.0),
])
def test_binomial_two_sided_p_known_values(k, n, p, expected):
    assert binomial_two_sided_p(k, n, p) == pytest.approx(expected, rel=1e-9)


def test_binomial_two_sided_p_large_n_does_not_overflow():
    assert binomial_two_sided_p(5000, 10000) == pytest.approx(1.0)
    assert binomial_two_sided_p(5300, 10000) < 1e-8


def test_binomial_two_sided_p_degenerate_probability():
    assert binomial_two_sided_p(0, 4, 0.0) == 1.0
    assert binomial_two_sided_p(1, 4, 0.0) == 0.0
    assert binomial_two_sided_p(4, 4, 1.0) == 1.0


@pytest.mark.parametrize(("k", "n", "p"), [(-1, 3, 0.5), (4, 3, 0.5), (1, 3, 1.5)])
def test_binomial_two_sided_p_rejects_bad_arguments(k, n, p):
    with pytest.raises(ValueError):
        binomial_two_sided_p(k, n, p)


# ------------------------------------------------------------------------------------------------ report


def test_randomised_positions_agree_in_item_space():
    # Both prefer response 1; alice saw it as A, bob as B.
    report = label_report([judgment("alice", "i1", "A", a_response=1), judgment("bob", "i1", "B", a_response=2)])
    assert report["pairwise"] == [{"annotators": ["alice", "bob"], "shared_items": 1, "agreement": 1.0,
                                   "cohen_kappa": None}]
    assert report["mean_pairwise_agreement"] == 1.0
    assert report["items"] == 1
    assert report["items_with_overlap"] == 1


def test_same_position_with_different_layouts_disagrees():
    report = label_report([judgment("alice", "i1", "A", a_response=1), judgment("bob", "i1", "A", a_response=2)])
    assert report["pairwise"][0]["agreement"] == 0.0


def test_pairwise_kappa_and_fleiss_by_hand():
    # In item space alice says 1,1,2,2 and bob 1,2,2,2: p_o = 3/4, p_e = (2*1 + 2*3)/16 = 1/2 -> kappa 1/2.
    # Fleiss: P_i = 1,0,1,1 -> 3/4; "1" 3 of 8, "2" 5 of 8 -> P_e = 34/64 -> kappa = 7/15.
    judgments = [
        shown("alice", "i1", "1", 1), shown("bob", "i1", "1", 2),
        shown("alice", "i2", "1", 2), shown("bob", "i2", "2", 1),
        shown("alice", "i3", "2", 1), shown("bob", "i3", "2", 2),
        shown("alice", "i4", "2", 2), shown("bob", "i4", "2", 1),
    ]
    report = label_report(judgments)
    [pair] = report["pairwise"]
    assert pair["shared_items"] == 4
    assert pair["agreement"] == pytest.approx(0.75)
    assert pair["cohen_kappa"] == pytest.approx(0.5)
    assert report["fleiss_kappa"] == pytest.approx(7 / 15)


def test_mean_pairwise_agreement_is_weighted_by_shared_items():
    judgments = [shown("alice", f"i{n}", "1", 1) for n in range(4)]
    judgments += [shown("bob", "i0", "1", 2), shown("bob", "i1", "1", 1), shown("bob", "i2", "1", 2),
                  shown("bob", "i3", "2", 1)]
    judgments += [shown("carol", "i0", "2", 2), shown("carol", "x", "1", 1)]
    report = label_report(judgments)
    assert [pair["annotators"] for pair in report["pairwise"]] == [["alice", "bob"], ["alice", "carol"],
                                                                   ["bob", "carol"]]
    assert [pair["agreement"] for pair in report["pairwise"]] == [0.75, 0.0, 0.0]
    # (3 + 0 + 0) agreeing of (4 + 1 + 1) shared, not the unweighted mean 0.25
    assert report["mean_pairwise_agreement"] == pytest.approx(0.5)
    assert report["items"] == 5
    assert report["items_with_overlap"] == 4


def test_pairs_without_shared_items_are_left_out():
    report = label_report([judgment("alice", "i1", "A"), judgment("bob", "i2", "A")])
    assert report["pairwise"] == []
    assert report["mean_pairwise_agreement"] is None
    assert report["fleiss_kappa"] is None


def test_repeated_judgment_uses_the_last_one_for_agreement():
    report = label_report([
        judgment("alice", "i1", "B", a_response=1),  # response 2, superseded
        judgment("bob", "i1", "A", a_response=1),
        judgment("alice", "i1", "A", a_response=1),  # response 1, agrees with bob
    ])
    assert report["pairwise"][0]["agreement"] == 1.0
    assert report["pairwise"][0]["shared_items"] == 1
    assert report["per_annotator"]["alice"]["judgments"] == 2  # counts keep every judgment


def test_per_annotator_counts_sorted_by_name():
    report = label_report([
        judgment("zoe", "i1", "A"), judgment("zoe", "i2", "tie"), judgment("zoe", "i3", "both_bad"),
        judgment("adam", "i1", "B"), judgment("adam", "i2", "B"),
    ])
    assert list(report["per_annotator"]) == ["adam", "zoe"]
    assert report["per_annotator"]["adam"] == {"judgments": 2, "A": 0, "B": 2, "tie": 0, "both_bad": 0}
    assert report["per_annotator"]["zoe"] == {"judgments": 3, "A": 1, "B": 0, "tie": 1, "both_bad": 1}
    assert report["choices"] == {"A": 1, "B": 2, "tie": 1, "both_bad": 1}
    assert report["judgments"] == 5


def test_tie_and_both_bad_rates():
    choices = ["A", "B", "tie", "tie", "both_bad", "A", "B", "A"]
    report = label_report([judgment("alice", f"i{n}", choice) for n, choice in enumerate(choices)])
    assert report["tie_rate"] == pytest.approx(2 / 8)
    assert report["both_bad_rate"] == pytest.approx(1 / 8)


def test_position_bias_counts_decisive_judgments_only():
    # 9 of 10 decisive judgments chose A, whatever response A showed; ties do not count.
    judgments = [judgment("alice", f"a{n}", "A", a_response=1 + n % 2) for n in range(6)]
    judgments += [judgment("bob", f"b{n}", "A") for n in range(3)] + [judgment("bob", "b9", "B")]
    judgments += [judgment("bob", "t1", "tie"), judgment("bob", "t2", "both_bad")]
    bias = label_report(judgments)["position_bias"]
    assert bias["decisive"] == 10
    assert bias["a_share"] == pytest.approx(0.9)
    assert bias["p_value"] == pytest.approx(0.021484375)
    assert bias["per_annotator"]["alice"] == {"decisive": 6, "a_share": 1.0, "p_value": pytest.approx(2 / 64)}
    assert bias["per_annotator"]["bob"] == {"decisive": 4, "a_share": 0.75, "p_value": pytest.approx(10 / 16)}


def test_position_bias_without_decisive_judgments():
    bias = label_report([judgment("alice", "i1", "tie")])["position_bias"]
    assert bias["decisive"] == 0
    assert bias["a_share"] is None
    assert bias["p_value"] == 1.0


def test_model_wins_follow_the_chosen_position():
    judgments = [
        judgment("alice", "i1", "B", model_a="sft", model_b="dpo"),  # dpo wins
        judgment("alice", "i2", "A", model_a="dpo", model_b="sft"),  # dpo wins
        judgment("bob", "i1", "A", model_a="sft", model_b="dpo"),    # sft wins
        judgment("bob", "i2", "tie", model_a="dpo", model_b="sft"),
        judgment("bob", "i3", "both_bad", model_a="sft", model_b="dpo"),
        judgment("bob", "i4", "A", model_a="sft", model_b="sft"),    # same model: skipped
        judgment("bob", "i5", "A", model_a=None, model_b="dpo"),     # unknown model: skipped
        judgment("carol", "i6", "B", model_a="base", model_b="sft"),
    ]
    models = label_report(judgments)["models"]
    assert models == [
        {"model_1": "base", "model_2": "sft", "wins_1": 0, "wins_2": 1, "ties": 0, "both_bad": 0, "n": 1,
         "win_rate_1": 0.0},
        {"model_1": "dpo", "model_2": "sft", "wins_1": 2, "wins_2": 1, "ties": 1, "both_bad": 1, "n": 5,
         "win_rate_1": pytest.approx(2.5 / 4)},
    ]


def test_model_win_rate_undefined_when_only_both_bad():
    [row] = label_report([judgment("a", "i", "both_bad", model_a="x", model_b="y")])["models"]
    assert row["n"] == 1
    assert row["win_rate_1"] is None


def test_no_model_ids_gives_empty_model_list():
    assert label_report([judgment("alice", "i1", "A")])["models"] == []


def test_empty_report_is_json_serialisable():
    report = label_report([])
    assert report["judgments"] == 0 and report["items"] == 0 and report["items_with_overlap"] == 0
    assert report["tie_rate"] == 0.0 and report["both_bad_rate"] == 0.0
    assert report["position_bias"]["a_share"] is None
    assert report["mean_pairwise_agreement"] is None and report["fleiss_kappa"] is None
    assert json.loads(json.dumps(report)) == report


def test_full_report_is_json_serialisable():
    report = label_report([
        judgment("alice", "i1", "A", model_a="x", model_b="y"), judgment("bob", "i1", "B", 2, "y", "x"),
    ])
    assert json.loads(json.dumps(report)) == report


# ------------------------------------------------------------------------------------------------ text


def test_format_report_shows_key_numbers_and_na():
    judgments = [judgment("alice", "i1", "A", a_response=1), judgment("bob", "i1", "B", a_response=2),
                 judgment("alice", "i2", "tie"), judgment("bob", "i3", "both_bad")]
    text = format_report(label_report(judgments))
    assert "Judgments: 4" in text
    assert "Items: 3 (1 judged by 2 or more annotators)" in text
    assert "Tie rate: 0.250 (1 of 4)" in text
    assert "Both-bad rate: 0.250 (1 of 4)" in text
    assert "| alice | 2 | 1 | 0 | 1 | 0 | 1.000 | 1.000 |" in text
    assert "Mean pairwise agreement: 1.000" in text
    assert "| alice / bob | 1 | 1.000 | n/a |" in text  # one shared item: kappa undefined
    assert "Fleiss' kappa: n/a" in text
    assert "no sign of position bias" in text
    assert "## Models" not in text


def test_format_report_flags_position_bias():
    judgments = [judgment("alice", f"i{n}", "A") for n in range(9)] + [judgment("alice", "i9", "B")]
    text = format_report(label_report(judgments))
    assert "A chosen 90% of 10 decisive judgments (p=0.021): annotators may favour the left (A) side." in text
    text = format_report(label_report([judgment("alice", f"i{n}", "B") for n in range(12)]))
    assert "(p<0.001): annotators may favour the right (B) side." in text


def test_format_report_model_table():
    judgments = [judgment("alice", "i1", "B", model_a="sft", model_b="dpo"),
                 judgment("alice", "i2", "tie", model_a="sft", model_b="dpo")]
    text = format_report(label_report(judgments))
    assert "## Models" in text
    assert "| dpo | sft | 1 | 0 | 1 | 0 | 2 | 0.750 |" in text


def test_format_report_empty():
    text = format_report(label_report([]))
    assert "Judgments: 0" in text
    assert "position bias n/a" in text
    assert "Fleiss' kappa: n/a" in text
    assert "No item was judged by two annotators" in text


def test_format_report_escapes_pipes_in_names():
    text = format_report(label_report([judgment("a|b", "i1", "A")]))
    assert "| a\\|b | 1 |" in text
