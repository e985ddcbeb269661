"""On-policy preference data: score a policy's own sampled answers, and turn each prompt's samples into a
(best, worst) pair. Shared by the online_dpo stage (pairs judged by the reward model) and the reward stage
(pairs of the SFT model's samples ordered by a judge, and the check that the reward model ranks such samples).

Pure functions over lists, apart from `proxy_scores`, which runs the reward model.
"""

from __future__ import annotations

import difflib
import json
import random
import re

from align.reward_functions import call_reward_function, load_reward_function


def normalise_text(text: str) -> str:
    """Lower case, punctuation and runs of spaces dropped: "Paris." and "paris" are the same answer."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def near_identical(a: str, b: str, max_similarity: float) -> bool:
    """Texts too alike to teach a preference: equal once normalised, or a difflib ratio of max_similarity or
    more (a pair differing in one word of a long answer mostly teaches noise)."""
    a, b = normalise_text(a), normalise_text(b)
    return a == b or difflib.SequenceMatcher(None, a, b).ratio() >= max_similarity


def build_pairs(prompts: list[list[dict]], samples: list[list[dict]], scores: list[list[float]],
                min_score_gap: float = 0.0, max_similarity: float = 0.9) -> tuple[list[dict], dict]:
    """Per prompt: its highest-scored sample as chosen against its lowest-scored one as rejected. A prompt gives
    no pair when the gap is not above min_score_gap (a tie) or when every lowest-scored sample is near-identical
    to the chosen one. Among equal best scores the first sample wins; among equal worst, the first that differs
    enough from the chosen. Returns (pairs as preference rows, counts of what was dropped and why)."""
    pairs, counts = [], {"prompts": len(prompts), "pairs": 0, "ties": 0, "near_identical": 0}
    for prompt, answers, values in zip(prompts, samples, scores):
        best = max(range(len(values)), key=lambda i: (values[i], -i))
        lowest = min(values)
        if values[best] - lowest <= min_score_gap:
            counts["ties"] += 1
            continue
        worst = next((i for i, v in enumerate(values) if v == lowest
                      and not near_identical(answers[best]["text"], answers[i]["text"], max_similarity)), None)
        if worst is None:
            counts["near_identical"] += 1
            continue
        pairs.append(scored_pair(prompt, answers, values, best, worst))
    counts["pairs"] = len(pairs)
    return pairs, counts


def scored_pair(prompt: list[dict], answers: list[dict], values: list[float], chosen: int, rejected: int) -> dict:
    """Two of a prompt's samples as a preference row, with the scores that ordered them."""
    return {"prompt": prompt,
            "chosen": [{"role": "assistant", "content": answers[chosen]["text"]}],
            "rejected": [{"role": "assistant", "content": answers[rejected]["text"]}],
            "chosen_score": values[chosen], "rejected_score": values[rejected]}


def opening_pairs(prompts: list[list[dict]], samples: list[list[dict]], scores: list[list[float]], openings: int,
                  taken: list[dict], min_score_gap: float = 0.0, max_similarity: float = 0.9) -> list[dict]:
    """Per prompt whose last `openings` samples continue a reply opening (a decline, "I don't know") after at
    least one free sample: its highest-scored opened sample against its highest-scored free one, higher score
    chosen, unless `taken` (the best-vs-worst pairs) already holds those two answers, they are near-identical, or
    their scores differ by no more than min_score_gap. So a round asks whether the opening's reply beats the
    model's own answer on prompts where the proxy's extremes do not; with labels, whoever labels decides which
    way."""
    if openings < 1:
        return []
    have = {(json.dumps(p["prompt"]), frozenset((p["chosen"][0]["content"], p["rejected"][0]["content"])))
            for p in taken}
    pairs = []
    for prompt, answers, values in zip(prompts, samples, scores):
        if len(values) <= openings:
            continue
        free = max(range(len(values) - openings), key=lambda i: (values[i], -i))
        opened = max(range(len(values) - openings, len(values)), key=lambda i: (values[i], -i))
        texts = answers[free]["text"], answers[opened]["text"]
        if ((json.dumps(prompt), frozenset(texts)) in have or near_identical(*texts, max_similarity)
                or abs(values[free] - values[opened]) <= min_score_gap):
            continue
        chosen, rejected = (free, opened) if values[free] >= values[opened] else (opened, free)
        pairs.append(scored_pair(prompt, answers, values, chosen, rejected))
    return pairs


def opening_direction(pair: dict, openings: list[str]) -> tuple[str, str] | None:
    """(opening, "chosen" or "rejected"): the first opening that begins exactly one of the pair's replies, and which
    of them; None if no opening tells the two apart."""
    for opening in openings:
        chosen, rejected = (pair[side][0]["content"].lstrip().startswith(opening.strip())
                            for side in ("chosen", "rejected"))
        if chosen != rejected:
            return opening, "chosen" if chosen else "rejected"
    return None


BALANCED = {"drop": "dropped", "repeat": "repeated"}  # what balance_by_openings did to pairs, in the logs' words


def balance_by_openings(pairs: list[dict], openings: list[str], seed: int, how: str = "drop"
                        ) -> tuple[list[dict], int]:
    """Per opening, as many pairs whose chosen reply begins with it (and the rejected one does not) as pairs whose
    rejected reply does (and the chosen one does not). how="drop": the commoner direction's surplus is dropped at
    random; how="repeat": the rarer direction's pairs are repeated (each once before any twice) to match, so no
    pair is lost. An opening with pairs in one direction only keeps none of them either way. A pair counts under
    the first opening that tells its two replies apart; pairs no opening tells apart are all kept. Without this a
    round whose worst answers are mostly declines teaches "decline less" everywhere, not where declining is wrong.
    Returns (the pairs, in their order, repeats after them; how many were dropped or added). Seeded."""
    if how not in ("drop", "repeat"):
        raise ValueError(f"balance_by_openings: how must be 'drop' or 'repeat', not {how!r}")

    groups: dict[tuple[str, str], list[int]] = {}
    for i, pair in enumerate(pairs):
        if (direction := opening_direction(pair, openings)) is not None:
            groups.setdefault(direction, []).append(i)
    rng = random.Random(seed)
    dropped: set[int] = set()
    repeats: list[int] = []
    for opening in openings:
        for_it, against_it = groups.get((opening, "chosen"), []), groups.get((opening, "rejected"), [])
        rarer, commoner = sorted((for_it, against_it), key=len)
        if how == "repeat" and rarer:
            needed, extra = len(commoner) - len(rarer), []
            while len(extra) < needed:
                extra.extend(rng.sample(rarer, len(rarer)))
            repeats.extend(extra[:needed])
        else:
            dropped.update(rng.sample(commoner, len(commoner) - len(rarer)))
    kept = [pair for i, pair in enumerate(pairs) if i not in dropped] + [pairs[i] for i in repeats]
    return kept, len(dropped) + len(repeats)


def judge_scores(specs: list[str], prompts: list[list[dict]], texts: list[str], columns: dict[str, list]
                 ) -> dict[str, list[float]]:
    """Each judge's (or reward function's) score of each answer; `columns` are the prompt rows' other fields
    (e.g. the answer key), one entry per answer."""
    return {spec: call_reward_function(load_reward_function(spec), spec, prompts, texts, columns) for spec in specs}


def flatten(rows: list[dict], samples: list[list[dict]]) -> tuple[list[list[dict]], list[str], dict[str, list]]:
    """(prompt, text, columns) per sample, in prompt order: what reward functions and judges take."""
    prompts, texts, columns = [], [], {}
    keys = sorted({k for row in rows for k in row if k != "prompt"})
    for row, answers in zip(rows, samples):
        for answer in answers:
            prompts.append(row["prompt"])
            texts.append(answer["text"])
            for k in keys:
                columns.setdefault(k, []).append(row.get(k))
    return prompts, texts, columns


def regroup(values: list[float], samples: list[list[dict]]) -> list[list[float]]:
    """Flat per-sample values back into one list per prompt."""
    out, at = [], 0
    for answers in samples:
        out.append(values[at : at + len(answers)])
        at += len(answers)
    return out


def proxy_scores(reward_model, tokenizer, rows: list[dict], samples: list[list[dict]], functions: list[str],
                 weights: list[float] | None, missing_eos_penalty: float, batch_size: int = 32) -> list[list[float]]:
    """The training signal of a sample: weighted sum of the reward model's score (when given) and each reward
    function's, minus missing_eos_penalty for answers cut off before their end."""
    from align.reward import score_conversations

    prompts, texts, columns = flatten(rows, samples)
    parts = []
    if reward_model is not None:
        conversations = [p + [{"role": "assistant", "content": t or " "}] for p, t in zip(prompts, texts)]
        parts.append(score_conversations(reward_model, tokenizer, conversations, batch_size))
    parts.extend(judge_scores(functions, prompts, texts, columns).values())
    weights = weights or [1.0] * len(parts)
    ended = [a["ended_with_eos"] for answers in samples for a in answers]
    total = [sum(w * part[i] for w, part in zip(weights, parts)) - (0.0 if ended[i] else missing_eos_penalty)
             for i in range(len(texts))]
    return regroup(total, samples)


def ranking_accuracy(proxy: list[list[float]], gold: list[list[float]]) -> dict:
    """How often the proxy orders two samples of one prompt as the gold judge does, over every pair the gold
    judge separates (ties in the proxy count half); and best-of-n: the gold score of the proxy's pick."""
    agree, pairs = 0.0, 0
    picked = []
    for p, g in zip(proxy, gold):
        for i in range(len(g)):
            for j in range(len(g)):
                if g[i] > g[j]:
                    pairs += 1
                    agree += 1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0
        picked.append(g[max(range(len(p)), key=lambda i: (p[i], -i))])
    return {"accuracy": agree / pairs if pairs else None, "pairs": pairs,
            "best_of_n": sum(picked) / len(picked) if picked else None}


def headroom(gold: list[list[float]], threshold: float = 0.5) -> dict:
    """pass@1 (a sample's chance of passing, averaged over prompts) against pass@n (some sample passes) and the
    share of prompts whose samples disagree: the room preference learning has above the model's average."""
    n = len(gold)
    return {"pass_at_1": sum(sum(v > threshold for v in g) / len(g) for g in gold) / n,
            "pass_at_n": sum(any(v > threshold for v in g) for g in gold) / n,
            "mixed_prompts": sum(len({v > threshold for v in g}) > 1 for g in gold), "prompts": n,
            "n": len(gold[0]) if gold else 0}


def ranking_intervals(proxy: list[list[float]], gold: list[list[float]], rounds: int, seed: int = 0) -> dict:
    """95% percentile-bootstrap intervals, resampling prompts, of ranking_accuracy's accuracy and of best-of-n
    minus greedy (greedy being each prompt's first candidate): at a hundred-odd prompts these move by a tenth
    with the draw. {} when rounds is 0."""
    import random

    if not rounds or not gold:
        return {}
    per_prompt = []
    for p, g in zip(proxy, gold):
        figures = ranking_accuracy([p], [g])
        pairs = figures["pairs"]
        per_prompt.append((figures["accuracy"] * pairs if pairs else 0.0, pairs, figures["best_of_n"] - g[0]))
    rng = random.Random(seed)
    accuracies, gains = [], []
    for _ in range(rounds):
        draw = [per_prompt[rng.randrange(len(per_prompt))] for _ in per_prompt]
        pairs = sum(d[1] for d in draw)
        if pairs:
            accuracies.append(sum(d[0] for d in draw) / pairs)
        gains.append(sum(d[2] for d in draw) / len(draw))

    def bounds(values):
        values = sorted(values)
        return (values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]) if values else (None, None)

    return {"accuracy": bounds(accuracies), "best_minus_greedy": bounds(gains), "rounds": rounds}


def interval_text(intervals: dict, name: str) -> str:
    """' [low, high]' of the named bootstrap interval, or '' where the check drew none."""
    low, high = intervals.get(name) or (None, None)
    return f" [{low:.3f}, {high:.3f}]" if low is not None else ""


def check_verdict(accuracy: float | None, best_of_n: float, greedy: float, intervals: dict, n: int = 4) -> tuple[bool, str]:
    """Is a reward model fit to judge the policy? Only if it ranks the policy's own answers better than chance and
    its best-of-n beats greedy, each by the lower end of its bootstrap interval where the check drew one: at a
    hundred-odd prompts a best-of-n a point above greedy is a coin that the CPU's rounding can flip. Returns the
    verdict and, when it is no, why ("" when yes)."""
    if accuracy is None:
        return False, "the judge separated none of its candidate pairs"
    low_accuracy = (intervals.get("accuracy") or (None, None))[0]
    low_gain = (intervals.get("best_minus_greedy") or (None, None))[0]
    why = []
    if (accuracy if low_accuracy is None else low_accuracy) <= 0.5:
        why.append(f"its ranking, {accuracy:.3f}{interval_text(intervals, 'accuracy')}, is not above chance (0.5)")
    if (best_of_n - greedy if low_gain is None else low_gain) <= 0:
        why.append(f"its best-of-{n} minus greedy, {best_of_n - greedy:+.3f}"
                   f"{interval_text(intervals, 'best_minus_greedy')}, is not above zero")
    return not why, "; ".join(why)


def per_kind_headroom(rows: list[dict], gold: list[list[float]], proxy: list[list[float]] | None = None) -> dict:
    """Per kind of prompt (the rows' category; all prompts as one kind without it): the greedy answer's pass rate
    (each prompt's first candidate), pass@1 and pass@n: where a model is weak and where its samples show room;
    with the proxy's scores, its ranking accuracy and best-of-n there too."""
    kinds: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        kinds.setdefault(str(row.get("category") or "all"), []).append(i)
    out = {}
    for kind, index in sorted(kinds.items()):
        groups = [gold[i] for i in index]
        room = headroom(groups)
        out[kind] = {"prompts": len(groups), "greedy": sum(g[0] > 0.5 for g in groups) / len(groups),
                     "pass_at_1": room["pass_at_1"], "pass_at_n": room["pass_at_n"]}
        if proxy is not None:
            ranking = ranking_accuracy([proxy[i] for i in index], groups)
            out[kind].update({"accuracy": ranking["accuracy"], "pairs": ranking["pairs"],
                              "best_of_n": ranking["best_of_n"]})
    return out
