"""Labellers that stand in for people, and the path their labels take: into a label database, the same store the
web app writes to, one pair at a time as an annotator gets them (`next_assignment` or `assignments`, then `submit`).

`simulated` is the quickstart's labeller. Like AlpacaFarm's simulated annotators it is deliberately not the gold
judge: it has its own, cruder rubric (word lists of its own, loose substring matching of the answer key, a
length limit of its own) and label noise (a share of its decisive labels flipped, at random). Like a person, it
sees what kind of request a prompt is (the row's `category`) and, for facts, knows the answer.

A labeller is any function

    def labeller(prompt: str, text_a: str, text_b: str, *, row: dict, rng: random.Random, noise: float
                 ) -> tuple[str, str]

returning (choice, reason) with choice one of "A", "B", "tie", "both_bad" (the web app's buttons); `row` is the
prompt's dataset row (answer key, category), which queued items carry in `extra`; `noise` is the recipe's share of
decisive labels to flip (a reason containing "flipped" marks one). A recipe names it as 'module:function' or
'file.py:function'; `align labels judge` runs one over what waits in a label database.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from align.labelling.store import LabelError
from align.onpolicy import near_identical

LABEL_CHOICES = ("A", "B", "tie", "both_bad")  # the web app's buttons
LABELLER_NOISE = 0.2  # AlpacaFarm's simulated annotators disagree with the majority about this often
# The labeller's own word lists: shorter and looser than the gold judge's (align/judges.py), on purpose.
REFUSAL_WORDS = ["sorry", "can't", "cannot", "won't", "unable", "not able", "decline", "refuse"]
UNSURE_WORDS = ["don't know", "not sure", "no idea", "can't know", "cannot know", "no way", "no access",
                "haven't told", "didn't tell", "never heard", "nobody", "no one", "can't predict", "can't tell"]
GUESS_WORDS = ["maybe", "probably", "perhaps", "i think", "i guess", "might"]
RUDE_WORDS = ["stupid", "dumb", "idiot", "ugh", "whatever", "yourself", "seriously", "kidding", "bother"]
LONG_WORDS = 30


def quality(reply: str, row: dict) -> float:
    """The simulated labeller's rubric: 2 = what it wants for this kind of request, 0 = wrong; minus a point for
    rudeness, half a point for length. Ties between two replies are ties."""
    text = " ".join(reply.replace("\u2019", "'").lower().split())
    if not text:
        return -2.0
    kind = row.get("category")
    refuses = any(w in text for w in REFUSAL_WORDS)
    unsure = any(w in text for w in UNSURE_WORDS)
    guesses = any(w in text for w in GUESS_WORDS)
    mentions = any(str(a).lower() in text for a in row.get("answer") or [])
    if kind == "harmful":
        score = 2.0 if refuses else 0.0
    elif kind == "unanswerable":  # a refusal at least makes nothing up
        score = 2.0 if unsure and not guesses else 1.0 if refuses and not guesses else 0.5 if unsure else 0.0
    elif kind == "lookalike":
        score = 0.0 if refuses or unsure else 2.0 if mentions else 1.0
    else:  # a question with an answer
        score = 0.0 if refuses or unsure else 2.0 if mentions else 0.5
    if any(w in text for w in RUDE_WORDS):
        score -= 1.0
    if len(text.split()) > LONG_WORDS:
        score -= 0.5
    return score


def simulated(prompt: str, text_a: str, text_b: str, *, row: dict, rng: random.Random,
              noise: float = LABELLER_NOISE) -> tuple[str, str]:
    """The better reply by `quality`; equal ones are a tie when both are good, both_bad otherwise. A decisive
    label is flipped with probability `noise`."""
    if "category" not in row:
        raise LabelError(f"the simulated labeller judges a prompt by its row's category (harmful, unanswerable, "
                         f"lookalike, or a question with an answer key) and the pair for {prompt[:60]!r} came "
                         f"without one: give the pairs' source a category column")
    a, b = quality(text_a, row), quality(text_b, row)
    if a == b:
        return ("tie" if a >= 2.0 else "both_bad"), f"both score {a:g}"
    choice = "A" if a > b else "B"
    if rng.random() < noise:
        return ("B" if choice == "A" else "A"), f"A {a:g}, B {b:g} (flipped: label noise)"
    return choice, f"A {a:g}, B {b:g}"


def candidate_pairs(rows: list[dict], samples: list[list[dict]], model: str, max_similarity: float = 0.9
                    ) -> list[dict]:
    """Every two of a prompt's sampled answers that differ enough to teach a preference, as label-database items
    (the row's answer key and category ride along in `extra`). Ids derive from the content, so queueing the same
    samples twice adds nothing."""
    items = []
    for row, answers in zip(rows, samples):
        texts = list(dict.fromkeys(a["text"].strip() for a in answers if a["text"].strip()))
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                if near_identical(texts[i], texts[j], max_similarity):
                    continue
                items.append({"prompt": row["prompt"], "response_1": texts[i], "response_2": texts[j],
                              "model_1": model, "model_2": model, "extra": row_for_labeller(row)})
    return items


def row_for_labeller(row: dict) -> dict:
    """What a labeller reads beside the two replies, kept in a queued item's `extra`: the prompt row's answer key
    and category."""
    return {k: row[k] for k in ("answer", "category") if k in row}


def labeller_annotators(annotator: str, labels_per_pair: int = 1) -> list[str]:
    """The names a labeller's labels are stored under when it judges each pair `labels_per_pair` times, as that
    many annotators would: the first keeps `annotator`, the others are `annotator-2`, `annotator-3`, ..."""
    return [annotator] + [f"{annotator}-{i}" for i in range(2, labels_per_pair + 1)]


def per_pair(labels_per_pair: int) -> str:
    """How a labeller's labels per pair read after its noise in logs and summaries: nothing for one."""
    return f", {labels_per_pair} labels per pair" if labels_per_pair > 1 else ""


def label_through_store(db: str | Path, items: list[dict], labeller: Callable, annotator: str, source: str,
                        seed: int, labels_per_pair: int = 1, **labeller_kwargs) -> dict:
    """Queue `items` in the label database and have `labeller` judge every pair from `source` it is given there,
    as an annotator in the web app would (`label_waiting`), `labels_per_pair` times over as that many annotators
    (`labeller_annotators`). Pairs it judged before are not given again, and the same two answers to a prompt
    already in the database (queued by an earlier run, under any run's or model's name) are not queued again: a
    label is asked for once. Returns what it did; `already_there` counts the items skipped so."""
    from align.labelling.store import LabelStore

    store = LabelStore(db)
    try:
        fresh = store.unseen_answer_pairs(items)
        queued = store.add_items(fresh, source=source)
    finally:
        store.close()
    return {"queued": queued, "already_there": len(items) - len(fresh),
            **label_as_annotators(db, labeller, annotator, seed, labels_per_pair, source=source, **labeller_kwargs)}


def label_as_annotators(db: str | Path, labeller: Callable, annotator: str, seed: int, labels_per_pair: int = 1,
                        source: str | None = None, **labeller_kwargs) -> dict:
    """`label_waiting` once per name of `labeller_annotators`, each with its own random draws (its own noise, its
    own A/B order), every pair given to each of them: `labels_per_pair` labels per pair. The counts are summed
    over them."""
    total: dict[str, int] = {}
    for number, name in enumerate(labeller_annotators(annotator, labels_per_pair)):
        # the first annotator draws as a single labeller always has, so one label per pair is what it was
        counts = label_waiting(db, labeller, name, seed if number == 0 else seed + 7919 * number, source=source,
                               overlap=labels_per_pair, **labeller_kwargs)
        total = {key: total.get(key, 0) + value for key, value in counts.items()}
    return total


def label_waiting(db: str | Path, labeller: Callable, annotator: str, seed: int, source: str | None = None,
                  overlap: int = 1, **labeller_kwargs) -> dict:
    """Have `labeller` judge, as `annotator`, every pair the label database gives them (those queued from
    `source` only, when given; pairs fewer than `overlap` annotators hold), as an annotator in the web app would:
    ask for the next pair (shown A/B in a random order), judge it, submit. It reads the prompt row (answer key,
    category) the item carries in `extra`. Returns how many it labelled, per choice, and how many of its labels
    were flipped by noise."""
    from align.labelling.store import LabelStore

    rng = random.Random(seed)
    store = LabelStore(db)
    counts = {"labelled": 0, "A": 0, "B": 0, "tie": 0, "both_bad": 0, "flipped": 0}
    try:
        for shown in store.assignments(annotator, overlap=overlap, rng=rng, generated_only=True, source=source):
            row = store.item(shown["item_id"])["extra"]
            text = shown["prompt"][-1]["content"] if isinstance(shown["prompt"], list) else str(shown["prompt"])
            try:
                choice, reason = labeller(text, shown["text_a"], shown["text_b"], row=row, rng=rng, **labeller_kwargs)
            except Exception as err:  # handed back, so it never holds up the pairs after it
                store.release(annotator, shown["item_id"])
                where = store.item(shown["item_id"])["source"]
                raise LabelError(f"{db}: pair '{shown['item_id']}' (queued from {where}): {err}") from err
            store.submit(annotator, shown["item_id"], choice, reason)
            counts["labelled"] += 1
            counts[choice] += 1
            counts["flipped"] += "flipped" in reason
    finally:
        store.close()
    return counts


def label_counts(judgments: list[dict]) -> dict:
    """How many labels, per choice, and how many flipped by noise (a labeller says so in its reason), as
    label_waiting counts what it does; from the label database, so labels given by an earlier call count too."""
    return {"labelled": len(judgments), **{choice: sum(j["choice"] == choice for j in judgments)
                                           for choice in LABEL_CHOICES},
            "flipped": sum("flipped" in (j["reason"] or "") for j in judgments)}


def flipped_majorities(judgments: list[dict], labeller_names: set[str] | list[str]) -> int:
    """Of the pairs whose labels (the label database's judgments, people's included) have a strict majority, how
    many majorities the labeller's noise made: the reply most labels chose is the one the labeller's rubric rates
    lower. The rubric is read from the labels of `labeller_names` that say "flipped" in their reason (as `simulated`
    marks its flipped labels) or not; a pair whose labeller labels disagree about it is not counted."""
    by_item: dict[str, list[dict]] = {}
    for judgment in judgments:
        if judgment["choice"] in ("A", "B"):
            by_item.setdefault(judgment["item_id"], []).append(judgment)
    flipped = 0
    for group in by_item.values():
        votes, rubric = {1: 0, 2: 0}, set()
        for judgment in group:
            chosen = judgment["a_response"] if judgment["choice"] == "A" else 3 - judgment["a_response"]
            votes[chosen] += 1
            if judgment["annotator"] in labeller_names:
                rubric.add(3 - chosen if "flipped" in (judgment["reason"] or "") else chosen)
        if votes[1] != votes[2] and len(rubric) == 1:
            flipped += (1 if votes[1] > votes[2] else 2) not in rubric
    return flipped


def agreement_with_judge(labeller: Callable, rows: list[dict], samples: list[list[dict]], verdicts: list[list[float]],
                         seed: int = 0) -> dict:
    """How `labeller`, without its noise, orders each two answers to a prompt that the judge's `verdicts` tell
    apart: the shares it orders as the judge does (`agrees`), calls a tie or both bad (`ties`), or reverses;
    `accuracy` counts ties half: the ranking of a reward model that reproduced the labeller's labels exactly.
    Set beside the reward model's own ranking, it says how much of a shortfall the labels already have. Overall
    and per kind (the rows' category)."""
    rng = random.Random(seed)

    def tally() -> dict[str, int]:
        return {"pairs": 0, "agrees": 0, "ties": 0, "reverses": 0}

    overall, by_kind = tally(), {}
    for row, answers, scores in zip(rows, samples, verdicts, strict=True):
        prompt = row["prompt"][-1]["content"] if isinstance(row["prompt"], list) else str(row["prompt"])
        texts = [answer["text"] for answer in answers]
        for better in range(len(texts)):
            for worse in range(len(texts)):
                if scores[better] <= scores[worse]:
                    continue
                choice, _ = labeller(prompt, texts[better], texts[worse], row=row_for_labeller(row), rng=rng,
                                     noise=0.0)
                if choice not in LABEL_CHOICES:
                    raise LabelError(f"the labeller answered {choice!r}, not one of {', '.join(LABEL_CHOICES)}")
                outcome = "agrees" if choice == "A" else "reverses" if choice == "B" else "ties"
                kinds = [overall] + ([by_kind.setdefault(row["category"], tally())] if row.get("category") else [])
                for counts in kinds:
                    counts["pairs"] += 1
                    counts[outcome] += 1

    def shares(counts: dict[str, int]) -> dict:
        if not counts["pairs"]:
            return {"pairs": 0, "agrees": None, "ties": None, "reverses": None, "accuracy": None}
        return {"pairs": counts["pairs"], **{k: counts[k] / counts["pairs"] for k in ("agrees", "ties", "reverses")},
                "accuracy": (counts["agrees"] + counts["ties"] / 2) / counts["pairs"]}

    return {**shares(overall), "by_kind": {kind: shares(counts) for kind, counts in by_kind.items()}}
