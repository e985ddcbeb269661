# python scripts/make_bundled_data.py
"""Generate the small bundled datasets in align/bundled/ (stdlib + align.judges, deterministic).

The domain is simple factual and arithmetic questions, so a reward model can learn a
measurable notion of "good": the chosen answer is correct, concise and polite, while the
rejected answer is wrong, rude or rambling (rotated so every failure kind is covered).
Every preference row also carries its answer key, so the gold judges in align/judges.py
can score any model's reply to the same prompt.

Outputs:
  sft.jsonl          {"messages": [{"role": "user", ...}, {"role": "assistant", ...}, ...]}  ~240 rows
  prefs_train.jsonl  {"prompt", "chosen", "rejected", "answer", "category"}                  ~320 rows
  prefs_test.jsonl   same format, ~350 rows; its facts (countries, operand pairs, words...)
                     are held out of both train files, so it measures generalisation, not recall.
"answer" lists the accepted answer strings (digits and words for numbers, common spelling
variants for cities); "category" is the fact kind: capital, arithmetic, opposite, plural,
colour, count or spelling. Prompts are unique within each file.
"""
import itertools
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing align
from align.judges import (MAX_CONCISE_WORDS, VOCABULARIES, is_concise, is_correct, is_polite,  # noqa: E402
                          number_to_words)

SEED = 1234
OUT_DIR = REPO / "align" / "bundled"

# ---------------------------------------------------------------- raw facts
CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("the United Kingdom", "London"), ("Ireland", "Dublin"),
    ("the Netherlands", "Amsterdam"), ("Belgium", "Brussels"), ("Austria", "Vienna"),
    ("Switzerland", "Bern"), ("Poland", "Warsaw"), ("Sweden", "Stockholm"), ("Norway", "Oslo"),
    ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Greece", "Athens"),
    ("Hungary", "Budapest"), ("the Czech Republic", "Prague"), ("Romania", "Bucharest"),
    ("Russia", "Moscow"), ("Ukraine", "Kyiv"), ("Turkey", "Ankara"), ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"), ("Nigeria", "Abuja"), ("Ghana", "Accra"), ("Morocco", "Rabat"),
    ("Ethiopia", "Addis Ababa"), ("South Africa", "Pretoria"), ("Japan", "Tokyo"),
    ("China", "Beijing"), ("South Korea", "Seoul"), ("India", "New Delhi"),
    ("Pakistan", "Islamabad"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("Indonesia", "Jakarta"), ("the Philippines", "Manila"), ("Malaysia", "Kuala Lumpur"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Saudi Arabia", "Riyadh"), ("Jordan", "Amman"),
    ("Australia", "Canberra"), ("New Zealand", "Wellington"), ("Canada", "Ottawa"),
    ("the United States", "Washington, D.C."), ("Mexico", "Mexico City"), ("Cuba", "Havana"),
    ("Brazil", "Brasília"), ("Argentina", "Buenos Aires"), ("Chile", "Santiago"),
    ("Peru", "Lima"), ("Colombia", "Bogotá"), ("Venezuela", "Caracas"), ("Iceland", "Reykjavik"),
    ("Nepal", "Kathmandu"), ("Bangladesh", "Dhaka"), ("Afghanistan", "Kabul"),
]
# Words with a single clear opposite (e.g. no "light", which could be "dark" or "heavy"), and
# none a polite reply uses in passing ("Good question!" would name the opposite of "answer").
OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("happy", "sad"), ("fast", "slow"),
    ("open", "closed"), ("day", "night"), ("wet", "dry"), ("full", "empty"), ("early", "late"),
    ("push", "pull"), ("win", "lose"), ("strong", "weak"), ("rich", "poor"), ("loud", "quiet"),
    ("clean", "dirty"), ("first", "last"), ("top", "bottom"), ("inside", "outside"),
    ("buy", "sell"), ("north", "south"), ("east", "west"), ("true", "false"), ("thick", "thin"),
    ("cheap", "expensive"), ("above", "below"), ("remember", "forget"), ("asleep", "awake"),
    ("always", "never"), ("laugh", "cry"), ("love", "hate"), ("before", "after"),
    ("arrive", "leave"),
]
# (singular, plural, the typical learner mistake used as the wrong answer)
PLURALS = [
    ("child", "children", "childs"), ("mouse", "mice", "mouses"), ("foot", "feet", "foots"),
    ("tooth", "teeth", "tooths"), ("man", "men", "mans"), ("woman", "women", "womans"),
    ("goose", "geese", "gooses"), ("person", "people", "peoples"), ("sheep", "sheep", "sheeps"),
    ("deer", "deer", "deers"), ("ox", "oxen", "oxes"), ("leaf", "leaves", "leafs"),
    ("knife", "knives", "knifes"), ("wolf", "wolves", "wolfs"), ("half", "halves", "halfs"),
    ("life", "lives", "lifes"), ("box", "boxes", "boxs"), ("bus", "buses", "bus"),
    ("church", "churches", "churchs"), ("dish", "dishes", "dishs"), ("fox", "foxes", "foxs"),
    ("baby", "babies", "babys"), ("city", "cities", "citys"), ("story", "stories", "storys"),
    ("berry", "berries", "berrys"), ("potato", "potatoes", "potatos"),
    ("tomato", "tomatoes", "tomatos"), ("hero", "heroes", "heros"), ("lady", "ladies", "ladys"),
    ("glass", "glasses", "glasss"),
]
COLOURS = [
    ("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("a banana", "yellow"),
    ("coal", "black"), ("blood", "red"), ("a carrot", "orange"), ("milk", "white"),
    ("a lemon", "yellow"), ("chocolate", "brown"), ("a strawberry", "red"), ("a crow", "black"),
    ("a pumpkin", "orange"), ("a cucumber", "green"), ("an eggplant", "purple"),
    ("a flamingo", "pink"), ("a fire truck", "red"), ("a polar bear", "white"),
    ("a lime", "green"), ("a raven", "black"), ("a swan", "white"), ("a cherry", "red"),
    ("a canary", "yellow"), ("a blueberry", "blue"), ("a tangerine", "orange"), ("a plum", "purple"),
]
COLOUR_WORDS = sorted({colour for _, colour in COLOURS})
# ("has", owner, noun, n) -> "A spider has 8 legs."; ("in", unit, container, n) -> "There are 7 days in a week."
COUNTS = [
    ("has", "a spider", "legs", 8), ("has", "a dog", "legs", 4), ("has", "a bird", "legs", 2),
    ("has", "an insect", "legs", 6), ("has", "a horse", "legs", 4), ("has", "a chicken", "legs", 2),
    ("has", "an ant", "legs", 6), ("has", "a snake", "legs", 0), ("has", "an octopus", "arms", 8),
    ("has", "a cow", "legs", 4), ("has", "a triangle", "sides", 3), ("has", "a square", "sides", 4),
    ("has", "a pentagon", "sides", 5), ("has", "a hexagon", "sides", 6),
    ("has", "an octagon", "sides", 8), ("has", "a bicycle", "wheels", 2),
    ("has", "a tricycle", "wheels", 3), ("has", "a standard guitar", "strings", 6),
    ("has", "a human hand", "fingers", 5), ("has", "a cube", "faces", 6),
    ("in", "days", "a week", 7), ("in", "months", "a year", 12), ("in", "hours", "a day", 24),
    ("in", "minutes", "an hour", 60), ("in", "seconds", "a minute", 60),
    ("in", "days", "a leap year", 366), ("in", "days", "a fortnight", 14),
    ("in", "centimetres", "a metre", 100), ("in", "millimetres", "a centimetre", 10),
    ("in", "metres", "a kilometre", 1000), ("in", "grams", "a kilogram", 1000),
    ("in", "millilitres", "a litre", 1000), ("in", "years", "a decade", 10),
    ("in", "years", "a century", 100), ("in", "eggs", "a dozen", 12),
    ("in", "letters", "the English alphabet", 26), ("in", "colours", "a rainbow", 7),
    ("in", "planets", "the solar system", 8), ("in", "continents", "the world", 7),
    ("in", "weeks", "a year", 52), ("has", "a cat", "legs", 4), ("has", "a duck", "legs", 2),
    ("has", "a beetle", "legs", 6), ("has", "a crab", "legs", 10), ("has", "a violin", "strings", 4),
    ("has", "a car", "wheels", 4), ("has", "a rectangle", "sides", 4), ("has", "a heptagon", "sides", 7),
    ("in", "days", "a year", 365), ("in", "cards", "a standard deck", 52),
    ("in", "minutes", "half an hour", 30), ("in", "hours", "half a day", 12),
]
NUMBERS_TO_SPELL = [0, 3, 5, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 24, 30, 33,
                    40, 42, 45, 50, 56, 60, 64, 70, 77, 80, 85, 88, 90, 99, 4, 6, 2, 10]
COMMON_MISSPELLINGS = {40: "fourty", 19: "ninteen", 8: "eigth", 90: "ninty", 14: "fourten"}
# Other ways to write a correct answer, all accepted by the gold judge.
ANSWER_VARIANTS = {
    "Washington, D.C.": ["Washington D.C.", "Washington DC", "Washington"], "Brasília": ["Brasilia"],
    "Bogotá": ["Bogota"], "Kyiv": ["Kiev"], "Reykjavik": ["Reykjavík"], "Bern": ["Berne"],
    "closed": ["shut"], "small": ["little"], "quiet": ["silent"], "leave": ["depart"],
}

# Split sizes: how many raw facts of each type are held out for the test set
# (an opposite fact is a pair, asked in both directions).
HELD_OUT = {"capital": 18, "opposite": 6, "plural": 8, "colour": 8, "count": 16, "spelling": 12}
HELD_OUT_ARITHMETIC_PER_OP = 16
# Rows per fact type; sums are 348 (test), 264 (SFT turns -> 240 rows) and 320 (prefs train).
# Test quotas stay below each type's distinct prompts (facts x phrasings) so facts rotate evenly.
TEST_QUOTAS = {"capital": 60, "arithmetic": 120, "opposite": 40, "plural": 28, "colour": 28,
               "count": 40, "spelling": 32}
SFT_QUOTAS = {"capital": 50, "arithmetic": 86, "opposite": 36, "plural": 24, "colour": 16,
              "count": 30, "spelling": 22}
PREFS_TRAIN_QUOTAS = {"capital": 60, "arithmetic": 110, "opposite": 44, "plural": 28,
                      "colour": 20, "count": 34, "spelling": 24}
SFT_TWO_TURN_ROWS = 24  # ~10% of the 240 SFT rows

# ---------------------------------------------------------------- response styles
# No prefix may use a word the judges check ("Happy to help!" would name the opposite of "sad").
POLITE_PREFIXES = ["Sure! ", "Of course! ", "Glad to help! ", "Good question! "]
RUDE_TEMPLATES = [
    "Ugh, obviously {lc} Look it up yourself.",
    "{ans} Seriously, a child could answer that.",
    "Are you kidding me? {ans} Stop wasting my time.",
    "Whatever. {ans} Try thinking before you ask next time.",
    "{ans} Honestly, what a dumb question.",
    "Do I really have to spell this out for you? {ans}",
    "Fine, since you can't figure it out yourself: {lc}",
    "{ans} Don't bother me with stuff this easy.",
]
RAMBLE_OPENERS = [
    "Well, that's a really interesting question and there are many ways to think about it.",
    "Hmm, let me think about this for a moment, because people often get confused about it.",
    "That's a great question, and honestly it deserves a careful and thoughtful answer.",
    "Before I answer, I want to say that questions like this can be surprisingly tricky.",
    "Oh, I love questions like this, they remind me how much there is to learn.",
]
RAMBLE_FILLERS = [
    "There are a lot of factors to consider, and different sources sometimes say different things.",
    "People have been thinking about things like this for a very long time.",
    "It really depends on how you look at it and what exactly you mean.",
    "I always think it's important to take a step back and consider the bigger picture.",
    "Of course, I could be wrong, so you may want to double-check somewhere else.",
    "Some people find this easy and others find it hard, which is completely normal.",
    "In a way, the answer matters less than the process of figuring it out.",
]
RAMBLE_ENDINGS_WITH_ANSWER = [
    "If I had to guess, I would say {bare}, but I'm not completely sure.",
    "After all that, I believe {lc}",
    "So, to make a long story short, {lc}",
]
RAMBLE_ENDINGS_WITHOUT_ANSWER = [
    "Anyway, it's hard to say for certain, so I'll leave that up to you.",
    "I hope that gives you something to think about!",
]
REJECTED_KINDS = ["wrong", "rude", "rambling"]


@dataclass(frozen=True)
class Fact:
    kind: str                 # fact type, e.g. "capital"
    key: tuple                # identity used for the train/test split
    questions: tuple          # alternative phrasings of the same question
    answer: str               # concise correct sentence
    wrong_answer: str         # concise, plausible but wrong sentence
    accepted: tuple           # answer key: every accepted way to write the bare answer


def lower_first(sentence):
    return sentence[0].lower() + sentence[1:]


def capitalize_first(text):
    return text[0].upper() + text[1:]


def word_answers(word):
    return (word, *ANSWER_VARIANTS.get(word, []))


def spelled_answers(n):
    words = number_to_words(n)
    return tuple(dict.fromkeys([words, words.replace("-", " ")]))


def number_answers(n):
    """Digits and words: 12 -> ("12", "twelve"), 144 -> (..., "one hundred and forty-four", ...)."""
    words = number_to_words(n)
    variants = [str(n), f"{n:,}", words, words.replace("-", " "), words.replace("hundred ", "hundred and ")]
    if n in (100, 1000):
        variants.append("a " + words.removeprefix("one "))
    return tuple(dict.fromkeys(variants))


def nearby_wrong_number(n, rng):
    # Off-by-a-few, never negative and never 1 (avoids "1 legs"-style grammar slips).
    candidates = [n + d for d in (-3, -2, -1, 1, 2, 3) if n + d >= 0 and n + d != 1]
    return rng.choice(candidates)


# ---------------------------------------------------------------- fact builders
# Each builder gets only its own split's raw facts, so wrong answers (e.g. another
# country's capital) never reveal a held-out fact.
def capital_facts(pairs, rng):
    facts = []
    for country, capital in pairs:
        other = rng.choice([c for _, c in pairs if c != capital])
        questions = (f"What is the capital of {country}?", f"What's the capital city of {country}?",
                     f"Which city is the capital of {country}?", f"Name the capital of {country}.",
                     f"Can you tell me the capital of {country}?")
        # "Washington, D.C." already ends with a full stop; don't add a second one.
        end = lambda city: city if city.endswith(".") else city + "."
        facts.append(Fact("capital", ("capital", country), questions,
                          f"The capital of {country} is {end(capital)}",
                          f"The capital of {country} is {end(other)}", word_answers(capital)))
    return facts


def arithmetic_facts(keys, rng):
    facts = []
    for op, a, b in keys:
        # Addition and multiplication keys are unordered pairs; ask in both orders.
        orders = [(a, b)] if op == "-" or a == b else [(a, b), (b, a)]
        for x, y in orders:
            if op == "+":
                result = x + y
                questions = (f"What is {x} + {y}?", f"What is {x} plus {y}?", f"Calculate {x} + {y}.",
                             f"How much is {x} plus {y}?", f"Add {x} and {y}.")
                sentence = "{x} + {y} = {r}."
            elif op == "-":
                result = x - y
                questions = (f"What is {x} - {y}?", f"What is {x} minus {y}?",
                             f"Subtract {y} from {x}.", f"Calculate {x} - {y}.")
                sentence = "{x} - {y} = {r}."
            else:
                result = x * y
                questions = (f"What is {x} times {y}?", f"What is {x} * {y}?",
                             f"Multiply {x} by {y}.", f"Calculate {x} * {y}.")
                sentence = "{x} times {y} is {r}."
            wrong = nearby_wrong_number(result, rng)
            facts.append(Fact("arithmetic", (op, a, b), questions, sentence.format(x=x, y=y, r=result),
                              sentence.format(x=x, y=y, r=wrong), number_answers(result)))
    return facts


def opposite_facts(pairs, rng):
    facts = []
    words = [w for pair in pairs for w in pair]
    for pair in pairs:
        for word, opposite in (pair, pair[::-1]):  # both directions, split as one fact
            wrong = rng.choice([w for w in words if w not in pair])
            questions = (f'What is the opposite of "{word}"?', f"What's the opposite of {word}?",
                         f'Give me the opposite of the word "{word}".',
                         f"What word means the opposite of {word}?")
            facts.append(Fact("opposite", ("opposite",) + pair, questions,
                              f'The opposite of "{word}" is "{opposite}".',
                              f'The opposite of "{word}" is "{wrong}".', word_answers(opposite)))
    return facts


def plural_facts(triples, rng):
    return [Fact("plural", ("plural", singular),
                 (f'What is the plural of "{singular}"?', f"What's the plural form of {singular}?",
                  f'Give the plural of the word "{singular}".',
                  f'How do you say more than one "{singular}"?'),
                 f'The plural of "{singular}" is "{plural}".',
                 f'The plural of "{singular}" is "{mistake}".', (plural,))
            for singular, plural, mistake in triples]


def colour_facts(pairs, rng):
    facts = []
    for thing, colour in pairs:
        wrong = rng.choice([c for c in COLOUR_WORDS if c != colour])
        questions = (f"What colour is {thing}?", f"What color is {thing}?",
                     f"Tell me the colour of {thing}.", f"Which colour is {thing}?")
        facts.append(Fact("colour", ("colour", thing), questions,
                          f"{capitalize_first(thing)} is {colour}.",
                          f"{capitalize_first(thing)} is {wrong}.", (colour,)))
    return facts


def count_facts(entries, rng):
    facts = []
    for form, first, second, n in entries:
        wrong = nearby_wrong_number(n, rng) if n else rng.choice([2, 4])
        if form == "has":
            owner, noun = first, second
            questions = (f"How many {noun} does {owner} have?", f"{capitalize_first(owner)} has how many {noun}?",
                         f"Can you tell me how many {noun} {owner} has?")
            sentence = lambda k: f"{capitalize_first(owner)} has {k or 'no'} {noun}."
        else:
            unit, container = first, second
            questions = (f"How many {unit} are in {container}?", f"How many {unit} are there in {container}?",
                         f"Can you tell me how many {unit} are in {container}?")
            sentence = lambda k: f"There are {k} {unit} in {container}."
        accepted = number_answers(n) + ((f"no {second}", "none") if n == 0 else ())
        facts.append(Fact("count", ("count", first, second), questions, sentence(n), sentence(wrong), accepted))
    return facts


def spelling_facts(numbers, rng):
    facts = []
    for n in numbers:
        wrong = COMMON_MISSPELLINGS.get(n) or number_to_words(nearby_wrong_number(n, rng))
        questions = (f"How do you write {n} in words?", f"Spell out the number {n}.",
                     f"What is {n} written in words?", f"Write the number {n} as a word.")
        facts.append(Fact("spelling", ("spelling", n), questions,
                          f'The number {n} is written "{number_to_words(n)}".',
                          f'The number {n} is written "{wrong}".', spelled_answers(n)))
    return facts


def split_off(items, n_held_out, rng):
    """Return (train, held_out) after a seeded shuffle."""
    items = sorted(set(items), key=repr)  # dedupe + stable order before shuffling
    rng.shuffle(items)
    return items[n_held_out:], items[:n_held_out]


def build_fact_pools(rng):
    """Split the raw facts, then build Fact objects per split: {split: {kind: [Fact]}}."""
    pools = {"train": {}, "test": {}}
    raw = {"capital": (CAPITALS, capital_facts), "opposite": (OPPOSITES, opposite_facts),
           "plural": (PLURALS, plural_facts), "colour": (COLOURS, colour_facts),
           "count": (COUNTS, count_facts), "spelling": (NUMBERS_TO_SPELL, spelling_facts)}
    for kind, (items, builder) in raw.items():
        train, test = split_off(items, HELD_OUT[kind], rng)
        pools["train"][kind], pools["test"][kind] = builder(train, rng), builder(test, rng)
    # Numbers under 20; times tables stop at 12 to keep products easy for a tiny model.
    arithmetic_keys = {
        "+": [("+", a, b) for a in range(1, 20) for b in range(a, 20)],
        "-": [("-", a, b) for a in range(1, 20) for b in range(1, a + 1)],
        "*": [("*", a, b) for a in range(2, 13) for b in range(a, 13)],
    }
    train_keys, test_keys = [], []
    for keys in arithmetic_keys.values():
        train, test = split_off(keys, HELD_OUT_ARITHMETIC_PER_OP, rng)
        train_keys += train
        test_keys += test
    pools["train"]["arithmetic"] = arithmetic_facts(train_keys, rng)
    pools["test"]["arithmetic"] = arithmetic_facts(test_keys, rng)
    return pools


def sample_questions(pool, quotas, rng):
    """Pick (fact, question) pairs per kind, cycling facts with new phrasings; prompts unique."""
    picked = []
    for kind, quota in quotas.items():
        facts = list(pool[kind])
        rng.shuffle(facts)
        seen, chosen = set(), []
        for fact in itertools.islice(itertools.cycle(facts), quota * 20):
            if len(chosen) == quota:
                break
            unused = [q for q in fact.questions if q not in seen]
            if unused:
                question = rng.choice(unused)
                seen.add(question)
                chosen.append((fact, question))
        if len(chosen) < quota:
            raise ValueError(f"not enough distinct {kind} prompts for quota {quota}")
        picked += chosen
    rng.shuffle(picked)
    return picked


# ---------------------------------------------------------------- responses
def polite_answer(sentence, rng):
    # A polite prefix on some rows; the rest stay maximally concise.
    return (rng.choice(POLITE_PREFIXES) if rng.random() < 0.25 else "") + sentence


def rude_answer(fact, rng):
    # Mostly correct content, so the reward model must learn that tone alone is bad.
    sentence = fact.answer if rng.random() < 0.67 else fact.wrong_answer
    return rng.choice(RUDE_TEMPLATES).format(ans=sentence, lc=lower_first(sentence))


def rambling_answer(fact, rng):
    sentences = [rng.choice(RAMBLE_OPENERS)] + rng.sample(RAMBLE_FILLERS, rng.randint(1, 3))
    roll = rng.random()  # the answer may be right, wrong or missing: length itself is the flaw
    if roll < 0.6:
        sentence = fact.answer if roll < 0.4 else fact.wrong_answer
        ending = rng.choice(RAMBLE_ENDINGS_WITH_ANSWER)
        sentences.append(ending.format(lc=lower_first(sentence), bare=lower_first(sentence)[:-1]))
    else:
        sentences.append(rng.choice(RAMBLE_ENDINGS_WITHOUT_ANSWER))
    return " ".join(sentences)


def rejected_answer(fact, kind, rng):
    if kind == "wrong":
        # Same optional prefix as chosen answers, so politeness alone cannot reveal correctness.
        return polite_answer(fact.wrong_answer, rng)
    return rude_answer(fact, rng) if kind == "rude" else rambling_answer(fact, rng)


def check_gold_labels(row, kind):
    """The gold judge must agree with the labels: chosen passes, rejected fails for its stated flaw."""
    assert is_correct(row["chosen"], row["prompt"], row["answer"]), row
    assert is_polite(row["chosen"]) and is_concise(row["chosen"]), row
    if kind == "wrong":
        assert not is_correct(row["rejected"], row["prompt"], row["answer"]), row
    elif kind == "rude":
        assert not is_polite(row["rejected"]), row
    else:  # long as well as marked, so a length check alone also catches it
        assert len(row["rejected"].split()) > MAX_CONCISE_WORDS and not is_concise(row["rejected"]), row


def preference_rows(picked, rng):
    rows, kinds = [], Counter()
    for index, (fact, question) in enumerate(picked):
        kind = REJECTED_KINDS[index % len(REJECTED_KINDS)]  # rotate: balanced failure kinds
        row = {"prompt": question, "chosen": polite_answer(fact.answer, rng),
               "rejected": rejected_answer(fact, kind, rng), "answer": list(fact.accepted),
               "category": fact.kind}
        # ~4 chars per token: keep under ~80 tokens, rambling under ~150 tokens.
        limit = 600 if kind == "rambling" else 320
        assert len(row["prompt"]) + max(len(row["chosen"]), len(row["rejected"])) < limit, row
        assert all(row.values()) and row["chosen"] != row["rejected"], row
        check_gold_labels(row, kind)
        rows.append(row)
        kinds[kind] += 1
    return rows, kinds


def sft_rows(picked, rng):
    turns = [[{"role": "user", "content": question},
              {"role": "assistant", "content": polite_answer(fact.answer, rng)}]
             for fact, question in picked]
    two_turn = [turns[i] + turns[i + 1] for i in range(0, 2 * SFT_TWO_TURN_ROWS, 2)]
    return [{"messages": m} for m in two_turn + turns[2 * SFT_TWO_TURN_ROWS:]]


def check_judge_vocabulary():
    """align/judges.py spots a hedged answer ("Paris or Lyon") by its word lists: every word here must be in them."""
    words = {"capital": [c for _, c in CAPITALS], "colour": [c for _, c in COLOURS],
             "opposite": [w for pair in OPPOSITES for w in pair],
             "plural": [w for _, plural, mistake in PLURALS for w in (plural, mistake)],
             "spelling": [number_to_words(n) for n in NUMBERS_TO_SPELL] + list(COMMON_MISSPELLINGS.values())}
    for kind, listed in words.items():
        listed = listed + [v for w in listed for v in ANSWER_VARIANTS.get(w, [])]
        missing = {w.lower() for w in listed} - VOCABULARIES[kind]
        assert not missing, f"add {sorted(missing)} to the {kind} vocabulary in align/judges.py"


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main():
    check_judge_vocabulary()
    rng = random.Random(SEED)
    pools = build_fact_pools(rng)
    sft_picked = sample_questions(pools["train"], SFT_QUOTAS, rng)
    train_picked = sample_questions(pools["train"], PREFS_TRAIN_QUOTAS, rng)
    test_picked = sample_questions(pools["test"], TEST_QUOTAS, rng)

    # Held-out facts must be unseen in both training files (facts, and hence prompt texts).
    train_keys = {fact.key for fact, _ in sft_picked + train_picked}
    assert train_keys.isdisjoint(fact.key for fact, _ in test_picked)
    train_prompts = {question for _, question in sft_picked + train_picked}
    assert train_prompts.isdisjoint(question for _, question in test_picked)
    for picked in (sft_picked, train_picked, test_picked):
        assert len({question for _, question in picked}) == len(picked), "duplicate prompt in one file"

    sft = sft_rows(sft_picked, rng)
    prefs_train, train_kinds = preference_rows(train_picked, rng)
    prefs_test, test_kinds = preference_rows(test_picked, rng)

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, rows in [("sft.jsonl", sft), ("prefs_train.jsonl", prefs_train),
                       ("prefs_test.jsonl", prefs_test)]:
        write_jsonl(OUT_DIR / name, rows)
        print(f"{OUT_DIR / name}: {len(rows)} rows")
    two_turn = sum(len(row["messages"]) == 4 for row in sft)
    print(f"sft: {two_turn} two-turn rows")
    print(f"prefs_train rejected kinds: {dict(train_kinds)}")
    print(f"prefs_test rejected kinds: {dict(test_kinds)}")
    print(f"prefs_train fact types: {dict(Counter(f.kind for f, _ in train_picked))}")
    print(f"prefs_test fact types: {dict(Counter(f.kind for f, _ in test_picked))}")


if __name__ == "__main__":
    main()
