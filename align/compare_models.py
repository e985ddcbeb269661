"""`align eval`: compare any two chat models on held-out prompts, judged by a reward model, and optionally by people.

    align eval runs/quickstart                                   # its final policy vs its SFT stage
    align eval runs/quickstart/export/model --against embedded --reward runs/quickstart
    align eval runs/quickstart --human labels.db                 # also queue blind pairs for `align label`

Models are named as everywhere else (embedded, hub id, model dir, export, run dir, stage dir `runs/x/sft`) and
load separately, so they need not share a base. The figures are the eval stage's (align/eval_metrics.py); KL is
reported when both models share a tokenizer. Results go to OUT/eval/ (stage.json, samples.jsonl) and OUT/report.html.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path


from align.chat import load_chat_model
from align.eval_metrics import comparison_figures, policy_kl, reference_perplexity
from align.generation import generate_answers


def default_against(target: str) -> str:
    """A run's final policy is compared with its SFT stage; anything else needs --against."""
    run = Path(target)
    if (run / "recipe.yaml").is_file() and (run / "sft" / "adapter").is_dir():
        return str(run / "sft")
    raise FileNotFoundError(f"{target}: give --against MODEL (only a run directory with an sft stage has a default)")


def reward_run_for(target: str, against: str, reward: str | None) -> Path:
    for candidate in [reward, target, str(Path(target).parent), against, str(Path(against).parent)]:
        if candidate and (Path(candidate) / "reward" / "adapter").is_dir():
            return Path(candidate)
    raise FileNotFoundError("no reward model: give --reward RUN_DIR (a run with a finished reward stage)")


def slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", spec.strip("/")).strip("-")[-60:] or "model"


def compare(target: str, against: str | None, reward: str | None, dataset: str, max_prompts: int, max_new_tokens: int,
            out: Path, human_db: str | None = None) -> dict:
    from align.config import DataSource, expand_data_shorthand
    from align.data import load_preferences, token_ids
    from align.models import load_kwargs, load_tokenizer, resolve_model_path
    from align.report import evaluation_markdown, write_report
    from align.runs import load_run_recipe, write_json_atomic
    from align.reward import load_reward_model, pairwise_accuracy, score_conversations

    # --- config and data
    started = time.time()
    against = against or default_against(target)
    reward_run = reward_run_for(target, against, reward)
    rows, where = load_preferences(DataSource.model_validate(expand_data_shorthand(dataset)))
    rows = rows[:max_prompts]
    prompts = [r["prompt"] for r in rows]
    references = [r["chosen"][0]["content"] for r in rows]
    directory = out / "eval"
    directory.mkdir(parents=True, exist_ok=True)

    # --- answers from each model (both stay loaded: KL compares their distributions token by token)
    answers, perplexity, models = {}, {}, {}
    for name, spec in (("policy", target), ("baseline", against)):
        model, tokenizer = load_chat_model(spec)
        print(f"[eval] {name}: {spec}: answering {len(prompts)} prompts from {where}")
        answers[name] = generate_answers(model, tokenizer, prompts, max_new_tokens, progress=True)
        perplexity[name] = reference_perplexity(model, tokenizer, prompts, references, token_ids)
        models[name] = (model, tokenizer)
    kl = policy_kl(models, prompts, answers["policy"], token_ids)
    del models

    # --- reward model judges both
    recipe = load_run_recipe(reward_run)
    tokenizer = load_tokenizer(recipe.model)
    judge = load_reward_model(resolve_model_path(recipe.model.name_or_path), load_kwargs(recipe.model, recipe.quantization),
                              tokenizer.pad_token_id, adapter_dir=reward_run / "reward" / "adapter", trainable=False)
    rewards = {name: score_conversations(judge, tokenizer, [p + [{"role": "assistant", "content": a["text"] or " "}]
                                                            for p, a in zip(prompts, outs)])
               for name, outs in answers.items()}

    judge_accuracy = pairwise_accuracy(judge, tokenizer, rows)

    # --- figures
    metrics = {"policy": target, "baseline": against, "reward_model": str(reward_run), "prompts": len(prompts),
               **comparison_figures(answers, rewards, references, perplexity, kl, judge_accuracy)}

    # --- blind human comparison: queue the pairs, read back whatever has been labelled
    if human_db:
        metrics.update(human_comparison(human_db, prompts, answers, target, against))

    # --- save
    with (directory / "samples.jsonl").open("w") as fh:
        for i, prompt in enumerate(prompts):
            fh.write(json.dumps({"prompt": prompt, "reference": references[i],
                                 **{f"{k}_answer": answers[k][i]["text"] for k in answers},
                                 **{f"{k}_reward": rewards[k][i] for k in rewards}}) + "\n")
    write_json_atomic(directory / "stage.json", {"stage": "eval", "seconds": round(time.time() - started, 1),
                                                 "metrics": metrics})
    print(evaluation_markdown(metrics))
    print(f"report: {write_report(out)}")
    return metrics


def human_comparison(db: str, prompts, answers: dict, target: str, against: str) -> dict:
    """Add the pairs to a label database (idempotent) and read the human win rate of what has been judged."""
    from align.labelling.stats import label_report
    from align.labelling.store import LabelStore

    store = LabelStore(db)
    items = [{"prompt": p, "response_1": a["text"], "response_2": b["text"], "model_1": target, "model_2": against}
             for p, a, b in zip(prompts, answers["policy"], answers["baseline"])
             if a["text"].strip() != b["text"].strip()]  # identical answers need no human
    added = store.add_items(items, f"align eval {target} --against {against}")
    print(f"[eval] {added} new blind pairs in {db} ({len(prompts) - len(items)} identical answers left out); "
          f"label them with: align label --db {db} --users USERS_FILE")
    for row in label_report(store.judgments())["models"]:
        if {row["model_1"], row["model_2"]} == {target, against}:
            rate = row["win_rate_1"] if row["model_1"] == target else (None if row["win_rate_1"] is None
                                                                      else 1 - row["win_rate_1"])
            return {"human_win_rate": rate, "human_judgments": row["n"]}
    return {"human_win_rate": None, "human_judgments": 0}
