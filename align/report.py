"""The run report: runs/<name>/report.html with every stage's training curves (PNG, matplotlib), the evaluation
table and sample answers side by side. Written at the end of `align run`; `align report RUN_DIR` rewrites it.

The evaluation table is one function (`evaluation_rows`) shared by the report, the terminal summary and the
exported model card, so the three always show the same figures; the gold-judge table is likewise
`align.eval_metrics.gold_table`. Stages that logged a gold score beside their proxy reward get a proxy-vs-gold
plot against sqrt KL, where reward hacking shows as the two curves parting.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from align.eval_metrics import (
    category_header, category_rows, gold_header, gold_table, hacking_message, is_number, judges_used,
    reward_hacking_start, short_judge, trailing_mean,
)
from align.runs import is_finished, read_jsonl, read_stage
from align.stages import STAGES

# Curves worth a panel, in order of interest; each stage shows the first four it logged.
CURVES = ("loss", "eval_loss", "accuracy", "eval_accuracy", "margin", "rewards/accuracies", "rewards/margins",
          "reward_mean", "reward", "kl", "mean_token_accuracy", "policy_loss", "value_loss", "entropy", "kl_coef")
MAX_SAMPLES = 16


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def evaluation_rows(ev: dict) -> list[tuple[str, str, str]]:
    """(figure, final policy, baseline) rows of an eval stage's metrics."""
    rows = [
        ("win rate vs baseline (reward model, ties half)",
         f"{_number(ev['win_rate'])} [{_number(ev.get('win_rate_ci_low'))}, {_number(ev.get('win_rate_ci_high'))}] 95%",
         ""),
        ("wins / ties / losses", "/".join(str(x) for x in ev.get("wins_ties_losses", [])) or "n/a", ""),
        ("mean reward", _number(ev.get("policy_mean_reward")), _number(ev.get("baseline_mean_reward"))),
        ("KL from baseline (nats per answer)", _number(ev.get("kl_to_baseline")), "0"),
    ]
    per_model = [
        ("mean / median / p90 answer tokens", None),
        ("EOS rate (answer ended)", "eos_rate"),
        ("repetition rate (repeated 4-grams)", "repetition_rate"),
        ("length-reward correlation (Spearman)", "length_reward_spearman"),
        ("length-reward correlation (Pearson)", "length_reward_pearson"),
        ("perplexity of held-out chosen answers", "perplexity"),
        ("BLEU vs chosen answers", "bleu"),
        ("ROUGE-L vs chosen answers", "rougeL"),
    ]
    for label, key in per_model:
        if key is None:
            cells = [f"{_number(ev.get(f'{n}_mean_tokens'), 1)} / {_number(ev.get(f'{n}_median_tokens'), 1)} / "
                     f"{_number(ev.get(f'{n}_p90_tokens'))}" for n in ("policy", "baseline")]
        elif f"policy_{key}" in ev:
            cells = [_number(ev.get(f"{n}_{key}"), 2 if key == "bleu" else 3) for n in ("policy", "baseline")]
        else:
            continue
        rows.append((label, *cells))
    if "reward_model_accuracy" in ev:
        rows.append(("reward model accuracy on the held-out pairs (margin)",
                     f"{_number(ev['reward_model_accuracy'])} ({_number(ev.get('reward_model_margin'), 2)})", ""))
    if "human_win_rate" in ev:
        rows.append(("human win rate (blind labels, ties half)",
                     f"{_number(ev['human_win_rate'])} ({ev.get('human_judgments', 0)} judgments)", ""))
    return rows


def evaluation_markdown(ev: dict) -> str:
    head = f"| figure | {ev['policy']} | {ev['baseline']} |\n|---|---|---|\n"
    return head + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in evaluation_rows(ev))


def gold_markdown(gold: dict) -> str:
    """The gold-judge table as Markdown (the exported model card)."""
    from align.eval_metrics import gold_header, gold_table, judges_used

    header = gold_header(gold)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in gold_table(gold)]
    return "\n".join(lines) + f"\n\n{judges_used(gold)[0]}"


def plot_stage(stage: str, log: list[dict], out: Path) -> Path | None:
    """One PNG with up to four panels of the stage's logged curves; None when it logged none."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    keys = [k for k in CURVES if sum(isinstance(r.get(k), (int, float)) and "step" in r for r in log) >= 1][:4]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in log if isinstance(r.get(key), (int, float)) and "step" in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 30 else None,
                markersize=3, linewidth=1.5)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(stage, fontsize=11, fontweight="bold")
    fig.tight_layout()
    path = out / f"{stage}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def proxy_gold_points(log: list[dict]) -> list[dict]:
    """The rows of a stage's metrics.jsonl that logged KL, the proxy reward and the gold score together."""
    return [r for r in log if all(is_number(r.get(k)) for k in ("kl", "reward_mean", "gold_mean"))]


def plot_proxy_vs_gold(stage: str, points: list[dict], out: Path) -> Path | None:
    """One PNG: proxy reward (left axis) and gold score (right axis) against sqrt KL to the SFT model, the
    x-axis on which over-optimisation curves are usually drawn; the start of reward hacking is marked when
    reward_hacking_start finds one. None with fewer than 2 points."""
    if len(points) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    x = [math.sqrt(max(p["kl"], 0.0)) for p in points]
    fig, proxy_axis = plt.subplots(figsize=(6.4, 3.6))
    gold_axis = proxy_axis.twinx()
    # PPO's per-step KL goes up and down: lines in step order would zigzag across the plot, so many points are
    # drawn as dots with their trailing means (the smoothing reward_hacking_start uses) as lines
    window = max(1, len(points) // 5)
    for axis, key, marker, colour, label in ((proxy_axis, "reward_mean", "o", "tab:blue", "proxy reward"),
                                             (gold_axis, "gold_mean", "s", "tab:orange", "gold score")):
        values = [p[key] for p in points]
        if window == 1:
            axis.plot(x, values, marker=marker, markersize=3, linewidth=1.5, color=colour, label=label)
        else:
            axis.plot(x, values, marker=marker, markersize=3, linestyle="none", alpha=0.35, color=colour)
            axis.plot(trailing_mean(x, window), trailing_mean(values, window), linewidth=1.5, color=colour,
                      label=f"{label} (mean of {window} steps)")
    hacking = reward_hacking_start(points)
    if hacking is not None and is_number(hacking["kl_at_peak"]):
        proxy_axis.axvline(math.sqrt(max(hacking["kl_at_peak"], 0.0)), color="tab:red", linestyle="--",
                           linewidth=1, label=f"reward hacking from step {hacking['step']}")
    proxy_axis.set_xlabel("sqrt KL to the SFT model (nats)", fontsize=9)
    proxy_axis.set_ylabel("proxy reward", color="tab:blue", fontsize=9)
    gold_axis.set_ylabel("gold score", color="tab:orange", fontsize=9)
    for axis in (proxy_axis, gold_axis):
        axis.tick_params(labelsize=8)
    proxy_axis.grid(alpha=0.3)
    handles, labels = proxy_axis.get_legend_handles_labels()
    more_handles, more_labels = gold_axis.get_legend_handles_labels()
    proxy_axis.legend(handles + more_handles, labels + more_labels, fontsize=8, loc="best")
    fig.suptitle(f"{stage}: proxy reward vs gold score", fontsize=11, fontweight="bold")
    fig.tight_layout()
    path = out / f"{stage}-proxy-vs-gold.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _html_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def gold_html(gold: dict) -> str:
    """The "Gold judges" section: gold_table, which judges trained and which judged, and per-category rates."""
    used, warning = judges_used(gold)
    parts = [f"<h2>Gold judges on {html.escape(str(gold['prompts']))} held-out prompts</h2>",
             "<p>Pass rate with its 95% Wilson interval; the final policy's paired difference from each other "
             "model with its 95% paired-bootstrap interval and p-value (exact McNemar for 0/1 scores, paired "
             f"bootstrap otherwise). {html.escape(used)}.</p>",
             _html_table(gold_header(gold), gold_table(gold))]
    if warning:
        parts.append(f"<p><strong>Warning:</strong> {html.escape(warning)}.</p>")
    for judge in gold["judges"]:
        rows = category_rows(gold, judge)
        if rows:
            parts.append(f"<h3>By category: {html.escape(short_judge(judge))}</h3>")
            parts.append(_html_table(category_header(gold), rows))
    return "\n".join(parts)


def write_report(run: Path) -> Path:
    """Write run/report.html and run/report/*.png from what the stage directories hold."""
    run = Path(run)
    images = run / "report"
    images.mkdir(exist_ok=True)
    records = {stage: read_stage(run / stage) for stage in STAGES if is_finished(run / stage)}
    parts = [f"<h1>{html.escape(run.name)}</h1>",
             f"<p>Run directory <code>{html.escape(str(run))}</code>; stages "
             f"{' &rarr; '.join(html.escape(s) for s in records)}.</p>"]

    parts.append("<h2>Stages</h2><table><tr><th>stage</th><th>seconds</th><th>peak memory (GiB)</th>"
                 "<th>final figures</th></tr>")
    for stage, record in records.items():
        shown = {k: v for k, v in record.get("metrics", {}).items() if isinstance(v, (int, float, str))}
        figures = ", ".join(f"{k} {_number(v) if isinstance(v, float) else v}" for k, v in list(shown.items())[:8])
        resources = record.get("resources", {})
        peak = _number(resources.get("rss_peak_gib"), 2) + (
            f" (GPU {_number(resources['gpu_peak_allocated_gib'], 2)})" if "gpu_peak_allocated_gib" in resources else "")
        parts.append(f"<tr><td>{stage}</td><td>{record.get('seconds', 0):.0f}</td><td>{peak}</td>"
                     f"<td>{html.escape(figures)}</td></tr>")
    parts.append("</table>")

    ev = records.get("eval", {}).get("metrics", {})
    if "gold" in ev:
        parts.append(gold_html(ev["gold"]))
    if "win_rate" in ev:
        parts.append(f"<h2>Evaluation: {html.escape(ev['policy'])} vs {html.escape(ev['baseline'])} "
                     f"on {ev['prompts']} held-out prompts</h2><table><tr><th>figure</th>"
                     f"<th>{html.escape(ev['policy'])}</th><th>{html.escape(ev['baseline'])}</th></tr>")
        for label, policy, baseline in evaluation_rows(ev):
            parts.append(f"<tr><td>{html.escape(label)}</td><td>{html.escape(policy)}</td>"
                         f"<td>{html.escape(baseline)}</td></tr>")
        parts.append("</table>")

    logs = {stage: read_jsonl(run / stage / "metrics.jsonl") for stage in records}
    parts.append("<h2>Training curves</h2>")
    for stage, log in logs.items():
        png = plot_stage(stage, log, images)
        if png is not None:
            parts.append(f'<img src="report/{png.name}" alt="{stage} training curves">')

    for stage, log in logs.items():
        points = proxy_gold_points(log)
        png = plot_proxy_vs_gold(stage, points, images)
        if png is None:
            continue
        parts.append(f"<h2>Proxy reward vs gold score: {html.escape(stage)}</h2>"
                     f'<img src="report/{png.name}" alt="{html.escape(stage)} proxy reward vs gold score">'
                     "<p>The proxy reward is what the policy was trained to raise; the gold score comes from a "
                     "judge that did not train it. Both against sqrt KL to the SFT model: where the proxy keeps "
                     "rising while the gold score falls, the policy is exploiting the proxy (reward hacking).</p>")
        message = hacking_message(stage, points)
        parts.append(f"<p><strong>{html.escape(message)}</strong></p>" if message else
                     "<p>No reward hacking detected: the smoothed gold score did not fall more than 0.02 below its "
                     "peak while the proxy rose.</p>")

    samples = read_jsonl(run / "eval" / "samples.jsonl")[:MAX_SAMPLES]
    if samples:
        ev = records["eval"]["metrics"]
        parts.append(f"<h2>Sample answers</h2><table class='samples'><tr><th>prompt</th>"
                     f"<th>{html.escape(ev['baseline'])}</th><th>{html.escape(ev['policy'])}</th></tr>")
        for s in samples:
            prompt = s["prompt"][-1]["content"]
            parts.append(
                f"<tr><td>{html.escape(prompt)}</td>"
                f"<td>{html.escape(s['baseline_answer'])}<br><small>reward {s['baseline_reward']:.2f}</small></td>"
                f"<td>{html.escape(s['policy_answer'])}<br><small>reward {s['policy_reward']:.2f}</small></td></tr>")
        parts.append("</table>")

    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(run.name)}: align report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; }}
td, th {{ border: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; font-size: 0.9rem; }}
th {{ background: #f4f4f4; }}
img {{ max-width: 100%; display: block; margin: 0.5rem 0 1rem; }}
.samples td {{ max-width: 28rem; }}
</style></head><body>
{chr(10).join(parts)}
</body></html>
"""
    path = run / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
