"""The dataset layouts people already have (align/formats.py): each is read into align's rows, each malformed row
gets a clear error naming file, row and field, and one recipe may mix layouts."""

from __future__ import annotations

import json

import pytest

import align.cli
from align.config import DataSource
from align.data import DataError, load_demonstrations, load_feedback, load_preferences, load_prompts

USER, ASSISTANT, SYSTEM = "user", "assistant", "system"


def write(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def source(path, **extra):
    return DataSource.model_validate({"path": path, **extra})


SHAREGPT = {"system": "Be brief.", "conversations": [
    {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
    {"from": "human", "value": "Capital of France?"}, {"from": "gpt", "value": "Paris."}]}
SHAREGPT_PAIR = {"conversations": [{"from": "human", "value": "2 + 2?"}],
                 "chosen": {"from": "gpt", "value": "4"}, "rejected": {"from": "gpt", "value": "5"}}
ALPACA = {"instruction": "Translate to French.", "input": "cat", "output": "chat", "system": "You translate.",
          "history": [["Translate dog.", "chien"]]}
ALPACA_PAIR = {"instruction": "Name a primary colour.", "input": "", "chosen": "Red.", "rejected": "Pink."}
ULTRAFEEDBACK = {"instruction": "Capital of Italy?", "completions": [
    {"response": "Milan.", "overall_score": 2.0}, {"response": "Rome.", "overall_score": 9.5},
    {"response": "Rome, I think.", "overall_score": 7.0}]}
KTO = [{"prompt": "Capital of Spain?", "completion": "Madrid.", "label": True},
       {"prompt": "Capital of Spain?", "completion": "Barcelona.", "label": False}]
OPENAI = {"messages": [{"role": "system", "content": "Be kind."},
                       {"role": "user", "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi"}]},
                       {"role": "assistant", "content": "Hi!", "weight": 1}]}
OPENAI_PAIR = {"input": {"messages": [{"role": "user", "content": "Best pet?"}]},
               "preferred_output": [{"role": "assistant", "content": "It depends on you."}],
               "non_preferred_output": [{"role": "assistant", "content": "Cats, obviously."}]}


def test_sharegpt_demonstrations_keep_system_and_history(tmp_path):
    [row], _ = load_demonstrations(source(write(tmp_path, [SHAREGPT])))
    assert [m["role"] for m in row["prompt"]] == [SYSTEM, USER, ASSISTANT, USER]
    assert row["prompt"][0]["content"] == "Be brief." and row["completion"] == [{"role": ASSISTANT, "content": "Paris."}]


def test_sharegpt_pairs_as_llama_factory_writes_them(tmp_path):
    [row], _ = load_preferences(source(write(tmp_path, [SHAREGPT_PAIR])))
    assert row["prompt"] == [{"role": USER, "content": "2 + 2?"}]
    assert row["chosen"][0]["content"] == "4" and row["rejected"][0]["content"] == "5"


def test_alpaca_with_input_system_and_history(tmp_path):
    [row], _ = load_demonstrations(source(write(tmp_path, [ALPACA])))
    assert row["prompt"] == [{"role": SYSTEM, "content": "You translate."}, {"role": USER, "content": "Translate dog."},
                             {"role": ASSISTANT, "content": "chien"},
                             {"role": USER, "content": "Translate to French.\n\ncat"}]
    assert row["completion"][0]["content"] == "chat"


def test_alpaca_pairs(tmp_path):
    [row], _ = load_preferences(source(write(tmp_path, [ALPACA_PAIR])))
    assert row["prompt"] == [{"role": USER, "content": "Name a primary colour."}]
    assert (row["chosen"][0]["content"], row["rejected"][0]["content"]) == ("Red.", "Pink.")


def test_ultrafeedback_takes_the_best_against_the_lowest_rated(tmp_path):
    [row], _ = load_preferences(source(write(tmp_path, [ULTRAFEEDBACK])))
    assert (row["chosen"][0]["content"], row["rejected"][0]["content"]) == ("Rome.", "Milan.")


def test_kto_rows_are_feedback_and_a_false_one_is_no_demonstration(tmp_path):
    rows, _ = load_feedback(source(write(tmp_path, KTO)))
    assert [r["label"] for r in rows] == [True, False] and rows[1]["completion"][0]["content"] == "Barcelona."
    with pytest.raises(DataError, match=r"row 2: a row labelled false .* kto stage"):
        load_demonstrations(source(write(tmp_path, KTO, "kto.jsonl")))
    with pytest.raises(DataError, match="every row is labelled true; .* rated down"):
        load_feedback(source(write(tmp_path, KTO[:1], "up.jsonl")))


def test_openai_chat_with_system_turns_and_text_parts(tmp_path):
    [row], _ = load_demonstrations(source(write(tmp_path, [OPENAI])))
    assert row["prompt"] == [{"role": SYSTEM, "content": "Be kind."}, {"role": USER, "content": "Say hi"}]
    assert row["completion"] == [{"role": ASSISTANT, "content": "Hi!"}]


def test_openai_preference_rows(tmp_path):
    [row], _ = load_preferences(source(write(tmp_path, [OPENAI_PAIR])))
    assert row["chosen"][0]["content"] == "It depends on you." and row["prompt"][0]["content"] == "Best pet?"


def test_mapped_columns(tmp_path):
    path = write(tmp_path, [{"question": "1 + 1?", "good": "2", "bad": "3"}])
    [row], _ = load_preferences(source(path, columns={"prompt": "question", "chosen": "good", "rejected": "bad"}))
    assert (row["prompt"][0]["content"], row["chosen"][0]["content"]) == ("1 + 1?", "2")
    with pytest.raises(DataError, match=r"row 1: missing column 'answer' \(mapped to 'chosen'"):
        load_preferences(source(path, columns={"prompt": "question", "chosen": "answer", "rejected": "bad"}))
    with pytest.raises(ValueError, match="cannot map \\['score'\\]"):
        source(path, columns={"score": "x"})


def test_every_layout_gives_prompts_for_online_stages(tmp_path):
    rows, _ = load_prompts(source(write(tmp_path, [SHAREGPT, ALPACA, ULTRAFEEDBACK, OPENAI_PAIR, *KTO])))
    assert [r["prompt"][-1]["content"] for r in rows] == [
        "Capital of France?", "Translate to French.\n\ncat", "Capital of Italy?", "Best pet?",
        "Capital of Spain?", "Capital of Spain?"]


MALFORMED = [
    ("sharegpt speaker", load_demonstrations, {"conversations": [{"from": "narrator", "value": "x"}]},
     "field 'conversations' turn 1: speaker 'narrator' is not one of"),
    ("sharegpt tool call", load_demonstrations,
     {"conversations": [{"from": "human", "value": "x"}, {"from": "function_call", "value": "{}"}]},
     r"turn 2: a tool-call turn \('function_call'\)"),
    ("sharegpt pair without rejected", load_preferences,
     {k: v for k, v in SHAREGPT_PAIR.items() if k != "rejected"}, r"missing field 'rejected' \(a ShareGPT pair"),
    ("alpaca without output", load_demonstrations, {"instruction": "Do it."}, "needs 'output'"),
    ("alpaca history", load_demonstrations, {**ALPACA, "history": [["only one"]]}, "field 'history' must be"),
    ("alpaca empty instruction", load_demonstrations, {"instruction": " ", "output": "x"}, "field 'instruction'"),
    ("ultrafeedback equal ratings", load_preferences,
     {"instruction": "x", "completions": [{"response": "a", "overall_score": 5}, {"response": "b", "overall_score": 5}]},
     "same rating"),
    ("ultrafeedback no rating", load_preferences,
     {"instruction": "x", "completions": [{"response": "a"}, {"response": "b", "overall_score": 5}]},
     "item 1: no numeric 'overall_score'"),
    ("kto label", load_feedback, {"prompt": "x", "completion": "y", "label": "maybe"}, "field 'label' must be true"),
    ("openai tool turn", load_demonstrations,
     {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [{}]}]},
     "message 2: a tool-call turn"),
    ("openai image part", load_demonstrations,
     {"messages": [{"role": "user", "content": [{"type": "image_url"}]}, {"role": "assistant", "content": "y"}]},
     "only text content parts"),
    ("openai preference without output", load_preferences, {"input": {"messages": []}, "preferred_output": []},
     "field 'input.messages' must be a non-empty list|'preferred_output' must be a non-empty list"),
    ("unknown layout", load_demonstrations, {"question": "x", "answer": "y"}, "Layouts read: messages \\(OpenAI"),
]


@pytest.mark.fault("bad input")
@pytest.mark.parametrize("name, load, bad, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_row_in_each_layout_names_file_row_and_field(tmp_path, name, load, bad, message):
    good = {load_demonstrations: SHAREGPT, load_preferences: ALPACA_PAIR, load_feedback: KTO[0]}[load]
    rows = [good, bad] + ([KTO[1]] if load is load_feedback else [])
    path = write(tmp_path, rows)
    with pytest.raises(DataError, match=message) as err:
        load(source(path))
    assert f"{path}: row 2: " in str(err.value)


def test_a_recipe_mixes_layouts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    demos = write(tmp_path, [SHAREGPT, ALPACA, OPENAI], "demos.jsonl")  # three layouts in one file
    pairs = write(tmp_path, [ALPACA_PAIR, SHAREGPT_PAIR, ULTRAFEEDBACK], "pairs.jsonl")
    (tmp_path / "mixed.yaml").write_text(json.dumps({
        "name": "mixed", "stages": ["sft", "dpo"], "sft": {"dataset": demos}, "dpo": {"dataset": pairs}}))
    assert align.cli.main(["validate", str(tmp_path / "mixed.yaml")]) == 0
    out = capsys.readouterr().out
    assert "sft.dataset: 3 valid demonstrations" in out and "dpo.dataset: 3 valid pairs" in out


USERS_OWN_FIELDS = [
    ("alpaca output", load_demonstrations, {"instruction": "Add 2 and 2.", "output": 42},
     "field 'output' must be a string, got int"),
    ("alpaca history turn", load_demonstrations, {**ALPACA, "history": [["Translate dog.", 7]]},
     "field 'history' pair 1: the assistant turn must be a string"),
    ("sharegpt value", load_demonstrations,
     {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": 3}]},
     "field 'conversations' turn 2: 'value' must be a string"),
    ("sharegpt order after a system prompt", load_demonstrations,
     {"system": "Be brief.", "conversations": [{"from": "human", "value": "Hi"}, {"from": "human", "value": "Hey"}]},
     "field 'conversations' turn 2: expected a gpt turn"),
    ("ultrafeedback response", load_preferences,
     {"instruction": "x",
      "completions": [{"response": "a", "overall_score": 1}, {"response": None, "overall_score": 5}]},
     "field 'completions' item 2: 'response' must be a string"),
    ("openai preferred output", load_preferences,
     {**OPENAI_PAIR, "preferred_output": [{"role": "assistant", "content": 5}]},
     "field 'preferred_output' message 1: content must be a string"),
]


@pytest.mark.fault("bad input")
@pytest.mark.parametrize("name, load, bad, message", USERS_OWN_FIELDS, ids=[m[0] for m in USERS_OWN_FIELDS])
def test_errors_name_the_users_own_field_and_count_from_1(tmp_path, name, load, bad, message):
    good = {load_demonstrations: SHAREGPT, load_preferences: ALPACA_PAIR}[load]
    path = write(tmp_path, [good, bad])
    with pytest.raises(DataError, match=message) as err:
        load(source(path))
    assert f"{path}: row 2: " in str(err.value)
    assert "'completion'" not in str(err.value) and "'chosen'" not in str(err.value)


def test_an_error_in_a_mapped_column_names_the_files_column(tmp_path):
    path = write(tmp_path, [{"question": "1 + 1?", "answer": 2}])
    with pytest.raises(DataError, match=r"row 1: field 'answer' \(mapped to 'completion'\) must be a string"):
        load_demonstrations(source(path, columns={"prompt": "question", "completion": "answer"}))
