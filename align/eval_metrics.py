"""The numbers an evaluation reports, as plain functions of plain lists (the eval stage and `align eval` feed them).

Win rate with a confidence interval, correlations (is the reward just rewarding length?), repetition, length
statistics, and BLEU / ROUGE-L against reference answers through sacrebleu and rouge-score.

Gold judges (judges that did not train the policy): pass rates with Wilson intervals, paired model-vs-model
differences (exact McNemar for 0/1 scores, paired bootstrap otherwise), the step where a proxy reward keeps
rising while the gold score falls (reward hacking), and their plain-text table for the terminal summary.

From a model's log-probabilities: the perplexity of reference answers, and the exact KL between two models along
the policy's own answers.
"""

from __future__ import annotations

import math
import random
import statistics


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion successes / n. Unlike the normal approximation it stays inside
    [0, 1] and is sensible at 0% or 100%. `successes` may be fractional (ties counted half, judge scores)."""
    if n <= 0:
        raise ValueError(f"wilson_interval needs n > 0 (got {n})")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(max(0.0, p * (1 - p)) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate_with_interval(scores: list[float], baseline_scores: list[float], z: float = 1.96) -> dict:
    """Share of items where `scores` beats `baseline_scores` (exact ties count half), with a Wilson score
    interval: unlike the normal approximation it stays inside [0, 1] and is sensible at 0% or 100% wins."""
    from align.reward.scoring import win_rate

    p = win_rate(scores, baseline_scores)  # checks the lists
    wins = sum(a > b for a, b in zip(scores, baseline_scores))
    ties = sum(a == b for a, b in zip(scores, baseline_scores))
    n = len(scores)
    low, high = wilson_interval(p * n, n, z)
    return {"win_rate": p, "ci_low": low, "ci_high": high, "wins": wins, "ties": ties, "losses": n - wins - ties,
            "n": n}


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
        "kl_to_baseline": None if not kl else sum(kl) / len(kl),  # may cover only the first prompts
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


# ---------------------------------------------------------------- gold judges: pass rates and paired tests


def is_number(value) -> bool:
    """A finite int or float (not a bool): what a metrics row holds when a figure was actually logged."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pass_rate(scores: list[float]) -> dict:
    """Mean judge score over prompts (each score in [0, 1]) with a 95% Wilson interval on the summed score."""
    if not scores:
        raise ValueError("pass_rate needs at least one score")
    n = len(scores)
    low, high = wilson_interval(sum(scores), n)
    return {"rate": sum(scores) / n, "low": low, "high": high, "n": n}


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value. If the two models were equally good, each prompt only one of them passes
    would be a fair coin, so this is a binomial test with p = 1/2 on those a_only + b_only discordant prompts."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integers divided once: no underflow in the terms for large n


def bootstrap_means(differences: list[float], resamples: int, seed: int) -> list[float]:
    """Sorted means of `resamples` resamples (with replacement) of per-prompt differences. Resampling prompts
    keeps each prompt's two scores together, which is what makes the bootstrap paired."""
    rng = random.Random(seed)
    n = len(differences)
    return sorted(sum(rng.choices(differences, k=n)) / n for _ in range(resamples))


def percentile(ordered: list[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of sorted values, interpolating linearly between neighbours."""
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def paired_difference(a: list[float], b: list[float], resamples: int = 10000, seed: int = 0) -> dict:
    """Is model A better than model B on the same prompts? a, b: their judge scores, prompt by prompt.

    The interval is a paired bootstrap percentile interval of the mean difference (seeded: the same inputs
    always give the same figures). The p-value is exact McNemar when every score is 0 or 1 (only the prompts
    where the models disagree carry evidence), otherwise the two-sided paired-bootstrap p-value."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_difference needs two equally long, non-empty lists (got {len(a)} and {len(b)})")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1 (got {resamples})")
    n = len(a)
    difference = sum(a) / n - sum(b) / n
    means = bootstrap_means([x - y for x, y in zip(a, b)], resamples, seed)
    figures = {"difference": difference, "low": percentile(means, 0.025), "high": percentile(means, 0.975), "n": n}
    if all(x in (0, 1) for x in (*a, *b)):
        a_only = sum(x == 1 and y == 0 for x, y in zip(a, b))
        b_only = sum(x == 0 and y == 1 for x, y in zip(a, b))
        return {**figures, "p_value": mcnemar_exact(a_only, b_only), "test": "exact McNemar",
                "a_only": a_only, "b_only": b_only}
    # How often a resampled difference lands on the other side of 0 from the observed one; the floor is the
    # resolution of the bootstrap (it never shows p = 0).
    other_side = sum(m <= 0 for m in means) if difference >= 0 else sum(m >= 0 for m in means)
    return {**figures, "p_value": max(1 / resamples, min(1.0, 2 * other_side / resamples)),
            "test": "paired bootstrap", "a_only": sum(x > y for x, y in zip(a, b)),
            "b_only": sum(x < y for x, y in zip(a, b))}


def macro_rate(scores: list[float], categories: list) -> float:
    """The mean over categories of each category's mean score: every kind of request counts the same."""
    groups: dict = {}
    for score, category in zip(scores, categories, strict=True):
        groups.setdefault(category, []).append(score)
    return sum(sum(g) / len(g) for g in groups.values()) / len(groups)


def macro_difference(a: list[float], b: list[float], categories: list, resamples: int = 10000, seed: int = 0) -> dict:
    """Model A's macro average (macro_rate) minus model B's on the same prompts, with a 95% stratified paired
    bootstrap interval (prompts resampled within their category) and a two-sided paired randomisation p-value
    (each prompt's two scores swapped at random; seeded, floor 1/resamples)."""
    if not (len(a) == len(b) == len(categories)) or not a:
        raise ValueError(f"macro_difference needs equally long, non-empty lists (got {len(a)}, {len(b)}, "
                         f"{len(categories)})")
    groups: dict = {}
    for i, category in enumerate(categories):
        groups.setdefault(category, []).append(i)
    weights = [0.0] * len(a)
    for index in groups.values():
        for i in index:
            weights[i] = 1 / (len(groups) * len(index))
    differences = [x - y for x, y in zip(a, b)]
    observed = sum(w * d for w, d in zip(weights, differences))
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        total = 0.0
        for index in groups.values():
            total += sum(differences[rng.choice(index)] for _ in index) / len(index)
        means.append(total / len(groups))
    means.sort()
    extreme = sum(abs(sum(w * d * rng.choice((-1, 1)) for w, d in zip(weights, differences) if d))
                  >= abs(observed) - 1e-12 for _ in range(resamples))
    return {"difference": observed, "low": percentile(means, 0.025), "high": percentile(means, 0.975),
            "p_value": max(1 / resamples, extreme / resamples), "test": "paired randomisation (stratified)",
            "n": len(a), "categories": len(groups)}


# ---------------------------------------------------------------- reward hacking: proxy up, gold down


def trailing_mean(values: list[float], window: int) -> list[float]:
    """Each value averaged with up to window - 1 values before it: smooths noise without looking ahead."""
    return [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def reward_hacking_start(points: list[dict], proxy: str = "reward_mean", gold: str = "gold_mean",
                         tolerance: float = 0.02) -> dict | None:
    """The step where the gold score peaked, if after it the proxy reward kept rising while the gold score fell
    by more than `tolerance` (both smoothed: one noisy batch is not hacking); None otherwise.

    points: per-step rows {"step", "kl", proxy, gold} in step order (PPO steps, online-DPO rounds)."""
    rows = [r for r in points if is_number(r.get(proxy)) and is_number(r.get(gold))]
    if len(rows) < 3:
        return None
    window = max(1, len(rows) // 5)
    proxy_smooth = trailing_mean([r[proxy] for r in rows], window)
    gold_smooth = trailing_mean([r[gold] for r in rows], window)
    peak = max(range(len(rows)), key=gold_smooth.__getitem__)  # the first of equal maxima
    if gold_smooth[-1] >= gold_smooth[peak] - tolerance or proxy_smooth[-1] <= proxy_smooth[peak]:
        return None
    return {"step": rows[peak].get("step"), "gold_peak": gold_smooth[peak], "gold_last": gold_smooth[-1],
            "proxy_at_peak": proxy_smooth[peak], "proxy_last": proxy_smooth[-1],
            "kl_at_peak": rows[peak].get("kl"), "kl_last": rows[-1].get("kl")}


def hacking_message(stage: str, points: list[dict], proxy: str = "reward_mean",
                    gold: str = "gold_mean") -> str | None:
    """One plain-English line for the run summary when reward_hacking_start fires; None when it does not."""
    found = reward_hacking_start(points, proxy, gold)
    if found is None:
        return None
    kl = (f" (KL {found['kl_at_peak']:.1f} -> {found['kl_last']:.1f} nats)"
          if is_number(found["kl_at_peak"]) and is_number(found["kl_last"]) else "")
    return (f"{stage}: reward hacking: from step {found['step']} the proxy reward rose {found['proxy_at_peak']:.2f} -> "
            f"{found['proxy_last']:.2f} while the gold score fell {found['gold_peak']:.2f} -> {found['gold_last']:.2f}{kl}")


# ---------------------------------------------------------------- gold judges: table for the summary and report


def short_judge(name: str) -> str:
    """'align.judges:gold' -> 'gold'; descriptions such as 'reward model (reward stage)' stay as they are."""
    return name.rsplit(":", 1)[-1] if ":" in name and " " not in name else name


def _rate_cell(rate: dict | None) -> str:
    return "n/a" if not rate else f"{rate['rate']:.3f} [{rate['low']:.3f}, {rate['high']:.3f}]"


def _p_text(p: float) -> str:
    return "p<0.0001" if p < 0.0001 else f"p={p:.4f}"


def _difference_cell(paired: dict | None) -> str:
    if not paired:
        return "n/a"
    return f"{paired['difference']:+.3f} [{paired['low']:+.3f}, {paired['high']:+.3f}] {_p_text(paired['p_value'])}"


def gold_header(gold: dict) -> tuple[str, ...]:
    """Column names of gold_table: judge, each model (final policy first), then final minus each other model."""
    final, *others = gold["models"]
    return ("judge", *gold["models"], *(f"{final} - {m}" for m in others))


def gold_table(gold: dict) -> list[tuple[str, ...]]:
    """One row per judge (columns: gold_header): each model's pass rate with its 95% Wilson interval, then the
    final policy's paired difference from each other model with its 95% interval and p-value."""
    rows = []
    for judge in gold["judges"]:
        rates = gold.get("pass_rates", {}).get(judge, {})
        paired = gold.get("paired", {}).get(judge, {})
        rows.append((short_judge(judge), *(_rate_cell(rates.get(m)) for m in gold["models"]),
                     *(_difference_cell(paired.get(f"vs_{m}")) for m in gold["models"][1:])))
    return rows


def category_header(gold: dict) -> tuple[str, ...]:
    return ("category", "n", *reversed(gold["models"]))


def category_rows(gold: dict, judge: str) -> list[tuple[str, ...]]:
    """(category, prompts, one rate per model from base up to the final policy) for one judge, by category name."""
    rows = []
    for category, rates in sorted(gold.get("categories", {}).get(judge, {}).items()):
        cells = [f"{rates[m]:.3f}" if is_number(rates.get(m)) else "n/a" for m in reversed(gold["models"])]
        rows.append((category, str(rates.get("n", "?")), *cells))
    return rows


def judges_used(gold: dict) -> tuple[str, str | None]:
    """("trained by: ...; judged by: ...", a warning when a judge also trained the policy, else None): a judge
    the policy was optimised against measures how well it was gamed, not how good the answers are."""
    trained = gold.get("trained_by", [])
    judged = [short_judge(j) for j in gold.get("judged_by", gold["judges"])]
    both = [short_judge(j) for j in gold.get("not_independent", [])]
    warning = (f"{', '.join(both)} also gave a training signal (named above, on training prompts only): on the "
               f"held-out prompts it judges answers to questions it never labelled, but it is not a stranger to "
               f"the run") if both else None
    return f"trained by: {'; '.join(trained) or 'n/a'}. Judged by: {', '.join(judged) or 'n/a'}", warning


def aligned(rows: list[tuple[str, ...]], indent: str = "") -> list[str]:
    """Rows as left-aligned text columns two spaces apart, without trailing spaces."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [(indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths))).rstrip() for row in rows]


def gold_lines(gold: dict, indent: str = "  ") -> list[str]:
    """The gold-judge figures as aligned plain-text lines for the terminal summary."""
    lines = [f"{indent}gold judges on {gold['prompts']} held-out prompts: pass rate [95% Wilson]; final minus "
             f"baseline [95% paired bootstrap], p exact McNemar for 0/1 scores, else paired bootstrap"]
    lines += aligned([gold_header(gold), *gold_table(gold)], indent + "  ")
    used, warning = judges_used(gold)
    lines.append(f"{indent}{used}")
    if warning:
        lines.append(f"{indent}warning: {warning}")
    if gold["judges"] and category_rows(gold, gold["judges"][0]):
        first = gold["judges"][0]
        macro = gold.get("macro", {}).get(first)
        if macro:
            final, *others = gold["models"]
            lines.append(f"{indent}macro average over categories ({short_judge(first)}, each category counts the "
                         f"same): " + ", ".join(f"{m} {macro['rates'][m]:.3f}" for m in gold["models"]))
            lines += [f"{indent}  {final} - {m}: {_difference_cell(macro['paired'].get(f'vs_{m}'))}" for m in others]
        lines.append(f"{indent}by category ({short_judge(first)}: {' / '.join(reversed(gold['models']))}; "
                     f"final - each other model, exact McNemar p):")
        table = gold.get("categories", {}).get(first, {})
        rows = []
        for category, n, *rates in category_rows(gold, first):
            paired = table.get(category, {}).get("paired", {})
            rows.append((category, f"n={n}", " / ".join(rates),
                         *(f"- {m} {paired[f'vs_{m}']['difference']:+.3f} ({_p_text(paired[f'vs_{m}']['p_value'])})"
                           for m in gold["models"][1:] if f"vs_{m}" in paired)))
        lines += aligned(rows, indent + "  ")
    return lines


# ------------------------------------------------------------------ figures from a model's log-probabilities

def sequence_logprobs(model, ids: list[int], start: int):
    """Full next-token log-distributions at the positions predicting ids[start:]."""
    import torch

    tensor = torch.tensor([ids], device=next(model.parameters()).device)
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=tensor).logits[0, start - 1 : -1].float(), -1)


def reference_perplexity(model, tokenizer, prompts, references, token_ids) -> float:
    """exp(mean negative log-likelihood per token) of the reference answers, over the answer span the chat
    template renders (prompts whose rendering changes once answered have no clean span and are skipped)."""
    import torch

    nll, count = 0.0, 0
    for prompt, answer in zip(prompts, references):
        context = token_ids(tokenizer, prompt, add_generation_prompt=True)
        full = token_ids(tokenizer, prompt + [{"role": "assistant", "content": answer}])
        if full[: len(context)] != context or len(full) <= len(context):
            continue
        logprobs = sequence_logprobs(model, full, len(context))
        nll -= logprobs.gather(1, torch.tensor(full[len(context):], device=logprobs.device)[:, None]).sum().item()
        count += len(full) - len(context)
    return math.exp(nll / count) if count else float("nan")


def policy_kl(models: dict, prompts, answers: list[dict], token_ids) -> list[float] | None:
    """KL(policy || baseline) summed along the policy's answers; None when the tokenizers differ (no shared
    token space to compare distributions in)."""
    (_, policy_tok), (_, baseline_tok) = models["policy"], models["baseline"]
    if policy_tok.get_vocab() != baseline_tok.get_vocab():
        return None
    return kl_along_answers(lambda name, ids, start: sequence_logprobs(models[name][0], ids, start),
                            policy_tok, prompts, answers, token_ids)


def kl_along_answers(logprobs_of, tokenizer, prompts, answers: list[dict], token_ids) -> list[float]:
    """Per answer: the sum over its tokens of KL(policy || baseline) between the two full next-token
    distributions, along the policy's own answer; exact (no sampling), so deterministic.
    `logprobs_of(name, ids, start)` gives model `name`'s log-distributions predicting ids[start:]."""
    out = []
    for prompt, answer in zip(prompts, answers):
        context = token_ids(tokenizer, prompt, add_generation_prompt=True)
        if not answer["token_ids"]:
            out.append(0.0)
            continue
        ids = context + answer["token_ids"]
        p = logprobs_of("policy", ids, len(context))
        q = logprobs_of("baseline", ids, len(context)).to(p.device)
        out.append((p.exp() * (p - q)).sum().item())
    return out
