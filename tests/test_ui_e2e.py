"""Label -> train: a tiny model writes pairs on the fly, two annotators label them through the app, and a recipe
trains a reward model and DPO straight from the label database (`dataset: {labels: ...}`)."""

from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

from align.cli import main  # noqa: E402
from align.labelling.store import LabelStore, read_label_rows  # noqa: E402
from tests.conftest import tiny_recipe  # noqa: E402
from align.ui.label_process import USERS, LabelServer  # noqa: E402


@pytest.mark.slow
def test_labels_from_the_app_train_reward_and_dpo(tiny_llama, tmp_path):
    db = tmp_path / "labels.db"
    args = ["--prompts", "bundled:prefs_train", "--models", str(tiny_llama), "--db", str(db), "--max-new-tokens", "10",
            "--temperature", "1.0"]
    with LabelServer(args, tmp_path / "server.log") as server:
        for name in ("alice", "bob"):
            client = Client(server.url, auth=(name, USERS[name]), verbose=False)
            for n in range(8):
                pair = client.predict(api_name="/next_pair")
                assert pair["text_a"] != pair["text_b"]  # one model, two different samples
                choice = "tie" if n == 7 else ("A" if len(pair["text_a"]) <= len(pair["text_b"]) else "B")
                client.predict(item_id=pair["item_id"], choice=choice, reason="", api_name="/submit_label")

    judgments = LabelStore(db).judgments()
    assert len(judgments) == 16 and len({j["item_id"] for j in judgments}) == 16
    assert {j["model_a"] for j in judgments} == {str(tiny_llama)}
    rows = read_label_rows(db)
    assert len(rows) == 14  # ties are not training pairs
    assert all(len(r["chosen"][0]["content"]) <= len(r["rejected"][0]["content"]) for r in rows)

    recipe = tiny_recipe(tiny_llama, tmp_path / "runs", ["reward", "dpo"],
                         reward={"dataset": {"labels": str(db)}, "eval_dataset": None},
                         dpo={"dataset": f"labels:{db}"})
    path = tmp_path / "from-labels.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) == 0
    for stage in ("reward", "dpo"):
        record = json.loads((tmp_path / "runs" / "tiny" / stage / "stage.json").read_text())
        assert (tmp_path / "runs" / "tiny" / stage / "adapter" / "adapter_config.json").is_file()
    assert record["metrics"]["train_pairs"] == 14
