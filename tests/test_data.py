"""Reading, normalising and checking datasets: every accepted layout, every file format, every kind of bad row."""

from __future__ import annotations

import csv
import json
from collections import UserDict
from pathlib import Path

import pytest

from align.config import DataSource
from align.data import (
    MAX_ERRORS_SHOWN,
    DataError,
    check_lengths,
    shortest_first,
    load_demonstrations,
    load_preferences,
    normalise,
    read_rows,
)


def sys_(text: str) -> dict:
    return {"role": "system", "content": text}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def demos(tmp_path: Path, rows: list) -> list[dict]:
    examples, _ = load_demonstrations(DataSource(path=str(write_jsonl(tmp_path / "demos.jsonl", rows))))
    return examples


def prefs(tmp_path: Path, rows: list) -> list[dict]:
    examples, _ = load_preferences(DataSource(path=str(write_jsonl(tmp_path / "prefs.jsonl", rows))))
    return examples


GOOD_DEMO = {"messages": [user("What is 2 + 2?"), bot("4.")]}
GOOD_PREF = {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."}


# ------------------------------------------------------------------------------------------------ demonstrations


def test_messages_single_turn(tmp_path):
    assert demos(tmp_path, [GOOD_DEMO]) == [{"prompt": [user("What is 2 + 2?")], "completion": [bot("4.")]}]


def test_messages_multi_turn_with_system(tmp_path):
    messages = [sys_("Be brief."), user("Hi"), bot("Hello!"), user("Capital of France?"), bot("Paris.")]
    [example] = demos(tmp_path, [{"messages": messages}])
    assert example == {"prompt": messages[:-1], "completion": [bot("Paris.")]}


def test_messages_extra_keys_are_dropped(tmp_path):
    row = {"messages": [{"role": "user", "content": "Hi", "name": "x"}, bot("Hello")], "id": 7, "source": "web"}
    assert demos(tmp_path, [row]) == [{"prompt": [user("Hi")], "completion": [bot("Hello")]}]


def test_prompt_completion_strings(tmp_path):
    rows = [{"prompt": "Capital of Peru?", "completion": "Lima."}]
    assert demos(tmp_path, rows) == [{"prompt": [user("Capital of Peru?")], "completion": [bot("Lima.")]}]


def test_prompt_completion_message_lists(tmp_path):
    rows = [{"prompt": [sys_("Be brief."), user("Capital of Peru?")], "completion": [bot("Lima.")]}]
    assert demos(tmp_path, rows) == [
        {"prompt": [sys_("Be brief."), user("Capital of Peru?")], "completion": [bot("Lima.")]}
    ]


# ------------------------------------------------------------------------------------------------ preferences


def test_preference_strings(tmp_path):
    assert prefs(tmp_path, [GOOD_PREF]) == [
        {"prompt": [user("What is 2 + 2?")], "chosen": [bot("4.")], "rejected": [bot("5.")]}
    ]


def test_preference_message_lists_with_explicit_prompt(tmp_path):
    row = {
        "prompt": [sys_("Be kind."), user("Hi"), bot("Hello!"), user("2 + 2?")],
        "chosen": [bot("4.")],
        "rejected": [bot("Figure it out.")],
    }
    assert prefs(tmp_path, [row]) == [
        {"prompt": row["prompt"], "chosen": [bot("4.")], "rejected": [bot("Figure it out.")]}
    ]


def test_preference_string_prompt_with_message_answers(tmp_path):
    row = {"prompt": "2 + 2?", "chosen": [bot("4.")], "rejected": [bot("22.")]}
    assert prefs(tmp_path, [row]) == [{"prompt": [user("2 + 2?")], "chosen": [bot("4.")], "rejected": [bot("22.")]}]


IMPLICIT = {
    "chosen": [sys_("Be kind."), user("Hi"), bot("Hello!"), user("2 + 2?"), bot("4.")],
    "rejected": [sys_("Be kind."), user("Hi"), bot("Hello!"), user("2 + 2?"), bot("Go away.")],
}
IMPLICIT_EXPECTED = {
    "prompt": [sys_("Be kind."), user("Hi"), bot("Hello!"), user("2 + 2?")],
    "chosen": [bot("4.")],
    "rejected": [bot("Go away.")],
}


def test_preference_implicit_prompt_absent(tmp_path):
    assert prefs(tmp_path, [IMPLICIT]) == [IMPLICIT_EXPECTED]


@pytest.mark.parametrize("empty", [None, "", []])
def test_preference_implicit_prompt_empty(tmp_path, empty):
    assert prefs(tmp_path, [{"prompt": empty, **IMPLICIT}]) == [IMPLICIT_EXPECTED]


def test_implicit_prompt_conversations_must_share_prefix(tmp_path):
    row = {"prompt": None, "chosen": [user("Hi"), bot("Hello")], "rejected": [user("Hey"), bot("Go away")]}
    with pytest.raises(DataError, match="differ before their last turn"):
        prefs(tmp_path, [row])


HH_PREFIX = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: What is the capital of France?"


def test_hh_rlhf_transcripts(tmp_path):
    row = {
        "chosen": HH_PREFIX + "\n\nAssistant: The capital of France is Paris.",
        "rejected": HH_PREFIX + "\n\nAssistant: Look it up.",
    }
    assert prefs(tmp_path, [row]) == [
        {
            "prompt": [user("Hi there"), bot("Hello! How can I help?"), user("What is the capital of France?")],
            "chosen": [bot("The capital of France is Paris.")],
            "rejected": [bot("Look it up.")],
        }
    ]


def test_hh_rlhf_single_turn(tmp_path):
    row = {"chosen": "\n\nHuman: 2 + 2?\n\nAssistant: 4.", "rejected": "\n\nHuman: 2 + 2?\n\nAssistant: 5."}
    assert prefs(tmp_path, [row]) == [{"prompt": [user("2 + 2?")], "chosen": [bot("4.")], "rejected": [bot("5.")]}]


def test_hh_rlhf_transcripts_differing_before_last_turn(tmp_path):
    row = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: 2 + 2?\n\nAssistant: 4.",
        "rejected": "\n\nHuman: Hey\n\nAssistant: Hello\n\nHuman: 2 + 2?\n\nAssistant: 5.",
    }
    with pytest.raises(DataError, match="row 1: 'chosen' and 'rejected' transcripts differ before their last turn"):
        prefs(tmp_path, [row])


def test_hh_rlhf_transcript_ending_with_human(tmp_path):
    row = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye", "rejected": "\n\nHuman: Hi\n\nAssistant: Go"}
    with pytest.raises(DataError, match="row 1"):
        prefs(tmp_path, [row])


def test_hh_rlhf_rejected_not_a_transcript(tmp_path):
    row = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "Go away"}
    with pytest.raises(DataError, match="field 'rejected' looks like neither"):
        prefs(tmp_path, [row])


# ------------------------------------------------------------------------------------------------ file formats

PREF_ROWS = [
    {"prompt": "Capital of Peru?", "chosen": "Lima.", "rejected": "Quito."},
    {"prompt": "2 + 2?", "chosen": "4.", "rejected": "5."},
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
]
PREF_EXPECTED = [
    {"prompt": [user(r["prompt"])], "chosen": [bot(r["chosen"])], "rejected": [bot(r["rejected"])]} for r in PREF_ROWS
]
DEMO_ROWS = [{"prompt": "Capital of Peru?", "completion": "Lima."}, {"prompt": "2 + 2?", "completion": "4."}]
DEMO_EXPECTED = [{"prompt": [user(r["prompt"])], "completion": [bot(r["completion"])]} for r in DEMO_ROWS]


def write_rows(path: Path, rows: list[dict]) -> Path:
    suffix = path.suffix
    if suffix == ".jsonl":
        write_jsonl(path, rows)
    elif suffix == ".json":
        path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    elif suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise AssertionError(suffix)
    return path


FORMATS = [".jsonl", ".json", ".csv", ".parquet"]


@pytest.mark.parametrize("suffix", FORMATS)
def test_preferences_from_each_format(tmp_path, suffix):
    path = write_rows(tmp_path / f"prefs{suffix}", PREF_ROWS)
    examples, where = load_preferences(DataSource(path=str(path)))
    assert examples == PREF_EXPECTED
    assert where == str(path)


@pytest.mark.parametrize("suffix", FORMATS)
def test_demonstrations_from_each_format(tmp_path, suffix):
    path = write_rows(tmp_path / f"demos{suffix}", DEMO_ROWS)
    examples, where = load_demonstrations(DataSource(path=str(path)))
    assert examples == DEMO_EXPECTED
    assert where == str(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_message_lists_from_structured_formats(tmp_path, suffix):
    rows = [{"messages": [sys_("Be brief."), user("Capital of Peru?"), bot("Lima.")]}]
    path = write_rows(tmp_path / f"msgs{suffix}", rows)
    examples, _ = load_demonstrations(DataSource(path=str(path)))
    assert examples == [{"prompt": [sys_("Be brief."), user("Capital of Peru?")], "completion": [bot("Lima.")]}]


@pytest.mark.parametrize("key", ["rows", "data"])
def test_json_object_wrapping_rows(tmp_path, key):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({key: PREF_ROWS}))
    assert load_preferences(DataSource(path=str(path)))[0] == PREF_EXPECTED


def test_json_not_a_list(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"prompt": "x"}))
    with pytest.raises(DataError, match="expected a JSON list of rows"):
        load_preferences(DataSource(path=str(path)))


def test_json_invalid(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("[{\"prompt\": ")
    with pytest.raises(DataError) as info:
        load_preferences(DataSource(path=str(path)))
    assert str(path) in str(info.value) and "not valid JSON" in str(info.value)


def test_jsonl_invalid_line_names_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(PREF_ROWS[0]) + "\n" + json.dumps(PREF_ROWS[1]) + "\n{not json}\n")
    with pytest.raises(DataError) as info:
        load_preferences(DataSource(path=str(path)))
    message = str(info.value)
    assert str(path) in message and "row 3" in message and "not valid JSON" in message


def test_jsonl_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text("\n" + json.dumps(PREF_ROWS[0]) + "\n\n   \n" + json.dumps(PREF_ROWS[1]) + "\n\n")
    assert load_preferences(DataSource(path=str(path)))[0] == PREF_EXPECTED[:2]


@pytest.mark.parametrize("suffix", [".txt", ".tsv", ".yaml", ""])
def test_unsupported_suffix(tmp_path, suffix):
    path = tmp_path / f"rows{suffix}"
    path.write_text(json.dumps(PREF_ROWS[0]) + "\n")
    with pytest.raises(DataError) as info:
        load_preferences(DataSource(path=str(path)))
    assert "unsupported file type" in str(info.value) and str(path) in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.jsonl"
    with pytest.raises(DataError) as info:
        load_demonstrations(DataSource(path=str(path)))
    assert str(path) in str(info.value) and "file not found" in str(info.value)


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_demonstrations(DataSource(path=str(tmp_path)))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        load_preferences(DataSource(path=str(path)))


def test_limit_takes_first_rows(tmp_path):
    path = write_rows(tmp_path / "prefs.jsonl", PREF_ROWS)
    examples, _ = load_preferences(DataSource(path=str(path), limit=2))
    assert examples == PREF_EXPECTED[:2]


def test_limit_applies_before_validation(tmp_path):
    """Only the rows used are checked: a bad row past the limit does not fail a quick experiment."""
    path = write_jsonl(tmp_path / "prefs.jsonl", [*PREF_ROWS, {"prompt": "x"}])
    assert len(load_preferences(DataSource(path=str(path), limit=3))[0]) == 3
    with pytest.raises(DataError, match="row 4"):
        load_preferences(DataSource(path=str(path)))


# ------------------------------------------------------------------------------------------------ bad rows

BAD_DEMOS = [
    ({"prompt": "Hi"}, "missing field 'completion'"),
    ({"completion": "Hi"}, "missing field 'prompt'"),
    ({"text": "Hi"}, "missing field 'messages'"),
    ({"prompt": "Hi", "completion": "   "}, "field 'completion' is empty"),
    ({"prompt": "Hi", "completion": 42}, "field 'completion' must be a string"),
    ({"messages": [user("Hi"), {"role": "assistant", "content": 42}]}, "field 'messages' message 2: content must"),
    ({"messages": [user("Hi"), {"role": "bot", "content": "Hello"}]}, "field 'messages' message 2: role 'bot'"),
    ({"messages": [bot("Hello"), user("Hi"), bot("Bye")]}, "field 'messages' message 1: expected role 'user'"),
    ({"messages": [user("Hi"), user("Hi again"), bot("Hello")]}, "field 'messages' message 2: expected role 'assistant'"),
    ({"messages": [user("Hi"), sys_("Be brief."), bot("Hello")]}, "field 'messages' message 2: expected role"),
    ({"messages": [sys_("Be brief."), bot("Hello")]}, "field 'messages' message 2: expected role 'user'"),
    ({"messages": [user("Hi"), bot("Hello"), user("Bye")]}, "field 'messages' must end with an assistant message"),
    ({"messages": []}, "field 'messages' must be a non-empty list"),
    ({"messages": "Hi"}, "field 'messages' must be a non-empty list"),
    ({"messages": [user("Hi"), {"role": "assistant"}]}, "field 'messages' message 2: expected {'role'"),
    ({"messages": [user("  "), bot("Hello")]}, "field 'messages' message 1: content is empty"),
    ({"prompt": [user("Hi"), bot("Hello")], "completion": "Bye"}, "field 'prompt' must end with a user message"),
    ({"prompt": "Hi", "completion": [bot("Hello"), user("Bye")]}, "field 'completion' must end with an assistant"),
    (["Hi", "Hello"], "expected an object"),
]


@pytest.mark.fault("bad input")
@pytest.mark.parametrize(("row", "expected"), BAD_DEMOS, ids=[e for _, e in BAD_DEMOS])
def test_bad_demonstration_row(tmp_path, row, expected):
    path = write_jsonl(tmp_path / "demos.jsonl", [GOOD_DEMO, row, GOOD_DEMO])
    with pytest.raises(DataError) as info:
        load_demonstrations(DataSource(path=str(path)))
    message = str(info.value)
    assert "1 of 3 rows are not valid demonstrations" in message
    assert f"{path}: row 2: {expected}" in message


BAD_PREFS = [
    ({"prompt": "Hi", "chosen": "Hello"}, "missing field 'rejected'"),
    ({"chosen": "Hello", "rejected": "Go away"}, "missing field 'prompt'"),
    ({"prompt": "Hi", "rejected": "Go away"}, "missing field 'chosen'"),
    ({"prompt": "Hi", "chosen": "", "rejected": "Go away"}, "field 'chosen' is empty"),
    ({"prompt": "Hi", "chosen": "Hello", "rejected": " \n"}, "field 'rejected' is empty"),
    ({"prompt": "", "chosen": "Hello", "rejected": "Go away"}, "field 'prompt' is empty"),
    ({"prompt": "Hi", "chosen": None, "rejected": "Go away"}, "missing field 'chosen'"),
    ({"prompt": "Hi", "chosen": "Hello", "rejected": "Hello"}, "'chosen' and 'rejected' are identical"),
    ({"prompt": "Hi", "chosen": "Hello", "rejected": "  Hello \n"}, "'chosen' and 'rejected' are identical"),
    ({"prompt": "Hi", "chosen": 3, "rejected": "4"}, "field 'chosen' must be a string or a list of messages, got int"),
    ({"prompt": 7, "chosen": "a", "rejected": "b"}, "field 'prompt' must be a string or a list of messages, got int"),
    ({"prompt": "Hi", "chosen": [{"role": "assistant", "content": 3}], "rejected": "b"}, "field 'chosen' message 1"),
    ({"prompt": [{"role": "bot", "content": "Hi"}], "chosen": "a", "rejected": "b"}, "field 'prompt' message 1: role 'bot'"),
    ({"prompt": [bot("Hi")], "chosen": "a", "rejected": "b"}, "field 'prompt' message 1: expected role 'user'"),
    ({"prompt": "Hi", "chosen": [user("Hello")], "rejected": "b"}, "field 'chosen' must end with an assistant"),
    (
        {"chosen": "\n\nHuman: Hi\n\nAssistant: A", "rejected": "\n\nHuman: Hey\n\nAssistant: B"},
        "'chosen' and 'rejected' transcripts differ before their last turn",
    ),
    ("just a string", "expected an object"),
]


@pytest.mark.fault("bad input")
@pytest.mark.parametrize(("row", "expected"), BAD_PREFS, ids=[e for _, e in BAD_PREFS])
def test_bad_preference_row(tmp_path, row, expected):
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD_PREF, row])
    with pytest.raises(DataError) as info:
        load_preferences(DataSource(path=str(path)))
    message = str(info.value)
    assert "1 of 2 rows are not valid preferences" in message
    assert f"{path}: row 2: {expected}" in message


def test_bad_csv_row_names_file_row_and_field(tmp_path):
    path = write_rows(tmp_path / "prefs.csv", [*PREF_ROWS[:2], {"prompt": "Hi", "chosen": "", "rejected": "No"}])
    with pytest.raises(DataError) as info:
        load_preferences(DataSource(path=str(path)))
    assert f"{path}: row 3: field 'chosen' is empty" in str(info.value)


def test_several_bad_rows_are_all_listed(tmp_path):
    rows = [GOOD_PREF, {"prompt": "Hi"}, GOOD_PREF, {"prompt": "Hi", "chosen": "a", "rejected": "a"}, GOOD_PREF]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_preferences(DataSource(path=str(path)))
    message = str(info.value)
    assert message.startswith("2 of 5 rows are not valid preferences")
    assert f"{path}: row 2: missing field 'chosen'" in message
    assert f"{path}: row 4: 'chosen' and 'rejected' are identical" in message
    assert "row 1:" not in message and "row 3:" not in message and "row 5:" not in message
    assert "more" not in message


def test_many_bad_rows_are_summarised(tmp_path):
    bad = MAX_ERRORS_SHOWN + 3
    path = write_jsonl(tmp_path / "demos.jsonl", [GOOD_DEMO] + [{"prompt": "Hi"}] * bad)
    with pytest.raises(DataError) as info:
        load_demonstrations(DataSource(path=str(path)))
    message = str(info.value)
    assert message.startswith(f"{bad} of {bad + 1} rows are not valid demonstrations")
    assert message.count("missing field 'completion'") == MAX_ERRORS_SHOWN
    assert f"row {MAX_ERRORS_SHOWN + 1}:" in message and f"row {MAX_ERRORS_SHOWN + 2}:" not in message
    assert "... and 3 more" in message


def test_normalise_names_the_source():
    with pytest.raises(DataError, match=r"hub:x/y\[train\]: row 1: missing field 'rejected'"):
        normalise([{"prompt": "a", "chosen": "b"}], "hub:x/y[train]", "preferences")


# ------------------------------------------------------------------------------------------------ bundled


def prompt_key(example: dict) -> tuple:
    return tuple((m["role"], m["content"].strip().lower()) for m in example["prompt"])


def test_bundled_sft():
    examples, where = load_demonstrations(DataSource(bundled="sft"))
    assert where == "bundled:sft"
    assert 200 <= len(examples) <= 300
    assert all(ex["completion"][0]["role"] == "assistant" for ex in examples)


def test_bundled_preferences_and_held_out_split():
    train, train_where = load_preferences(DataSource(bundled="prefs_train"))
    test, test_where = load_preferences(DataSource(bundled="prefs_test"))
    assert (train_where, test_where) == ("bundled:prefs_train", "bundled:prefs_test")
    assert len(train) >= 100 and len(test) >= 32
    overlap = {prompt_key(ex) for ex in train} & {prompt_key(ex) for ex in test}
    assert not overlap, f"held-out prompts also in prefs_train: {sorted(overlap)[:3]}"


def test_bundled_limit():
    rows, where = read_rows(DataSource.model_validate({"bundled": "prefs_test", "limit": 5}))
    assert len(rows) == 5 and where == "bundled:prefs_test"


def test_unknown_bundled_dataset_lists_available():
    with pytest.raises(DataError) as info:
        load_preferences(DataSource(bundled="nope"))
    message = str(info.value)
    assert "bundled:nope" in message
    for name in ("sft", "prefs_train", "prefs_test"):
        assert name in message


# ------------------------------------------------------------------------------------------------ lengths


class CharTokenizer:
    """One token per character of message content; the generation prompt adds `gen` tokens.

    Behaves like transformers 5: with tokenize=True it returns a BatchEncoding-like mapping (a UserDict, not a
    dict) unless return_dict=False, in which case it returns the list of ids.
    """

    def __init__(self, gen: int = 0):
        self.gen = gen

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False, return_dict=True, **kwargs):
        assert tokenize is True
        n = sum(len(m["content"]) for m in messages) + (self.gen if add_generation_prompt else 0)
        ids = list(range(n))
        return UserDict({"input_ids": ids, "attention_mask": [1] * n}) if return_dict else ids


def demo_example(prompt: str, completion: str) -> dict:
    return {"prompt": [user(prompt)], "completion": [bot(completion)]}


def pref_example(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": [user(prompt)], "chosen": [bot(chosen)], "rejected": [bot(rejected)]}


def test_check_lengths_without_max_length():
    assert check_lengths([demo_example("x" * 10_000, "y")], CharTokenizer(), None, "src", ("completion",)) == {
        "rows": 1,
        "truncated": 0,
        "longest": None,
        "row_lengths": None,
    }


def test_check_lengths_counts_truncated_rows():
    examples = [demo_example("a" * 5, "b" * 5), demo_example("a" * 5, "b" * 20), demo_example("a" * 8, "b" * 2)]
    stats = check_lengths(examples, CharTokenizer(), 10, "src", ("completion",))
    assert stats == {"rows": 3, "truncated": 1, "longest": 25, "row_lengths": [10, 25, 10]}


def test_check_lengths_exact_fit_is_not_truncated():
    stats = check_lengths([demo_example("a" * 4, "b" * 6)], CharTokenizer(), 10, "src", ("completion",))
    assert stats == {"rows": 1, "truncated": 0, "longest": 10, "row_lengths": [10]}


def test_check_lengths_counts_a_preference_row_once():
    examples = [pref_example("p", "c" * 20, "r" * 30), pref_example("p", "c", "r" * 20), pref_example("p", "c", "r")]
    stats = check_lengths(examples, CharTokenizer(), 10, "src", ("chosen", "rejected"))
    assert stats["rows"] == 3
    assert stats["truncated"] == 2
    assert stats["row_lengths"] == [31, 21, 2]  # a pair counts as its longer answer


def test_shortest_first_orders_rows_by_length_keeping_ties_in_place():
    examples = [pref_example(str(i), "c" * n, "r") for i, n in enumerate([30, 5, 12, 5, 1])]
    stats = check_lengths(examples, CharTokenizer(), 100, "src", ("chosen", "rejected"))
    ordered = shortest_first(examples, stats["row_lengths"])
    assert [ex["prompt"][0]["content"] for ex in ordered] == ["4", "1", "3", "2", "0"]
    assert shortest_first(examples, None) is examples  # nothing measured: as they are


def test_check_lengths_prompt_too_long_names_row():
    examples = [demo_example("a" * 3, "b"), demo_example("a" * 10, "b"), demo_example("a" * 20, "b")]
    with pytest.raises(DataError) as info:
        check_lengths(examples, CharTokenizer(), 10, "bundled:sft", ("completion",))
    message = str(info.value)
    assert message.startswith("2 of 3 rows have prompts too long for max_length=10")
    assert "bundled:sft: row 2: the prompt is 10 tokens but max_length is 10" in message
    assert "bundled:sft: row 3: the prompt is 20 tokens" in message
    assert "row 1:" not in message


def test_check_lengths_counts_the_generation_prompt():
    """A prompt of 8 tokens plus a 2-token assistant header leaves nothing for the answer at max_length=10."""
    with pytest.raises(DataError, match="row 1: the prompt is 10 tokens"):
        check_lengths([demo_example("a" * 8, "b")], CharTokenizer(gen=2), 10, "src", ("completion",))
    assert check_lengths([demo_example("a" * 8, "b")], CharTokenizer(gen=0), 10, "src", ("completion",))["rows"] == 1


@pytest.mark.parametrize("shorthand", ["bundled:", "hub:"])
def test_empty_source_name_fails_cleanly(shorthand):
    with pytest.raises(ValueError):  # DataError, RecipeError and pydantic's ValidationError are all ValueErrors
        read_rows(DataSource.model_validate(shorthand))


def test_jsonl_errors_point_at_file_lines_across_blank_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    good = json.dumps({"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."})
    bad = json.dumps({"prompt": "Hi", "chosen": "Same.", "rejected": "Same."})
    path.write_text(good + "\n\n" + bad + "\n")
    with pytest.raises(DataError, match=r"p.jsonl: row 3: 'chosen' and 'rejected' are identical"):
        load_preferences(DataSource(path=str(path)))
