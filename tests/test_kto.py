"""The kto stage: trl's KTOTrainer on unpaired feedback (KTO rows, or a label database's chat ratings and
corrections), continuing the SFT adapter like DPO does."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from align.config import DataSource, parse_recipe
from align.data import load_preferences
from align.labelling.store import LabelStore
from align.pipeline import run_recipe
from tests.conftest import REPO, tiny_recipe


def kto_rows(limit: int) -> list[dict]:
    """Bundled preference pairs as unpaired feedback: the chosen answer rated up, the rejected one down."""
    rows = []
    for line in (REPO / "align" / "bundled" / "prefs_train.jsonl").read_text().splitlines()[:limit]:
        pair = json.loads(line)
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        rows.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    return rows


def test_kto_continues_sft_on_rated_answers(tiny_llama, tmp_path):
    data = tmp_path / "kto.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in kto_rows(6)))
    few = {"max_steps": 3, "per_device_train_batch_size": 4, "logging_steps": 1, "save_steps": 2, "max_length": 128}
    recipe = parse_recipe(tiny_recipe(tiny_llama, tmp_path / "runs", ["sft", "kto", "export"],
                                      kto={"dataset": str(data), **few}))
    records = run_recipe(recipe)
    run = tmp_path / "runs" / "tiny"
    metrics = records["kto"]["metrics"]
    assert metrics["desirable_rows"] == 6 and metrics["undesirable_rows"] == 6
    sft = load_file(run / "sft/adapter/adapter_model.safetensors")
    kto = load_file(run / "kto/adapter/adapter_model.safetensors")
    assert sft.keys() == kto.keys() and any(not torch.equal(sft[k], kto[k]) for k in sft), "KTO must move the adapter"
    logged = [json.loads(line) for line in (run / "kto" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if "loss" in row] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in logged if "loss" in row)
    config = json.loads((run / "kto" / "trl_config.json").read_text())
    assert config["class"] == "trl.KTOConfig" and config["train_sampling_strategy"] == "sequential"
    assert records["export"]["metrics"]["merged_from"].endswith("kto/adapter")


def test_chat_feedback_in_a_label_database_trains_sft_and_kto(tiny_llama, tmp_path):
    db = tmp_path / "labels.db"
    store = LabelStore(db)
    pairs, _ = load_preferences(DataSource.model_validate({"bundled": "prefs_train", "limit": 4}))
    rated = [(p["prompt"], answer[0]["content"], label) for p in pairs
             for answer, label in ((p["chosen"], True), (p["rejected"], False))]
    for i, (prompt, reply, label) in enumerate(rated):
        reply_id = f"r{i}"
        store.add_reply(reply_id, "alice", "runs/x/sft", prompt, reply,
                        {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64, "seed": i})
        store.rate_reply(reply_id, "alice", 1 if label else -1)
        if not label:
            store.correct_reply(reply_id, "alice", f"A better answer, number {i}.")
    store.close()
    few = {"max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1, "save_steps": 2, "max_length": 128}
    recipe = parse_recipe(tiny_recipe(tiny_llama, tmp_path / "runs", ["sft", "kto"],
                                      sft={"dataset": f"labels:{db}", **few}, kto={"dataset": f"labels:{db}", **few}))
    records = run_recipe(recipe)
    assert records["sft"]["metrics"]["train_loss"] > 0
    # 8 ratings (4 up, 4 down) and 4 corrections (wanted answers)
    assert records["kto"]["metrics"]["desirable_rows"] == 8 and records["kto"]["metrics"]["undesirable_rows"] == 4


@pytest.mark.fault("bad input")
@pytest.mark.parametrize("settings, message", [
    ({"per_device_train_batch_size": 1}, "KTO needs 2 or more per batch"),
    ({"train_sampling_strategy": "group_by_length"}, "batches must be 'sequential'"),
    ({"learnin_rate": 1e-4}, "did you mean learning_rate"),
])
def test_bad_kto_settings_fail_at_load_time(tiny_llama, tmp_path, settings, message):
    from align.config import RecipeError

    with pytest.raises(RecipeError, match=message):
        parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["sft", "kto"], kto={"dataset": "x.jsonl", **settings}))
    loss_without_kl = {"dataset": "x.jsonl", "per_device_train_batch_size": 1, "loss_type": "apo_zero_unpaired"}
    assert parse_recipe(tiny_recipe(tiny_llama, tmp_path, ["sft", "kto"], kto=loss_without_kl)).kto
