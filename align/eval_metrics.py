"""The numbers an evaluation reports, as plain functions of plain lists (the eval stage feeds them).

Win rate with a confidence interval, correlations (is the reward just rewarding length?), repetition, length
statistics, and BLEU / ROUGE-L against reference answers through sacrebleu and rouge-score.
"""

from __future__ import annotations

import math
import statistics


def win_rate_with_interval(scores: list[float], baseline_scores: list[float], z: float = 1.96) -> dict:
    """Share of items where `scores` beats `baseline_scores` (exact ties count half), with a Wilson score
    interval: unlike the normal approximation it stays inside [0, 1] and is sensible at 0% or 100% wins."""
    if len(scores) != len(baseline_scores) or not scores:
        raise ValueError(f"need two equal, non-empty lists (got {len(scores)} and {len(baseline_scores)})")
    wins = sum(a > b for a, b in zip(scores, baseline_scores))
    ties = sum(a == b for a, b in zip(scores, baseline_scores))
    n = len(scores)
    p = (wins + ties / 2) / n
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
