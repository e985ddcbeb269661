"""Annotation statistics for pairwise preference labels: `align labels stats labels.db` prints
format_report(label_report(judgments)).

A judgment is one annotator's verdict on one item (a prompt and two responses, "response 1" and "response 2"):
  {"annotator": str, "item_id": str, "choice": "A" | "B" | "tie" | "both_bad",
   "a_response": 1 | 2, "model_a": str | None, "model_b": str | None}
`choice` is in position space (what was clicked); `a_response` says which response was shown as A. The web app
randomises positions per annotator, so two annotators who clicked different letters may have picked the same
response: agreement is always computed on `outcome()` (item space), position bias on `choice` (position space).

Stdlib only, so the report runs anywhere the labels database can be read.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict

from align.labelling.store import CHOICES
SIGNIFICANCE = 0.05
BINOMIAL_RELATIVE_TOLERANCE = 1e-7  # as scipy.stats.binomtest: outcomes tied with the observed one within float noise


# ------------------------------------------------------------------------------------------------ statistics


def outcome(judgment: dict) -> str:
    """The choice in item space: "1", "2", "tie" or "both_bad"."""
    choice, a_response = judgment["choice"], judgment["a_response"]
    if choice not in CHOICES:
        raise ValueError(f"judgment choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    if a_response not in (1, 2):
        raise ValueError(f"judgment a_response must be 1 or 2, got {a_response!r}")
    if choice == "A":
        return str(a_response)
    if choice == "B":
        return str(3 - a_response)
    return choice


def cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    """Cohen's kappa for two raters labelling the same items, one (rater 1, rater 2) pair per item.
    None when undefined: no pairs, or chance agreement of 1."""
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(first == second for first, second in pairs) / n
    first_counts = Counter(first for first, _ in pairs)
    second_counts = Counter(second for _, second in pairs)
    expected = sum(first_counts[label] * second_counts[label] for label in first_counts) / (n * n)
    # Chance agreement is 1 only when both raters used one and the same label throughout: kappa is 0/0 there.
    # 1.0 would claim chance-corrected agreement the data cannot show and 0.0 would claim none, so report None
    # (printed "n/a") and let the raw agreement speak.
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def fleiss_kappa(ratings: list[list[str]]) -> float | None:
    """Fleiss' kappa from the labels each item received, generalised to a varying number of raters per item
    (equal to textbook Fleiss' kappa when every item has the same count). Items with fewer than 2 ratings carry
    no agreement information and are ignored. None when undefined: no usable item, or a single label used
    throughout (chance agreement of 1)."""
    rated = [Counter(labels) for labels in ratings if len(labels) >= 2]
    if not rated:
        return None
    mean_item_agreement = sum(_item_agreement(counts) for counts in rated) / len(rated)
    totals: Counter = Counter()
    for counts in rated:
        totals.update(counts)
    n_ratings = sum(totals.values())
    expected = sum((count / n_ratings) ** 2 for count in totals.values())
    if expected >= 1.0:
        return None
    return (mean_item_agreement - expected) / (1.0 - expected)


def _item_agreement(counts: Counter) -> float:
    """Share of ordered rater pairs on one item that agree (Fleiss' P_i)."""
    n = sum(counts.values())
    return (sum(count * count for count in counts.values()) - n) / (n * (n - 1))


def binomial_two_sided_p(k: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test: the probability of all outcomes no more likely than k successes in n trials.
    Probabilities are summed in log space so thousands of judgments neither overflow nor underflow."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"binomial test needs 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"binomial test needs 0 <= p <= 1, got p={p}")
    if n == 0:
        return 1.0
    if p in (0.0, 1.0):  # a certain outcome: anything else is impossible
        certain = 0 if p == 0.0 else n
        return 1.0 if k == certain else 0.0
    log_pmf = [_binomial_log_pmf(i, n, p) for i in range(n + 1)]
    threshold = log_pmf[k] + math.log1p(BINOMIAL_RELATIVE_TOLERANCE)
    return min(1.0, math.fsum(math.exp(value) for value in log_pmf if value <= threshold))


def _binomial_log_pmf(i: int, n: int, p: float) -> float:
    log_choose = math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
    return log_choose + i * math.log(p) + (n - i) * math.log1p(-p)


# ------------------------------------------------------------------------------------------------ report


def label_report(judgments: list[dict]) -> dict:
    """Counts, position bias, inter-annotator agreement and model win rates, as a JSON-serialisable dict.

    Counts, rates, position bias and model wins use every judgment. Agreement (`pairwise`,
    `mean_pairwise_agreement`, `fleiss_kappa`) uses one judgment per annotator and item: should an annotator have
    judged an item more than once (the app should prevent it), their last judgment in list order counts.
    `models` is an empty list when no judgment names two different models.
    """
    choices = Counter(judgment["choice"] for judgment in judgments)
    total = len(judgments)
    outcomes = _latest_outcomes(judgments)
    annotators_per_item = Counter(item for _, item in outcomes)
    pairwise = _pairwise_agreement(outcomes)
    shared = sum(pair["shared_items"] for pair in pairwise)
    return {
        "judgments": total,
        "items": len({judgment["item_id"] for judgment in judgments}),
        "items_with_overlap": sum(count >= 2 for count in annotators_per_item.values()),
        "per_annotator": _per_annotator_counts(judgments),
        "choices": {choice: choices[choice] for choice in CHOICES},
        "tie_rate": choices["tie"] / total if total else 0.0,
        "both_bad_rate": choices["both_bad"] / total if total else 0.0,
        "position_bias": _position_bias(judgments),
        "pairwise": pairwise,
        "mean_pairwise_agreement": (
            sum(pair["agreement"] * pair["shared_items"] for pair in pairwise) / shared if shared else None
        ),
        "fleiss_kappa": fleiss_kappa(_ratings_per_item(outcomes)),
        "models": _model_wins(judgments),
    }


def _latest_outcomes(judgments: list[dict]) -> dict[tuple[str, str], str]:
    """(annotator, item_id) -> outcome; later judgments overwrite earlier ones."""
    return {(judgment["annotator"], judgment["item_id"]): outcome(judgment) for judgment in judgments}


def _per_annotator_counts(judgments: list[dict]) -> dict[str, dict]:
    by_annotator: dict[str, Counter] = defaultdict(Counter)
    for judgment in judgments:
        by_annotator[judgment["annotator"]][judgment["choice"]] += 1
    return {
        name: {"judgments": sum(counts.values()), **{choice: counts[choice] for choice in CHOICES}}
        for name, counts in sorted(by_annotator.items())
    }


def _position_bias(judgments: list[dict]) -> dict:
    """Does "A" win more decisive judgments than a fair coin would? Positions are randomised, so it should not."""
    overall = _a_share([judgment["choice"] for judgment in judgments])
    by_annotator: dict[str, list[str]] = defaultdict(list)
    for judgment in judgments:
        by_annotator[judgment["annotator"]].append(judgment["choice"])
    overall["per_annotator"] = {name: _a_share(choices) for name, choices in sorted(by_annotator.items())}
    return overall


def _a_share(choices: list[str]) -> dict:
    a_count = choices.count("A")
    decisive = a_count + choices.count("B")
    return {
        "decisive": decisive,
        "a_share": a_count / decisive if decisive else None,
        "p_value": binomial_two_sided_p(a_count, decisive),
    }


def _pairwise_agreement(outcomes: dict[tuple[str, str], str]) -> list[dict]:
    by_annotator: dict[str, dict[str, str]] = defaultdict(dict)
    for (annotator, item), result in outcomes.items():
        by_annotator[annotator][item] = result
    pairs = []
    for first, second in itertools.combinations(sorted(by_annotator), 2):
        shared = sorted(by_annotator[first].keys() & by_annotator[second].keys())
        if not shared:
            continue
        labels = [(by_annotator[first][item], by_annotator[second][item]) for item in shared]
        pairs.append({
            "annotators": [first, second],
            "shared_items": len(shared),
            "agreement": sum(a == b for a, b in labels) / len(labels),
            "cohen_kappa": cohen_kappa(labels),
        })
    return pairs


def _ratings_per_item(outcomes: dict[tuple[str, str], str]) -> list[list[str]]:
    by_item: dict[str, list[str]] = defaultdict(list)
    for (_, item), result in outcomes.items():
        by_item[item].append(result)
    return [labels for labels in by_item.values() if len(labels) >= 2]


def _model_wins(judgments: list[dict]) -> list[dict]:
    """Head-to-head results per unordered model pair. model_a/model_b name the models behind the positions, so the
    winner is the model in the clicked position; a_response plays no part here."""
    tallies: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for judgment in judgments:
        model_a, model_b, choice = judgment.get("model_a"), judgment.get("model_b"), judgment["choice"]
        if model_a is None or model_b is None or model_a == model_b:
            continue
        pair = tuple(sorted((model_a, model_b)))
        if choice in ("A", "B"):
            winner = model_a if choice == "A" else model_b
            tallies[pair]["wins_1" if winner == pair[0] else "wins_2"] += 1
        else:
            tallies[pair]["ties" if choice == "tie" else "both_bad"] += 1
    return [_model_row(pair, tally) for pair, tally in sorted(tallies.items())]


def _model_row(pair: tuple[str, str], tally: Counter) -> dict:
    wins_1, wins_2, ties, both_bad = tally["wins_1"], tally["wins_2"], tally["ties"], tally["both_bad"]
    # both_bad says nothing about which model is better, so it stays out of the win rate; a tie is half a win.
    scored = wins_1 + wins_2 + ties
    return {
        "model_1": pair[0], "model_2": pair[1],
        "wins_1": wins_1, "wins_2": wins_2, "ties": ties, "both_bad": both_bad,
        "n": wins_1 + wins_2 + ties + both_bad,
        "win_rate_1": (wins_1 + ties / 2) / scored if scored else None,
    }


# ------------------------------------------------------------------------------------------------ chat feedback


def feedback_report(replies: list[dict]) -> dict:
    """Chat-feedback counts, and the up-rate (ups / rated, with a 95% Wilson interval) per model and per
    annotator."""
    def tally(group: list[dict]) -> dict:
        up = sum(r["rating"] == 1 for r in group)
        down = sum(r["rating"] == -1 for r in group)
        rated = up + down
        low, high = wilson(up, rated)
        return {"replies": len(group), "rated": rated, "up": up, "down": down,
                "corrected": sum(r["correction"] is not None for r in group),
                "up_rate": up / rated if rated else None, "up_rate_low": low, "up_rate_high": high}

    by = {"per_model": {}, "per_annotator": {}}
    for key, field in (("per_model", "model"), ("per_annotator", "annotator")):
        groups: dict[str, list[dict]] = {}
        for reply in replies:
            groups.setdefault(reply[field], []).append(reply)
        by[key] = {name: tally(group) for name, group in sorted(groups.items())}
    return {**tally(replies), **by}


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float | None, float | None]:
    if n == 0:
        return None, None
    p = successes / n
    centre, spread = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


def format_feedback(report: dict) -> str:
    lines = ["## Chat feedback", "",
             f"- Replies: {report['replies']}; rated {report['rated']} ({report['up']} up, {report['down']} down); "
             f"corrected {report['corrected']}"]
    if not report["replies"]:
        return "\n".join(lines)
    header = ["", "replies", "rated", "up", "down", "corrected", "up rate [95%]"]
    for title, key in (("model", "per_model"), ("annotator", "per_annotator")):
        rows = [[_cell(name), str(t["replies"]), str(t["rated"]), str(t["up"]), str(t["down"]), str(t["corrected"]),
                 _rate(t)] for name, t in report[key].items()]
        lines += ["", _table([title, *header[1:]], rows)]
    return "\n".join(lines)


def _rate(tally: dict) -> str:
    if tally["up_rate"] is None:
        return "n/a"
    return f"{tally['up_rate']:.3f} [{tally['up_rate_low']:.3f}, {tally['up_rate_high']:.3f}]"


# ------------------------------------------------------------------------------------------------ text


def format_report(report: dict) -> str:
    """Plain text that is also Markdown, for the terminal and the admin page."""
    sections = [
        _totals_section(report),
        _annotator_section(report),
        _position_section(report["position_bias"]),
        _agreement_section(report),
    ]
    if report["models"]:
        sections.append(_models_section(report["models"]))
    return "\n\n".join(sections) + "\n"


def _totals_section(report: dict) -> str:
    choices, total = report["choices"], report["judgments"]
    return "\n".join([
        "# Label statistics",
        "",
        f"- Judgments: {total}",
        f"- Items: {report['items']} ({report['items_with_overlap']} judged by 2 or more annotators)",
        f"- Tie rate: {_number(report['tie_rate'])} ({choices['tie']} of {total})",
        f"- Both-bad rate: {_number(report['both_bad_rate'])} ({choices['both_bad']} of {total})",
    ])


def _annotator_section(report: dict) -> str:
    bias = report["position_bias"]["per_annotator"]
    rows = [
        [_cell(name), str(counts["judgments"]), *(str(counts[choice]) for choice in CHOICES),
         _number(bias[name]["a_share"]), _p(bias[name]["p_value"])]
        for name, counts in report["per_annotator"].items()
    ]
    header = ["annotator", "judgments", "A", "B", "tie", "both bad", "A share", "p (position)"]
    return "## Annotators\n\n" + (_table(header, rows) if rows else "No judgments.")


def _position_section(bias: dict) -> str:
    return "## Position bias\n\n" + _position_line(bias)


def _position_line(bias: dict) -> str:
    if bias["a_share"] is None:
        return "No decisive (A or B) judgments: position bias n/a."
    line = f"A chosen {bias['a_share']:.0%} of {bias['decisive']} decisive judgments ({_p_clause(bias['p_value'])})"
    if bias["p_value"] >= SIGNIFICANCE:
        return line + ": no sign of position bias."
    side = "left (A)" if bias["a_share"] > 0.5 else "right (B)"
    return line + f": annotators may favour the {side} side."


def _agreement_section(report: dict) -> str:
    lines = [
        "## Agreement",
        "",
        f"- Mean pairwise agreement: {_number(report['mean_pairwise_agreement'])} (weighted by shared items)",
        f"- Fleiss' kappa: {_number(report['fleiss_kappa'])}",
        "",
    ]
    if not report["pairwise"]:
        return "\n".join(lines + ["No item was judged by two annotators, so agreement cannot be measured."])
    rows = [
        [" / ".join(_cell(name) for name in pair["annotators"]), str(pair["shared_items"]),
         _number(pair["agreement"]), _number(pair["cohen_kappa"])]
        for pair in report["pairwise"]
    ]
    return "\n".join(lines + [_table(["annotators", "shared items", "agreement", "Cohen's kappa"], rows)])


def _models_section(models: list[dict]) -> str:
    rows = [
        [_cell(row["model_1"]), _cell(row["model_2"]), str(row["wins_1"]), str(row["wins_2"]), str(row["ties"]),
         str(row["both_bad"]), str(row["n"]), _number(row["win_rate_1"])]
        for row in models
    ]
    header = ["model 1", "model 2", "wins 1", "wins 2", "ties", "both bad", "n", "win rate 1"]
    note = "Win rate 1 = (wins 1 + ties / 2) / (wins 1 + wins 2 + ties); both-bad judgments are left out."
    return "## Models\n\n" + _table(header, rows) + "\n\n" + note


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")  # a "|" in a name would split the Markdown cell


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _p_clause(value: float) -> str:
    text = _p(value)
    return "p" + text if text.startswith("<") else "p=" + text
