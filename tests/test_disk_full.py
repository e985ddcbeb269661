"""A full disk at each write point: a checkpoint, an adapter save, the export, a stage's record and a label.
Each stops with a clear message, keeps every complete checkpoint and acknowledged label, is never recorded as
finished, and the same command run again (space freed) carries on. Writes fail with ENOSPC at chosen points."""

from __future__ import annotations

import errno
import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from align.cli import main
from align.labelling.store import LabelError, LabelStore, check_database
from tests.conftest import tiny_recipe


def fail_when(monkeypatch, module, name: str, marker: str) -> list[str]:
    """Make module.name raise ENOSPC whenever the path it writes contains `marker`; returns the paths refused."""
    real, refused = getattr(module, name), []

    def full_disk(tensors, filename, *args, **kwargs):
        if marker in str(filename):
            refused.append(str(filename))
            Path(filename).write_bytes(b"\0" * 64)  # what a write cut off by a full disk leaves: a fragment
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(module, name, full_disk)
    return refused


@pytest.fixture
def recipe_file(tiny_llama, tmp_path):
    recipe = tiny_recipe(tiny_llama, tmp_path / "runs", ["sft", "export"])  # 4 steps, checkpoints at 2 and 4
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path, tmp_path / "runs" / "tiny"


@pytest.mark.fault("disk full")
@pytest.mark.parametrize("point, marker", [("checkpoint", "checkpoint-4"), ("adapter", ".adapter.tmp")])
def test_a_full_disk_while_training_keeps_the_last_checkpoint_and_the_rerun_finishes(recipe_file, monkeypatch,
                                                                                    capsys, point, marker):
    import peft.peft_model

    path, run = recipe_file
    refused = fail_when(monkeypatch, peft.peft_model, "safe_save_file", marker)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert refused and "no space left on the device (writing" in err and "run the same command again" in err
    assert not (run / "sft" / "stage.json").exists(), "a stage whose save failed is not finished"
    assert not (run / "sft" / "adapter").exists()
    kept = json.loads((run / "sft" / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert kept["global_step"] == 2

    monkeypatch.undo()  # space freed
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "continuing from checkpoint-" in out and (run / "sft" / "stage.json").is_file()
    assert (run / "export" / "stage.json").is_file()


@pytest.mark.fault("disk full")
def test_a_full_disk_while_exporting_is_never_a_finished_export(recipe_file, monkeypatch, capsys):
    import transformers.modeling_utils

    path, run = recipe_file
    refused = fail_when(monkeypatch, transformers.modeling_utils, "safe_save_file", ".model.tmp-")
    assert main(["run", str(path)]) == 2
    assert refused and "no space left on the device" in capsys.readouterr().err
    assert (run / "sft" / "stage.json").is_file() and not (run / "export" / "stage.json").exists()
    assert not (run / "export" / "model").exists()

    monkeypatch.undo()
    assert main(["run", str(path)]) == 0
    assert list((run / "export").glob("model.tmp-*.unfinished-*")), "the partial export is set aside, not deleted"
    assert json.loads((run / "export" / "stage.json").read_text())["metrics"]["max_logit_diff"] <= 1e-3


@pytest.mark.fault("disk full")
def test_a_full_disk_while_recording_a_finished_stage_leaves_it_unfinished(recipe_file, monkeypatch, capsys):
    path, run = recipe_file
    real = Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name.startswith(".stage.json.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    assert main(["run", str(path)]) == 2
    assert "no space left on the device (writing" in capsys.readouterr().err
    assert not (run / "sft" / "stage.json").exists() and (run / "sft" / "adapter").is_dir()
    monkeypatch.undo()
    assert main(["run", str(path)]) == 0 and (run / "sft" / "stage.json").is_file()


@pytest.mark.fault("disk full")
def test_a_full_disk_refuses_a_label_and_keeps_every_acknowledged_one(tmp_path, record_property):
    db = tmp_path / "labels.db"
    store = LabelStore(db)
    store.add_items([{"prompt": [{"role": "user", "content": f"question {i} " + "x" * 200}], "response_1": "a" * 300,
                      "response_2": "b" * 300} for i in range(400)], "t")
    pages = store.connection().execute("PRAGMA page_count").fetchone()[0]
    store.connection().execute(f"PRAGMA max_page_count = {pages + 2}")  # the disk has room for two more pages
    acked, refusal = [], None
    for _ in range(400):
        shown = store.next_assignment("alice")
        try:
            acked.append(store.submit("alice", shown["item_id"], "A", "r" * 1500))
        except LabelError as err:
            refusal = str(err)
            break
    assert refusal and "the disk is full, so this was not saved" in refusal and acked
    record_property("labels_acknowledged", len(acked))
    store.connection().execute("PRAGMA max_page_count = 1073741823")  # space freed: the same store goes on
    shown = store.next_assignment("alice")
    acked.append(store.submit("alice", shown["item_id"], "B"))
    store.close()
    kept = {j["judgment_id"] for j in LabelStore(db).judgments()}
    record_property("labels_lost", len(set(acked) - kept))
    assert set(acked) == kept and check_database(db)["integrity"] == "ok"
    with pytest.raises(sqlite3.OperationalError):  # other SQLite errors still surface as themselves
        with LabelStore(db).transaction() as writer:
            writer.execute("INSERT INTO no_such_table VALUES (1)")
