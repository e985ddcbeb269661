"""Memory that does not pile up across stages: each stage records its wall time and peak memory in stage.json,
nothing a stage loaded outlives it, and a later stage starts from the memory the one before it started from."""

from __future__ import annotations

import gc

from align.config import parse_recipe
from align.pipeline import run_recipe
from align.resources import StageResources, rss_bytes
from tests.conftest import tiny_recipe

# The first stage pays for importing trl, datasets and their kernels; later stages may add caches of a few MB
# (measured on this recipe: at most 0.04 GiB above the second stage's start with memory released between stages).
BASELINE_MARGIN_GIB = 0.1


def live_models() -> list:
    from transformers import PreTrainedModel, Trainer

    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, (PreTrainedModel, Trainer))]


def test_stages_record_their_peak_memory_and_give_it_back(tiny_llama, tmp_path):
    before = len(live_models())
    recipe = parse_recipe(tiny_recipe(tiny_llama, tmp_path / "runs", ["sft", "reward", "dpo", "eval", "export"]))
    records = run_recipe(recipe)
    for stage, record in records.items():
        usage = record["resources"]
        assert 0 < usage["rss_start_gib"] <= usage["rss_peak_gib"] and usage["seconds"] > 0, stage
        assert usage["rss_end_gib"] <= usage["rss_peak_gib"], stage
    assert len(live_models()) == before, "a stage's model, reference or trainer outlived it"
    starts = {stage: record["resources"]["rss_start_gib"] for stage, record in records.items()}
    for stage in ("dpo", "eval", "export"):  # after the first two stages warmed the imports
        assert starts[stage] - starts["reward"] < BASELINE_MARGIN_GIB, starts
    summary = (tmp_path / "runs" / "tiny" / "report.html").read_text()
    assert "peak memory (GiB)" in summary


def test_the_sampler_sees_a_peak_between_its_ends():
    with StageResources() as usage:
        block = bytearray(300 * 2**20)  # 300 MiB touched, then freed before the block ends
        block[:: 4096] = b"\1" * len(block[:: 4096])
        import time

        time.sleep(0.3)
        del block
    record = usage.record()
    assert record["rss_peak_gib"] - max(record["rss_start_gib"], record["rss_end_gib"]) > 0.2, record
    assert rss_bytes() > 0
