"""The numbers an evaluation reports, as plain functions of plain lists (the eval stage and `align eval` feed them).

Win rate with a confidence interval, correlations (is the reward just rewarding length?), repetition, length
statistics, and BLEU / ROUGE-L against reference answers through sacrebleu and rouge-score.
"""

from __future__ import annotations

import math
import statistics


def win_rate_with_interval(scores: list[float], baseline_scores: list[float], z: float = 1.96) -> dict:
    """Share of items where `scores` beats `baseline_scores` (exact ties count half), with a Wilson score
    interval: unlike the normal approximation it stays inside [0, 1] and is sensible at 0% or 100% wins."""
    from reward.scoring import win_rate

    p = win_rate(scores, baseline_scores)  # checks the lists
    wins = sum(a > b for a, b in zip(scores, baseline_scores))
    ties = sum(a == b for a, b in zip(scores, baseline_scores))
    n = len(scores)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"win_rate": p, "ci_low": max(0.0, centre - half), "ci_high": min(1.0, centre + half),
            "wins": wins, "ties": ties, "losses": n - wins - ties, "n": n}


def pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson correlation; None when either list is constant (the correlation is undefined)."""
    if len(x) != len(y) or len(x) < 2:
        return None
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def ranks(values: list[float]) -> list[float]:
    """1-based ranks; tied values share the mean of their ranks."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            out[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman rank correlation (Pearson on tie-averaged ranks): robust to a few very long answers."""
    return pearson(ranks(x), ranks(y)) if len(x) == len(y) and len(x) >= 2 else None


def repetition_rate(answers: list[list[int]], n: int = 4) -> float:
    """Share of the n-grams in the answers that repeat an earlier n-gram of the same answer (pooled over answers).
    Degenerate loops ("the the the ...") push it towards 1; fluent text sits near 0."""
    total = repeated = 0
    for tokens in answers:
        seen = set()
        for i in range(len(tokens) - n + 1):
            gram = tuple(tokens[i : i + n])
            total += 1
            repeated += gram in seen
            seen.add(gram)
    return repeated / total if total else 0.0


def length_stats(lengths: list[int]) -> dict:
    ordered = sorted(lengths)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]  # nearest-rank percentile
    return {"mean": statistics.fmean(ordered), "median": statistics.median(ordered), "p90": p90, "max": ordered[-1]}


def reference_scores(predictions: list[str], references: list[str]) -> dict:
    """Corpus BLEU (sacrebleu, 0-100) and mean ROUGE-L F1 (rouge-score, with stemming) against one reference each."""
    import sacrebleu
    from rouge_score import rouge_scorer

    bleu = sacrebleu.corpus_bleu(predictions, [references]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return {"bleu": bleu, "rougeL": statistics.fmean(rouge) if rouge else 0.0}


def comparison_figures(answers: dict[str, list[dict]], rewards: dict[str, list[float]], references: list[str],
                       perplexities: dict[str, float], kl: list[float] | None, judge_accuracy: dict) -> dict:
    """Every figure of a "policy" vs "baseline" comparison as flat keys, the same for the eval stage and
    `align eval`. answers: per model, generate_answers' dicts (text, tokens, ended_with_eos, token_ids)."""
    n = len(rewards["policy"])
    win = win_rate_with_interval(rewards["policy"], rewards["baseline"])
    figures = {
        "win_rate": win["win_rate"],
        "win_rate_ci_low": win["ci_low"],
        "win_rate_ci_high": win["ci_high"],
        "wins_ties_losses": [win["wins"], win["ties"], win["losses"]],
        "kl_to_baseline": None if kl is None else sum(kl) / n,
        "reward_gap": (sum(rewards["policy"]) - sum(rewards["baseline"])) / n,
        "reward_model_accuracy": judge_accuracy["accuracy"],
        "reward_model_margin": judge_accuracy["mean_margin"],
    }
    for name, outs in answers.items():
        lengths = [a["tokens"] for a in outs]
        stats = length_stats(lengths)
        scores = reference_scores([a["text"] for a in outs], references)
        figures.update({
            f"{name}_mean_reward": sum(rewards[name]) / n,
            f"{name}_mean_tokens": stats["mean"],
            f"{name}_median_tokens": stats["median"],
            f"{name}_p90_tokens": stats["p90"],
            f"{name}_eos_rate": sum(a["ended_with_eos"] for a in outs) / n,
            f"{name}_repetition_rate": repetition_rate([a["token_ids"] for a in outs]),
            f"{name}_length_reward_pearson": pearson(lengths, rewards[name]),
            f"{name}_length_reward_spearman": spearman(lengths, rewards[name]),
            f"{name}_perplexity": perplexities[name],
            f"{name}_bleu": scores["bleu"],
            f"{name}_rougeL": scores["rougeL"],
        })
    return figures
