"""Gold-judge statistics, reward-hacking detection and their rendering, against hand-computed values."""

from __future__ import annotations

import html
import json

import pytest

from align.eval_metrics import (
    gold_lines, gold_table, hacking_message, macro_difference, macro_rate, mcnemar_exact, paired_difference, pass_rate,
    reward_hacking_start, wilson_interval,
)
from align.report import plot_proxy_vs_gold, proxy_gold_points, write_report


# ---------------------------------------------------------------- intervals and tests


def test_wilson_interval_by_hand():
    low, high = wilson_interval(7, 10)
    assert low == pytest.approx(0.3968, abs=1e-4) and high == pytest.approx(0.8922, abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0  # stays inside [0, 1]
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_pass_rate_is_the_mean_with_a_wilson_interval_on_the_sum():
    rate = pass_rate([1, 1, 0, 1, 0.5])
    assert rate["rate"] == pytest.approx(0.7) and rate["n"] == 5
    assert (rate["low"], rate["high"]) == pytest.approx(wilson_interval(3.5, 5))
    with pytest.raises(ValueError):
        pass_rate([])


def test_mcnemar_exact_by_hand():
    assert mcnemar_exact(0, 6) == pytest.approx(0.03125)  # 2 * (1/2)^6
    assert mcnemar_exact(1, 9) == pytest.approx(0.021484375)  # 2 * (1 + 10) / 1024
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_paired_difference_on_binary_scores_uses_exact_mcnemar():
    a = [1] * 7 + [0] * 3
    b = [0] * 6 + [1, 0, 0, 1]  # a alone passes 6 prompts, b alone 1, both 1, neither 2
    result = paired_difference(a, b, resamples=2000, seed=3)
    assert result["test"] == "exact McNemar" and result["n"] == 10
    assert result["difference"] == pytest.approx(0.5)
    assert (result["a_only"], result["b_only"]) == (6, 1)
    assert result["p_value"] == mcnemar_exact(1, 6) == pytest.approx(0.125)  # 2 * (1 + 7) / 128
    assert result["low"] <= result["difference"] <= result["high"]
    assert paired_difference(a, b, resamples=2000, seed=3) == result  # seeded: the same figures every time


def test_paired_difference_on_graded_scores_uses_the_bootstrap():
    a = [0.5, 0.9, 0.7, 0.8, 0.6, 0.9]
    b = [0.4, 0.5, 0.6, 0.5, 0.6, 0.3]
    result = paired_difference(a, b, resamples=2000)
    assert result["test"] == "paired bootstrap"
    assert result["difference"] == pytest.approx(0.25)
    assert (result["a_only"], result["b_only"]) == (5, 0)  # one tie
    assert 0 < result["low"] <= result["difference"] <= result["high"]
    assert result["p_value"] <= 2 / 2000  # nearly every resample stays above 0; never reported as 0
    balanced = paired_difference([0.2, 0.8], [0.8, 0.2], resamples=500)
    assert balanced["difference"] == 0 and balanced["p_value"] == 1.0


def test_macro_rate_weighs_every_category_the_same():
    # category a: 1 of 2 pass; b: 4 of 4 pass -> (0.5 + 1.0) / 2, not 5 / 6
    assert macro_rate([1, 0, 1, 1, 1, 1], ["a", "a", "b", "b", "b", "b"]) == pytest.approx(0.75)


def test_macro_difference_by_hand_and_its_test():
    categories = ["small"] * 10 + ["large"] * 90
    a = [1] * 10 + [0] * 90  # the small category all right, the large all wrong
    b = [0] * 100
    figures = macro_difference(a, b, categories, resamples=2000)
    assert figures["difference"] == pytest.approx(0.5)  # (1.0 + 0.0) / 2, while the plain mean gives 0.1
    assert figures["low"] <= 0.5 <= figures["high"] and figures["categories"] == 2
    assert figures["p_value"] < 0.01  # ten prompts all one way: a swap of signs rarely gets that far
    same = macro_difference(a, a, categories, resamples=500)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    mixed = macro_difference([1, 0] * 50, [0, 1] * 50, ["x"] * 100, resamples=2000)
    assert mixed["difference"] == 0 and mixed["p_value"] > 0.5
    assert macro_difference(a, b, categories, resamples=300) == macro_difference(a, b, categories, resamples=300)
    with pytest.raises(ValueError):
        macro_difference([1], [1, 0], ["a"])


def test_paired_difference_rejects_mismatched_lists():
    with pytest.raises(ValueError):
        paired_difference([1, 0], [1])
    with pytest.raises(ValueError):
        paired_difference([], [])


# ---------------------------------------------------------------- reward hacking

GOLD_RISES_THEN_FALLS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.7, 0.6, 0.5, 0.4, 0.32]


def rows(proxy: list[float], gold: list[float]) -> list[dict]:
    return [{"step": 10 * i, "kl": 0.5 * i, "reward_mean": p, "gold_mean": g}
            for i, (p, g) in enumerate(zip(proxy, gold))]


def test_reward_hacking_flags_where_the_smoothed_gold_score_peaked():
    points = rows([0.1 * i for i in range(10)], GOLD_RISES_THEN_FALLS)
    found = reward_hacking_start(points)
    # window = 10 // 5 = 2; smoothed gold .3 .35 .45 .55 .65 .7 .65 .55 .45 .36 peaks at index 5 (step 50)
    assert found["step"] == 50
    assert found["gold_peak"] == pytest.approx(0.7) and found["gold_last"] == pytest.approx(0.36)
    assert found["proxy_at_peak"] == pytest.approx(0.45) and found["proxy_last"] == pytest.approx(0.85)
    assert (found["kl_at_peak"], found["kl_last"]) == (2.5, 4.5)
    assert hacking_message("ppo", points) == ("ppo: reward hacking: from step 50 the proxy reward rose 0.45 -> 0.85 "
                                              "while the gold score fell 0.70 -> 0.36 (KL 2.5 -> 4.5 nats)")
    # rows that logged no gold score (steps between gold evaluations) are skipped, not read as zeros
    gappy = [p for point in points for p in (point, {"step": point["step"] + 1, "kl": 9.0, "reward_mean": 5.0})]
    assert reward_hacking_start(gappy) == found


def test_no_reward_hacking_when_gold_keeps_up_or_proxy_falls_too():
    rising = [0.1 * i for i in range(10)]
    assert reward_hacking_start(rows(rising, [0.3 + 0.05 * i for i in range(10)])) is None
    assert reward_hacking_start(rows(rising[::-1], GOLD_RISES_THEN_FALLS)) is None
    small_dip = [0.5, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.69, 0.69]  # within the 0.02 tolerance
    assert reward_hacking_start(rows(rising, small_dip)) is None
    assert reward_hacking_start(rows([0.1, 0.9], [0.9, 0.1])) is None  # too short to judge
    assert hacking_message("ppo", rows(rising, small_dip)) is None


# ---------------------------------------------------------------- gold table and lines


def paired(difference: float, low: float, high: float, p: float) -> dict:
    return {"difference": difference, "low": low, "high": high, "p_value": p, "test": "exact McNemar",
            "a_only": 40, "b_only": 12, "n": 330}


def rate(value: float, low: float, high: float) -> dict:
    return {"rate": value, "low": low, "high": high, "n": 330}


GOLD = {
    "judges": ["align.judges:gold", "align.judges:correct"],
    "trained_by": ["reward model (reward stage)"],
    "judged_by": ["align.judges:gold", "align.judges:correct"],
    "models": ["online_dpo", "sft", "base"],
    "prompts": 330,
    "pass_rates": {
        "align.judges:gold": {"online_dpo": rate(0.612, 0.559, 0.662), "sft": rate(0.527, 0.473, 0.580),
                              "base": rate(0.4, 0.348, 0.454)},
        "align.judges:correct": {"online_dpo": rate(0.8, 0.754, 0.839), "sft": rate(0.79, 0.743, 0.83),
                                 "base": rate(0.7, 0.649, 0.746)},
    },
    "paired": {
        "align.judges:gold": {"vs_sft": paired(0.085, 0.041, 0.130, 0.0004),
                              "vs_base": paired(0.212, 0.16, 0.26, 1e-9)},
        "align.judges:correct": {"vs_sft": paired(0.01, -0.02, 0.04, 0.61), "vs_base": paired(0.1, 0.05, 0.15, 0.002)},
    },
    "categories": {"align.judges:gold": {
        "arithmetic": {"online_dpo": 0.7, "sft": 0.55, "base": 0.4, "n": 40},
        "<b>code</b>": {"online_dpo": 0.5, "sft": 0.5, "base": 0.25, "n": 8},
    }},
}


def test_gold_table_rows():
    table = gold_table(GOLD)
    assert table[0] == ("gold", "0.612 [0.559, 0.662]", "0.527 [0.473, 0.580]", "0.400 [0.348, 0.454]",
                        "+0.085 [+0.041, +0.130] p=0.0004", "+0.212 [+0.160, +0.260] p<0.0001")
    assert table[1][0] == "correct" and table[1][4] == "+0.010 [-0.020, +0.040] p=0.6100"
    no_sft = {**GOLD, "models": ["dpo", "base"]}
    assert [len(row) for row in gold_table(no_sft)] == [4, 4]  # judge, two rates, final - base


def test_gold_lines_are_aligned_without_trailing_spaces():
    lines = gold_lines(GOLD)
    assert all(line == line.rstrip() for line in lines)
    header = next(line for line in lines if "online_dpo - sft" in line)
    gold_row = next(line for line in lines if line.split()[0] == "gold" and "+0.085" in line)
    assert header.index("online_dpo - sft") == gold_row.index("+0.085")  # columns line up
    assert any(line.strip() == "trained by: reward model (reward stage). Judged by: gold, correct" for line in lines)
    assert any("base / sft / online_dpo" in line for line in lines)
    assert any(line.split() == ["arithmetic", "n=40", "0.400", "/", "0.550", "/", "0.700"] for line in lines)
    assert not any("warning" in line for line in lines)
    kinds = {**GOLD, "macro": {"align.judges:gold": {
        "rates": {"online_dpo": 0.6, "sft": 0.45, "base": 0.3},
        "paired": {"vs_sft": paired(0.15, 0.1, 0.2, 0.0002), "vs_base": paired(0.3, 0.25, 0.35, 0.0001)}}},
        "categories": {"align.judges:gold": {"harmful": {
            "online_dpo": 0.7, "sft": 0.2, "base": 0.1, "n": 60,
            "paired": {"vs_sft": paired(0.5, 0.4, 0.6, 0.0001), "vs_base": paired(0.6, 0.5, 0.7, 0.0001)}}}}}
    lines = gold_lines(kinds)
    assert any("macro average over categories (gold" in line and "sft 0.450" in line for line in lines)
    assert any(line.strip().startswith("online_dpo - sft: +0.150 [+0.100, +0.200] p=0.0002") for line in lines)
    harmful = next(line for line in lines if line.split()[0] == "harmful")
    assert "- sft +0.500 (p=0.0001)" in harmful and "- base +0.600" in harmful
    graded_by_itself = {**GOLD, "trained_by": ["online_dpo: align.judges:correct"],
                        "not_independent": ["align.judges:correct"]}
    assert any("warning: correct also gave a training signal" in line for line in gold_lines(graded_by_itself))


# ---------------------------------------------------------------- report


def test_plot_proxy_vs_gold_writes_a_png(tmp_path):
    points = rows([0.1 * i for i in range(10)], GOLD_RISES_THEN_FALLS)
    path = plot_proxy_vs_gold("ppo", points, tmp_path)
    assert path == tmp_path / "ppo-proxy-vs-gold.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_proxy_vs_gold("ppo", points[:1], tmp_path / "none") is None


def test_proxy_gold_points_keeps_rows_with_all_three_numbers():
    log = [{"step": 1, "kl": 0.1, "reward_mean": 0.2, "gold_mean": 0.3}, {"step": 2, "kl": 0.1, "reward_mean": 0.2},
           {"step": 3, "kl": None, "reward_mean": 0.2, "gold_mean": 0.3}, {"loss": 1.0}]
    assert proxy_gold_points(log) == log[:1]


def test_report_shows_gold_table_and_proxy_vs_gold_plot(tmp_path):
    (tmp_path / "ppo").mkdir()
    (tmp_path / "ppo" / "stage.json").write_text(json.dumps({"seconds": 5, "metrics": {"final_kl": 4.5}}))
    points = rows([0.1 * i for i in range(10)], GOLD_RISES_THEN_FALLS)
    (tmp_path / "ppo" / "metrics.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    (tmp_path / "eval").mkdir()
    metrics = {"policy": "online_dpo", "baseline": "sft", "prompts": 330, "win_rate": 0.6, "gold": GOLD}
    (tmp_path / "eval" / "stage.json").write_text(json.dumps({"seconds": 1, "metrics": metrics}))

    page = write_report(tmp_path).read_text()
    assert "Gold judges" in page and page.index("Gold judges") < page.index("Evaluation: online_dpo vs sft")
    assert all(html.escape(cell) in page for row in gold_table(GOLD) for cell in row)
    assert "&lt;b&gt;code&lt;/b&gt;" in page and "<b>code</b>" not in page  # category names escaped
    assert 'src="report/ppo-proxy-vs-gold.png"' in page and (tmp_path / "report" / "ppo-proxy-vs-gold.png").is_file()
    assert html.escape(hacking_message("ppo", points)) in page
