"""The bad-input catalogue: each case goes through `align run` as a user would, and must end in one clear error
(exit 2, no traceback) naming the file, row and field or the recipe key, before anything trains: the run
directory is never even created.

    python -m pytest tests/test_bad_inputs.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from align.cli import main
from align.labelling.store import LabelStore
from tests.conftest import tiny_recipe

pytestmark = pytest.mark.fault("bad input")

GOOD_PREF = {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."}
USER, BOT = "user", "assistant"


def jsonl(*rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def msg(role, content):
    return {"role": role, "content": content}


def prefs_file(*rows):
    """dpo.dataset from a file holding these rows (after one good row, so the bad one is row 2)."""
    return {"files": {"prefs.jsonl": jsonl(GOOD_PREF, *rows)}, "dpo": {"dataset": "{dir}/prefs.jsonl"}}


def demos_file(*rows):
    return {"files": {"demos.jsonl": jsonl({"prompt": "Hi", "completion": "Hello."}, *rows)},
            "sft": {"dataset": "{dir}/demos.jsonl"}}


# (case id, how the recipe and files differ from a good sft -> dpo run, what the one error must say)
CATALOGUE = [
    ("missing column", prefs_file({"prompt": "Hi", "chosen": "Hello."}),
     ["prefs.jsonl: row 2: missing field 'rejected'"]),
    ("missing prompt column", demos_file({"completion": "Hello."}),
     ["demos.jsonl: row 2: missing field 'prompt'"]),
    ("empty chosen", prefs_file({"prompt": "Hi", "chosen": "  ", "rejected": "Go away."}),
     ["prefs.jsonl: row 2: field 'chosen' is empty"]),
    ("empty rejected", prefs_file({"prompt": "Hi", "chosen": "Hello.", "rejected": ""}),
     ["prefs.jsonl: row 2: field 'rejected' is empty"]),
    ("chosen equals rejected", prefs_file({"prompt": "Hi", "chosen": "Hello.", "rejected": " Hello.\n"}),
     ["prefs.jsonl: row 2: 'chosen' and 'rejected' are identical"]),
    ("non-string content", demos_file({"messages": [msg(USER, "Hi"), msg(BOT, 42)]}),
     ["demos.jsonl: row 2: field 'messages' message 2: content must be a string"]),
    ("non-string answer", prefs_file({"prompt": "Hi", "chosen": 3, "rejected": "4"}),
     ["prefs.jsonl: row 2: field 'chosen' must be a string or a list of messages, got int"]),
    ("unknown role", demos_file({"messages": [msg(USER, "Hi"), msg("bot", "Hello.")]}),
     ["demos.jsonl: row 2: field 'messages' message 2: role 'bot' is not one of"]),
    ("wrong turn order", demos_file({"messages": [msg(BOT, "Hello."), msg(USER, "Hi"), msg(BOT, "Bye.")]}),
     ["demos.jsonl: row 2: field 'messages' message 1: expected role 'user'"]),
    ("conversation ends with the user", demos_file({"messages": [msg(USER, "Hi"), msg(BOT, "Hello."), msg(USER, "?")]}),
     ["demos.jsonl: row 2: field 'messages' must end with an assistant message"]),
    ("not JSON", {"files": {"prefs.jsonl": jsonl(GOOD_PREF) + "{'prompt': 'single quotes'}\n"},
                  "dpo": {"dataset": "{dir}/prefs.jsonl"}},
     ["prefs.jsonl: row 2: not valid JSON"]),
    # The DPO prompt is too long: refused before SFT, the stage before it, spends a second.
    ("prompt longer than max_length",
     {**prefs_file({"prompt": "tell me a story " * 40, "chosen": "No.", "rejected": "Yes."}),
      "dpo": {"dataset": "{dir}/prefs.jsonl", "max_length": 64}},
     ["prefs.jsonl: row 2: the prompt is", "but max_length is 64"]),
    ("unknown recipe key", {"sft": {"learning_rat": 1e-4}}, ["sft.learning_rat: unknown key", "did you mean learning_rate"]),
    ("unknown top-level key", {"top": {"modle": {"name_or_path": "x"}}}, ["modle: unknown key"]),
    ("wrong type", {"lora": {"r": "eight"}}, ["lora.r"]),
    ("wrong type in a trl key", {"dpo": {"beta": "strong"}}, ["dpo.beta: Input should be a valid number", "'strong'"]),
    ("impossible value", {"lora": {"r": 0}}, ["lora.r"]),
    ("reference to a missing recipe value", {"dpo": {"learning_rate": "${sft.lr}"}}, ["sft.lr", "dpo.learning_rate"]),
    ("stage needing a missing stage", {"top": {"stages": ["sft", "dpo", "eval"]}}, ["add 'reward'"]),
    ("eval baseline that is not a stage", {"top": {"stages": ["reward", "dpo", "eval"]}}, ["eval.baseline"]),
    ("stages out of order", {"top": {"stages": ["dpo", "sft"]}}, ["must follow the order"]),
    ("model path that does not exist", {"model": {"name_or_path": "{dir}/no-such-model"}},
     ["model.name_or_path", "no-such-model is not a model directory"]),
    ("relative model path with a typo (not a hub id)", {"model": {"name_or_path": "tests/no-such-model"}},
     ["tests/no-such-model is not a model directory"]),
    ("tokenizer with no chat template and no EOS", {"model": {"name_or_path": "{no_eos_model}"}},
     ["has no EOS token", "no chat template either"]),
    ("chat template that does not render", {"model": {"chat_template": "{% for m in messages %}{{ m.content }}"}},
     ["model.chat_template fails on a two-turn conversation", "TemplateSyntaxError"]),
    ("data file that does not exist", {"dpo": {"dataset": "{dir}/nowhere.jsonl"}}, ["nowhere.jsonl: file not found"]),
    ("empty data file", {"files": {"empty.jsonl": "\n"}, "sft": {"dataset": "{dir}/empty.jsonl"}},
     ["empty.jsonl: no rows"]),
    ("zero usable rows: labels that are all ties", {"labels": ["tie", "both_bad"], "dpo": {"dataset": "labels:{dir}/labels.db"}},
     ["labels.db: no A/B judgments or corrections yet"]),
    ("zero usable rows: every reward pair over max_length",
     {"top": {"stages": ["reward"]}, "reward": {"max_length": 44, "eval_dataset": None,
                                                "dataset": {"bundled": "prefs_train", "limit": 4}}},
     ["all 4 rows are longer than max_length=44", "nothing to train on"]),
    ("labels file that is not a label database", {"files": {"other.db": "not sqlite"},
                                                  "dpo": {"dataset": "labels:{dir}/other.db"}},
     ["other.db: not a label database"]),
]


@pytest.fixture(scope="module")
def no_eos_model(tiny_gpt2, tmp_path_factory) -> Path:
    """tiny-gpt2 (no chat template) with its EOS token removed from the tokenizer."""
    out = tmp_path_factory.mktemp("no-eos") / "model"
    shutil.copytree(tiny_gpt2, out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    for key in ("eos_token", "bos_token", "pad_token", "unk_token"):
        config.pop(key, None)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def fill(value, names: dict):
    if isinstance(value, str):
        for name, replacement in names.items():
            value = value.replace("{" + name + "}", replacement)
        return value
    if isinstance(value, dict):
        return {k: fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, names) for v in value]
    return value


def labelled(path: Path, choices: list[str]) -> None:
    store = LabelStore(path)
    store.add_items([{"prompt": [msg(USER, f"q{i}")], "response_1": f"a{i}", "response_2": f"b{i}"}
                     for i in range(len(choices))], "test")
    for choice in choices:
        store.submit("ann", store.next_assignment("ann")["item_id"], choice)
    store.close()


@pytest.mark.parametrize(("change", "expected"), [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_bad_input_is_refused_with_one_clear_error_before_anything_trains(change, expected, tiny_llama, no_eos_model,
                                                                          tmp_path, capsys):
    names = {"dir": str(tmp_path), "no_eos_model": str(no_eos_model)}
    change = fill(change, names)
    for name, text in change.pop("files", {}).items():
        (tmp_path / name).write_text(text)
    if "labels" in change:
        labelled(tmp_path / "labels.db", change.pop("labels"))
    top = change.pop("top", {})
    recipe = tiny_recipe(tiny_llama, tmp_path / "runs", ["sft", "dpo"], **change)
    recipe.update(top)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))

    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("align run: error:") and "Traceback" not in err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert not (tmp_path / "runs").exists(), "nothing should have started"
