"""Does alignment show? First by gold judges that did not train the model (eval.judges, e.g. align.judges:gold
checking each answer against the held-out answer key): the final policy, the SFT model and the untouched base
answer the same held-out prompts, each judge's pass rate gets a 95% interval, and the final policy's paired
difference to SFT and to base a paired test (exact McNemar for 0/1 verdicts) and its interval, per category too.

Then by the reward model, a proxy: the final policy and its baseline answer the same held-out prompts; the reward model
scores both; the figure is the policy's win rate (ties count half, with a 95% Wilson interval), with mean rewards
and their gap, and how far the policy moved from its baseline: KL(policy || baseline) summed over the policy's own
answer tokens. Beside it, the signs of reward hacking and degeneration: answer lengths and their correlation with
the reward, EOS and repetition rates; perplexity of the held-out chosen answers (demonstrations) under each model;
BLEU and ROUGE-L against those answers; and the reward model's own held-out pairwise accuracy.

One base carries the chat adapters (switched per model; adapters off for the base), and the reward model is loaded
beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

from align.config import Recipe
from align.data import load_preferences, load_prompts, token_ids
from align.generation import generate_answers
from align.models import load_causal_lm, load_kwargs, load_tokenizer, on_this_process_device, resolve_model_path
from align.eval_metrics import comparison_figures, macro_difference, macro_rate, paired_difference, pass_rate
from align.onpolicy import judge_scores
from align.reward import load_reward_model, pairwise_accuracy, score_conversations


def run(recipe: Recipe, out: Path, inputs: dict) -> dict:
    from peft import PeftModel
    from transformers import set_seed

    # --- config
    cfg = recipe.eval
    policy_stage = recipe.policy_stage()
    set_seed(recipe.seed)
    # which models answer: the final policy, its reward-model baseline, and for the gold judges sft and base too
    names = ["policy", "sft", "base"] if cfg.judges else ["policy", cfg.baseline]
    if "sft" not in recipe.stages or policy_stage == "sft":
        names = [n for n in names if n != "sft"]

    # --- data: prompts the models did not train on, with the columns the judges read (e.g. the answer key)
    tokenizer = load_tokenizer(recipe.model)
    rows, where = load_preferences(cfg.dataset)
    rows = rows[: cfg.max_prompts]
    prompt_rows = load_prompts(cfg.dataset)[0][: cfg.max_prompts]
    prompts = [r["prompt"] for r in rows]
    references = [r["chosen"][0]["content"] for r in rows]  # the preferred answer: a held-out demonstration
    print(f"[eval] {len(prompts)} held-out prompts from {where}; models: "
          f"{', '.join(policy_stage if n == 'policy' else n for n in names)}")

    # --- models
    path = resolve_model_path(recipe.model.name_or_path)
    kwargs = load_kwargs(recipe.model, recipe.quantization)
    base = on_this_process_device(load_causal_lm(path, **kwargs))
    chat = PeftModel.from_pretrained(base, str(inputs[policy_stage] / "adapter"), adapter_name="policy")
    if "sft" in names:
        chat.load_adapter(str(inputs["sft"] / "adapter"), adapter_name="sft")
    chat.eval()
    reward_model = on_this_process_device(load_reward_model(
        path, kwargs, tokenizer.pad_token_id, adapter_dir=inputs["reward"] / "adapter", trainable=False
    ))

    # --- generate and score
    # an online stage that stopped before training kept SFT's adapter: the same weights answer greedily the same,
    # so its answers and rewards are SFT's rather than a second pass of the slowest part of eval
    unchanged = "sft" in names and same_adapter(inputs[policy_stage] / "adapter", inputs["sft"] / "adapter")
    if unchanged:
        print(f"[eval] {policy_stage}'s adapter is sft's, unchanged: its answers are sft's")
    answers = {}
    for name in names:
        if name == "policy" and unchanged:
            continue
        with use_model(chat, name):
            answers[name] = generate_answers(chat, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size, True)
    rewards = {
        name: score_conversations(
            reward_model, tokenizer,
            [p + [{"role": "assistant", "content": a["text"] or " "}] for p, a in zip(prompts, outs)],
            cfg.batch_size,
        )
        for name, outs in answers.items()
    }
    if unchanged:
        answers = {"policy": answers["sft"], **answers}
        rewards = {"policy": rewards["sft"], **rewards}
    gold = {}
    if cfg.judges:
        texts = {name: [a["text"] for a in outs] for name, outs in answers.items()}
        verdicts, gold = judge_answers(recipe, prompt_rows, texts)

    pair = {"policy": "policy", "baseline": cfg.baseline}  # the reward-model comparison's two sides
    few = slice(0, cfg.kl_prompts)  # one forward pass per prompt and model: not needed on every prompt
    kl = answer_kl(chat, tokenizer, prompts[few], answers["policy"][few], cfg.baseline)
    perplexities = {side: perplexity(chat, tokenizer, prompts[few], references[few], name)
                    for side, name in pair.items()}
    measured_by_stage = reward_stage_accuracy(recipe, inputs, rows)
    reward_accuracy = measured_by_stage or pairwise_accuracy(reward_model, tokenizer, rows, cfg.batch_size)

    # --- save
    with (out / "samples.jsonl").open("w") as fh:
        for i, prompt in enumerate(prompts):
            fh.write(json.dumps({
                "prompt": prompt,
                **{f"{n}_answer": answers[n][i]["text"] for n in answers},
                # the reward-model comparison's baseline under one name, as `align eval` writes it for the report
                "baseline_answer": answers[cfg.baseline][i]["text"], "baseline_reward": rewards[cfg.baseline][i],
                **{f"{n}_reward": rewards[n][i] for n in rewards},
                **{f"{n}_tokens": answers[n][i]["tokens"] for n in answers},
                **{f"{n}_{judge.rpartition(':')[2]}": verdicts[n][judge][i] for n in answers for judge in cfg.judges},
                "reference": references[i],
            }) + "\n")
    figures = comparison_figures({side: answers[name] for side, name in pair.items()},
                                 {side: rewards[name] for side, name in pair.items()},
                                 references, perplexities, kl, reward_accuracy)
    metrics = {"policy": policy_stage, "baseline": cfg.baseline, "prompts": len(prompts), **figures}
    if measured_by_stage:
        metrics["reward_model_accuracy_from"] = "reward stage"
    if gold:
        metrics["gold"] = gold
    return metrics


def per_pair(labels_per_pair: int) -> str:
    """How a labeller's labels per pair read in "trained by": nothing for one."""
    from align.labeller import per_pair as labels_text

    return labels_text(labels_per_pair) + (", majority trained" if labels_per_pair > 1 else "")


def training_signals(recipe: Recipe) -> list[str]:
    """What trained this run's policy, in words, with every judge or function named, so the report can say which
    signals trained and which judged (and whether a judge did both)."""
    signals = []
    if "sft" in recipe.stages:
        signals.append(f"sft: demonstrations ({recipe.sft.dataset.describe()})")
    if "reward" in recipe.stages:
        labelled, labeller = recipe.reward.judge_labelled_pairs, recipe.reward.labelled_samples
        signals.append(f"reward model: pairs ({recipe.reward.dataset.describe()})"
                       + (f" + SFT samples labelled by {labelled.judge}" if labelled else "")
                       + (f" + SFT samples labelled in a label database by {labeller.labeller} (noise "
                          f"{labeller.noise:g}{per_pair(labeller.labels_per_pair)})" if labeller else ""))
    if "dpo" in recipe.stages:
        signals.append(f"dpo: pairs ({recipe.dpo.dataset.describe()})")
    for stage in ("online_dpo", "ppo", "rloo", "grpo"):
        if stage in recipe.stages:
            section = getattr(recipe, stage)
            sources = (["reward model"] if section.use_reward_model else []) + list(section.reward_functions)
            if getattr(section, "relabel_with", None):
                sources[0] += f" (retrained each round on the policy's answers ordered by {section.relabel_with})"
            if getattr(section, "labeller", None):
                sources.append(f"its pairs labelled in a label database by {section.labeller} (noise "
                               f"{section.labeller_noise:g}{per_pair(getattr(section, 'labels_per_pair', 1))})")
            elif getattr(section, "label_db", None):
                sources.append(f"people's labels ({section.label_db})")
            signals.append(f"{stage}: {' + '.join(sources)}")
    return signals


def judge_answers(recipe: Recipe, prompt_rows: list[dict], texts: dict[str, list[str]]) -> tuple[dict, dict]:
    """Every eval judge's verdict on each model's answers (`texts`: policy, sft, base -> one answer per prompt
    row; the rows' other fields, e.g. the answer key and category, are what the judges read), and their
    comparison: (verdicts, gold_comparison)."""
    prompts = [r["prompt"] for r in prompt_rows]
    columns = {k: [r.get(k) for r in prompt_rows] for k in {k for r in prompt_rows for k in r if k != "prompt"}}
    verdicts = {name: judge_scores(recipe.eval.judges, prompts, answers, columns) for name, answers in texts.items()}
    return verdicts, gold_comparison(recipe, verdicts, columns.get("category"))


def gold_comparison(recipe: Recipe, verdicts: dict[str, dict[str, list[float]]], categories: list | None) -> dict:
    """Pass rates (95% Wilson) of every model on every judge, the final policy's paired difference to sft and to
    base (exact McNemar for 0/1 verdicts, else a paired bootstrap), and pass rates per category."""
    judges = recipe.eval.judges
    final = recipe.policy_stage()
    label = {"policy": final, "sft": "sft", "base": "base"}
    models = [label[n] for n in verdicts]
    trained = training_signals(recipe)
    trained_specs = " ".join(trained)
    gold = {"judges": judges, "models": models, "prompts": len(next(iter(verdicts.values()))[judges[0]]),
            "trained_by": trained, "judged_by": list(judges) + ["reward model (win rate: a proxy)"],
            "not_independent": [j for j in judges if j in trained_specs],
            "pass_rates": {}, "paired": {}, "categories": {}}
    for judge in judges:
        gold["pass_rates"][judge] = {label[n]: pass_rate(v[judge]) for n, v in verdicts.items()}
        gold["paired"][judge] = {f"vs_{other}": paired_difference(verdicts["policy"][judge], verdicts[other][judge])
                                 for other in ("sft", "base") if other in verdicts}
        if categories:
            table = {}
            for category in sorted({c for c in categories if c is not None}):
                index = [i for i, c in enumerate(categories) if c == category]
                table[category] = {label[n]: sum(v[judge][i] for i in index) / len(index) for n, v in verdicts.items()}
                table[category]["n"] = len(index)
                table[category]["paired"] = {
                    f"vs_{other}": paired_difference([verdicts["policy"][judge][i] for i in index],
                                                     [verdicts[other][judge][i] for i in index], 2000)
                    for other in ("sft", "base") if other in verdicts}
            gold["categories"][judge] = table
            if len(table) > 1 and all(c is not None for c in categories):
                gold.setdefault("macro", {})[judge] = {
                    "rates": {label[n]: macro_rate(v[judge], categories) for n, v in verdicts.items()},
                    "paired": {f"vs_{other}": macro_difference(verdicts["policy"][judge], verdicts[other][judge],
                                                               categories, 5000)
                               for other in ("sft", "base") if other in verdicts}}
    return gold


def same_adapter(one: Path, other: Path) -> bool:
    """Whether two adapter directories hold the same weights and configuration, byte for byte."""
    import filecmp

    names = ("adapter_config.json", "adapter_model.safetensors")
    return all((one / n).is_file() and (other / n).is_file() and filecmp.cmp(one / n, other / n, shallow=False)
               for n in names)


def reward_stage_accuracy(recipe: Recipe, inputs: dict, rows: list[dict]) -> dict | None:
    """The reward model's held-out pairwise accuracy as its own stage measured it, where eval's pairs are the pairs
    that stage recorded holding out (the same source and every one of its pairs), so they are not scored twice and
    the run reports one figure for it; None where they differ. (In bf16 a rescore at eval's batch size can differ
    in the last digit: the stage scores at its own.)"""
    from align.runs import read_stage

    stage = read_stage(inputs["reward"])
    held_out = stage.get("fingerprint", {}).get("reward", {}).get("eval_dataset")
    measured = stage.get("metrics", {})
    keys = ("heldout_accuracy", "heldout_mean_margin", "heldout_pairs")
    if (held_out != recipe.eval.dataset.model_dump(mode="json") or not all(k in measured for k in keys)
            or measured["heldout_pairs"] != len(rows)):
        return None
    print(f"[eval] the reward model's held-out pairwise accuracy: its stage's, on these {len(rows)} pairs")
    return {"accuracy": measured["heldout_accuracy"], "mean_margin": measured["heldout_mean_margin"],
            "pairs": measured["heldout_pairs"]}


def use_model(chat, name: str):
    """Switch the shared base to `name`'s adapter; 'base' is the base with adapters off."""
    import contextlib

    if name == "base":
        return chat.disable_adapter()
    chat.set_adapter(name)
    return contextlib.nullcontext()


def perplexity(chat, tokenizer, prompts: list[list[dict]], answers: list[str], name: str) -> float:
    """exp(mean negative log-likelihood per answer token) of reference answers after their prompts, over the
    tokens the chat template adds for the assistant turn (what SFT trains on), under model `name`."""
    from align.eval_metrics import reference_perplexity

    with use_model(chat, name):
        return reference_perplexity(chat, tokenizer, prompts, answers, token_ids)


def answer_kl(chat, tokenizer, prompts: list[list[dict]], answers: list[dict], baseline: str) -> list[float]:
    """Per answer: KL(policy || baseline) summed along the policy's own answer (align.compare_models.kl_along_answers),
    both models being adapters (or no adapter) on the one base."""
    from align.eval_metrics import kl_along_answers, sequence_logprobs

    def logprobs_of(name, ids, start):
        with use_model(chat, "policy" if name == "policy" else baseline):
            return sequence_logprobs(chat, ids, start)

    return kl_along_answers(logprobs_of, tokenizer, prompts, answers, token_ids)
