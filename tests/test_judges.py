# .venv/bin/python -m pytest -q tests/test_judges.py
"""The bundled gold judges on hand-worked replies, and the bundled data's answer key checked against them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from align.judges import concise, correct, gold, numbers_in, polite
from align.reward_functions import call_reward_function, load_reward_function

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "align" / "bundled"
CATEGORIES = {"capital", "arithmetic", "opposite", "plural", "colour", "count", "spelling"}


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def reply(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def judge_one(judge, question: str, text: str, answer=None) -> float:
    columns = {} if answer is None else {"answer": [answer]}
    [score] = judge([ask(question)], [reply(text)], **columns)
    return score


def read(name: str) -> list[dict]:
    return [json.loads(line) for line in (BUNDLED / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------------ correct

TWELVE = ["12", "twelve"]


@pytest.mark.parametrize("question, text, answer, expected", [
    # numbers: whole numbers only, and no competing number beyond echoes of the question
    ("What is 7 + 5?", "7 + 5 = 12.", TWELVE, 1.0),
    ("What is 7 + 5?", "Twelve.", TWELVE, 1.0),
    ("What is 7 + 5?", "7 + 5 = 112.", TWELVE, 0.0),
    ("What is 7 + 5?", "7 + 5 = 13.", TWELVE, 0.0),
    ("What is 7 + 5?", "7 + 5 = 12 or 13.", TWELVE, 0.0),
    ("What is 7 + 5?", "12, or maybe thirteen.", TWELVE, 0.0),
    ("What is 7 + 5?", "It is 1.2 or so.", TWELVE, 0.0),
    ("How many days are in a week?", "There are 7 days in a week.", ["7", "seven"], 1.0),
    ("How many days are in a week?", "There are seven days in a week.", ["7", "seven"], 1.0),
    ("How many days are in a week?", "There are 17 days in a week.", ["7", "seven"], 0.0),
    ("What is 4 - 2?", "4 - 2 = 2.", ["2", "two"], 1.0),
    ("What is 4 - 2?", "2", ["2", "two"], 1.0),
    ("What is 4 - 2?", "4 - 2 = 4.", ["2", "two"], 0.0),  # 4 said more often than the question says it
    ("What is 12 times 12?", "12 times 12 is one hundred and forty-four.", ["144"], 1.0),
    ("How many metres are in a kilometre?", "There are 1,000 metres in a kilometre.", ["1000"], 1.0),
    ("How many legs does a snake have?", "A snake has no legs.", ["0", "zero", "no legs", "none"], 1.0),
    ("How many legs does a snake have?", "A snake has 2 legs.", ["0", "zero", "no legs", "none"], 0.0),
    # words: whole words, case-insensitive, and no competing candidate of the same kind
    ("What is the capital of France?", "The capital of France is PARIS.", ["Paris"], 1.0),
    ("What is the capital of France?", "Paris, or perhaps Berlin.", ["Paris"], 0.0),
    ("What is the capital of France?", "Parisian food is great.", ["Paris"], 0.0),
    ("What is the capital of the United States?", "It is Washington, D.C.",
     ["Washington, D.C.", "Washington D.C.", "Washington DC", "Washington"], 1.0),
    ("What is the capital of the United States?", "Washington.",
     ["Washington, D.C.", "Washington D.C.", "Washington DC", "Washington"], 1.0),
    ('What is the opposite of "hot"?', 'The opposite of "hot" is "cold".', ["cold"], 1.0),
    ('What is the opposite of "hot"?', "Colder.", ["cold"], 0.0),
    ('What is the opposite of "hot"?', "Cold, or maybe dry.", ["cold"], 0.0),
    ('What is the plural of "child"?', 'The plural of "child" is "children".', ["children"], 1.0),
    ('What is the plural of "child"?', 'The plural of "child" is "childs".', ["children"], 0.0),
    ('What is the plural of "child"?', "Children (or childs).", ["children"], 0.0),
    ("What colour is the sky?", "The sky is blue.", ["blue"], 1.0),
    ("What colour is the sky?", "Blue or green.", ["blue"], 0.0),
    ("What colour is a blueberry?", "A blueberry is blue.", ["blue"], 1.0),
    ("Spell out the number 42.", 'The number 42 is written "forty-two".', ["forty-two", "forty two"], 1.0),
    ("Spell out the number 42.", "Forty two.", ["forty-two", "forty two"], 1.0),
    ("Spell out the number 42.", "Forty-three.", ["forty-two", "forty two"], 0.0),
    ("Spell out the number 42.", "Forty-two or forty-three.", ["forty-two", "forty two"], 0.0),
    ("Spell out the number 7.", "Twenty-seven.", ["seven"], 0.0),
    ("Spell out the number 40.", 'It is written "fourty".', ["forty"], 0.0),
    ("What is the capital of France?", "", ["Paris"], 0.0),
])
def test_correct(question, text, answer, expected):
    assert judge_one(correct, question, text, answer) == expected


def test_correct_accepts_a_single_string_answer():
    assert judge_one(correct, "What is the capital of Peru?", "Lima.", "Lima") == 1.0


def test_correct_checks_the_last_user_turn():
    prompt = [{"role": "system", "content": "Be brief."}, *ask("What is 3 + 4?"), *reply("7."), *ask("And 7 + 5?")]
    assert correct([prompt], [reply("7 + 5 = 12.")], answer=[TWELVE]) == [1.0]
    assert correct([prompt], [reply("3 + 4 = 12.")], answer=[TWELVE]) == [0.0]  # 3 and 4 are not in this question


@pytest.mark.parametrize("answer", [[], "", None, ["  "]])
def test_correct_refuses_a_row_without_an_answer(answer):
    with pytest.raises(ValueError, match=r"row 2 \('Capital of Peru\?'\) has no accepted answer"):
        correct([ask("Capital of France?"), ask("Capital of Peru?")], [reply("Paris."), reply("Lima.")],
                answer=[["Paris"], answer])


def test_correct_needs_an_answer_column():
    with pytest.raises(ValueError, match="needs an 'answer' column"):
        correct([ask("Capital of Peru?")], [reply("Lima.")])


def test_numbers_in_reads_digits_and_words():
    assert numbers_in("7 + 5 = 12.") == [7, 5, 12]
    assert numbers_in("twenty-one, one hundred and forty-four, 1,000, 2.5") == [1000, 2.5, 21, 144]
    assert numbers_in("seven and five") == [7, 5]
    assert numbers_in("seventeen sevens") == [17]


# ------------------------------------------------------------------------------------------------ polite, concise


@pytest.mark.parametrize("text, expected", [
    ("Sure! Paris.", 1.0),
    ("Ugh, it's Paris.", 0.0),
    ("Paris. Look it up yourself.", 0.0),
    ("What a DUMB question: Paris.", 0.0),
    ("Whatever. Paris.", 0.0),
    ("Whatever you like: Paris.", 1.0),
    ("Paris, you idiot.", 0.0),
    ("Shut up, it's Paris.", 0.0),
    ("Paris. Stop wasting my time.", 0.0),
    ("Paris. Seriously, a child could answer that.", 0.0),
    ("I laugh, but it is Paris.", 1.0),  # "ugh" only as a whole word
    ("", 1.0),
])
def test_polite(text, expected):
    assert judge_one(polite, "Capital of France?", text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Paris.", 1.0),
    (" ".join(["word"] * 25), 1.0),
    (" ".join(["word"] * 26), 0.0),
    ("", 0.0),
    ("   ", 0.0),
    ("I could be wrong, but Paris.", 0.0),
    ("Let me think about this... Paris.", 0.0),
    ("There are a lot of factors, but Paris.", 0.0),
])
def test_concise(text, expected):
    assert judge_one(concise, "Capital of France?", text) == expected


# ------------------------------------------------------------------------------------------------ gold


@pytest.mark.parametrize("text, expected", [
    ("Of course! The capital of France is Paris.", 1.0),
    ("The capital of France is Lyon.", 0.0),  # wrong
    ("Paris. Don't bother me with stuff this easy.", 0.0),  # rude
    ("Well, that's a really interesting question. I could be wrong, but Paris.", 0.0),  # rambling
    ("Paris " + "indeed " * 30, 0.0),  # long
    ("", 0.0),  # empty
])
def test_gold(text, expected):
    assert judge_one(gold, "What is the capital of France?", text, ["Paris"]) == expected


def test_judges_load_and_run_as_reward_functions():
    for name in ("gold", "correct", "polite", "concise"):
        judge = load_reward_function(f"align.judges:{name}")
        scores = call_reward_function(judge, name, [ask("What is 7 + 5?")] * 2, ["7 + 5 = 12.", "Ugh, 13."],
                                      {"answer": [TWELVE, TWELVE], "category": ["arithmetic"] * 2})
        assert scores == {"gold": [1.0, 0.0], "correct": [1.0, 0.0], "polite": [1.0, 0.0],
                          "concise": [1.0, 1.0]}[name]


# ------------------------------------------------------------------------------------------------ bundled data


@pytest.mark.parametrize("name", ["prefs_test", "prefs_train"])
def test_bundled_answer_key_agrees_with_the_labels(name):
    rows = read(name)
    assert all(isinstance(r["answer"], list) and r["answer"] and r["category"] in CATEGORIES for r in rows)
    assert {r["category"] for r in rows} == CATEGORIES
    prompts, chosen, rejected = ([ask(r["prompt"]) for r in rows], [reply(r["chosen"]) for r in rows],
                                 [reply(r["rejected"]) for r in rows])
    answers = [r["answer"] for r in rows]
    assert gold(prompts, chosen, answers) == [1.0] * len(rows)
    assert gold(prompts, rejected, answers) == [0.0] * len(rows)
    # Each rejected answer fails for its own flaw: rambling ones are long, rude ones impolite, the rest wrong.
    rambling = [len(r["rejected"].split()) > 25 for r in rows]
    rude = [not p for p in polite(prompts, rejected)]
    wrong = [not c for c in correct(prompts, rejected, answers)]
    kinds = ["rambling" if long else "rude" if impolite else "wrong" if bad else "none"
             for long, impolite, bad in zip(rambling, rude, wrong)]
    assert "none" not in kinds
    assert all(kinds.count(kind) > len(rows) / 4 for kind in ("rambling", "rude", "wrong")), kinds
    rambling_replies = [reply(r["rejected"]) for r, kind in zip(rows, kinds) if kind == "rambling"]
    assert concise(prompts[:len(rambling_replies)], rambling_replies) == [0.0] * len(rambling_replies)


def test_bundled_test_set_is_large_unique_and_held_out():
    test, train = read("prefs_test"), read("prefs_train")
    sft_prompts = {m["content"] for r in read("sft") for m in r["messages"] if m["role"] == "user"}
    test_prompts = [r["prompt"] for r in test]
    assert len(test) >= 320
    assert len(set(test_prompts)) == len(test_prompts)
    assert len({r["prompt"] for r in train}) == len(train) >= 300
    assert set(test_prompts).isdisjoint({r["prompt"] for r in train} | sft_prompts)
    assert min(sum(r["category"] == c for r in test) for c in CATEGORIES) >= 20


def test_bundled_data_is_what_the_script_writes(tmp_path, capsys):
    """Regenerating gives the shipped files byte for byte, and the script's words are in the judges' vocabularies."""
    spec = importlib.util.spec_from_file_location("make_bundled_data", REPO / "scripts" / "make_bundled_data.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.OUT_DIR = tmp_path
    script.main()  # runs check_judge_vocabulary and the per-row gold checks first
    for name in ("sft", "prefs_train", "prefs_test"):
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (BUNDLED / f"{name}.jsonl").read_bytes(), name
    assert "prefs_test fact types" in capsys.readouterr().out
