"""The eval stage with gold judges on tiny models: final policy, SFT and base each answer the held-out prompts,
every judge gives each a pass rate with an interval, the final policy gets paired differences to SFT and base,
categories are broken down, the report and summary show it, and the judges are named apart from what trained."""

from __future__ import annotations

import json

from align.config import parse_recipe
from align.pipeline import run_recipe, summary
from tests.conftest import tiny_recipe

JUDGES = ["align.judges:gold", "align.judges:concise"]


def test_gold_judges_compare_final_sft_and_base(tiny_llama, tmp_path):
    recipe = parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["sft", "reward", "dpo", "eval"],
                                      eval={"judges": JUDGES, "max_prompts": 6, "kl_prompts": 2},
                                      reward={"policy_check_prompts": 0}))
    records = run_recipe(recipe)
    gold = records["eval"]["metrics"]["gold"]
    assert gold["models"] == ["dpo", "sft", "base"] and gold["prompts"] == 6 and gold["judges"] == JUDGES
    for judge in JUDGES:
        for model in gold["models"]:
            rate = gold["pass_rates"][judge][model]
            assert rate["n"] == 6 and 0 <= rate["low"] <= rate["rate"] <= rate["high"] <= 1
        for other in ("vs_sft", "vs_base"):
            paired = gold["paired"][judge][other]
            assert paired["test"] == "exact McNemar" and 0 <= paired["p_value"] <= 1
            assert paired["low"] <= paired["difference"] <= paired["high"]
        assert sum(row["n"] for row in gold["categories"][judge].values()) == 6
    assert any("dpo: pairs" in signal for signal in gold["trained_by"]) and not gold["not_independent"]

    # the verdicts are the judges' own on the answers written to samples.jsonl
    from align.judges import concise

    rows = [json.loads(line) for line in (tmp_path / "tiny" / "eval" / "samples.jsonl").read_text().splitlines()]
    for model in ("policy", "sft", "base"):
        texts = [[{"role": "assistant", "content": row[f"{model}_answer"]}] for row in rows]
        assert [row[f"{model}_concise"] for row in rows] == concise([None] * len(rows), texts)
    text = summary(recipe, records)
    assert "gold judges on 6 held-out prompts" in text and "dpo - sft" in text and "dpo - base" in text
    assert "Gold judges" in (tmp_path / "tiny" / "report.html").read_text()
