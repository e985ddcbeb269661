"""The run report: runs/<name>/report.html with every stage's training curves (PNG, matplotlib), the evaluation
table and sample answers side by side. Written at the end of `align run`; `align report RUN_DIR` rewrites it.

The evaluation table is one function (`evaluation_rows`) shared by the report, the terminal summary and the
exported model card, so the three always show the same figures.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from align.config import STAGE_ORDER
from align.runs import is_finished, read_stage

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


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


def write_report(run: Path) -> Path:
    """Write run/report.html and run/report/*.png from what the stage directories hold."""
    run = Path(run)
    images = run / "report"
    images.mkdir(exist_ok=True)
    records = {stage: read_stage(run / stage) for stage in STAGE_ORDER if is_finished(run / stage)}
    parts = [f"<h1>{html.escape(run.name)}</h1>",
             f"<p>Run directory <code>{html.escape(str(run))}</code>; stages "
             f"{' &rarr; '.join(html.escape(s) for s in records)}.</p>"]

    parts.append("<h2>Stages</h2><table><tr><th>stage</th><th>seconds</th><th>final figures</th></tr>")
    for stage, record in records.items():
        shown = {k: v for k, v in record.get("metrics", {}).items() if isinstance(v, (int, float, str))}
        figures = ", ".join(f"{k} {_number(v) if isinstance(v, float) else v}" for k, v in list(shown.items())[:8])
        parts.append(f"<tr><td>{stage}</td><td>{record.get('seconds', 0):.0f}</td><td>{html.escape(figures)}</td></tr>")
    parts.append("</table>")

    if "eval" in records:
        ev = records["eval"]["metrics"]
        parts.append(f"<h2>Evaluation: {html.escape(ev['policy'])} vs {html.escape(ev['baseline'])} "
                     f"on {ev['prompts']} held-out prompts</h2><table><tr><th>figure</th>"
                     f"<th>{html.escape(ev['policy'])}</th><th>{html.escape(ev['baseline'])}</th></tr>")
        for label, policy, baseline in evaluation_rows(ev):
            parts.append(f"<tr><td>{html.escape(label)}</td><td>{html.escape(policy)}</td>"
                         f"<td>{html.escape(baseline)}</td></tr>")
        parts.append("</table>")

    parts.append("<h2>Training curves</h2>")
    for stage in records:
        png = plot_stage(stage, read_jsonl(run / stage / "metrics.jsonl"), images)
        if png is not None:
            parts.append(f'<img src="report/{png.name}" alt="{stage} training curves">')

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
