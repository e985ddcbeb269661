"""Does alignment show? The final policy and its baseline answer the same held-out prompts; the reward model
scores both; the figure is the policy's win rate (ties count half), with mean rewards, lengths and EOS rates.

One base carries both chat adapters (switched per model), and the reward model is loaded beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

from align.config import Recipe
from align.data import load_preferences
from align.generation import generate_answers
from align.models import load_kwargs, load_tokenizer, resolve_model_path
from reward import load_reward_model, score_conversations, win_rate


def run(recipe: Recipe, out: Path, inputs: dict) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, set_seed

    # --- config
    cfg = recipe.eval
    policy_stage = recipe.policy_stage()
    set_seed(recipe.seed)

    # --- data: prompts the models did not train on
    tokenizer = load_tokenizer(recipe.model)
    rows, where = load_preferences(cfg.dataset)
    prompts = [r["prompt"] for r in rows[: cfg.max_prompts]]

    # --- models
    path = resolve_model_path(recipe.model.name_or_path)
    kwargs = load_kwargs(recipe.model, recipe.quantization)
    base = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    chat = PeftModel.from_pretrained(base, str(inputs[policy_stage] / "adapter"), adapter_name="policy")
    if cfg.baseline == "sft":
        chat.load_adapter(str(inputs["sft"] / "adapter"), adapter_name="baseline")
    chat.eval()
    reward_model = load_reward_model(
        path, kwargs, tokenizer.pad_token_id, adapter_dir=inputs["reward"] / "adapter", trainable=False
    )

    # --- generate and score
    answers = {}
    for name in ("policy", "baseline"):
        if name == "baseline" and cfg.baseline == "base":
            with chat.disable_adapter():
                answers[name] = generate_answers(chat, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size, True)
        else:
            chat.set_adapter(name)
            answers[name] = generate_answers(chat, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size, True)
    rewards = {
        name: score_conversations(
            reward_model, tokenizer,
            [p + [{"role": "assistant", "content": a["text"] or " "}] for p, a in zip(prompts, outs)],
            cfg.batch_size,
        )
        for name, outs in answers.items()
    }

    # --- save
    with (out / "samples.jsonl").open("w") as fh:
        for i, prompt in enumerate(prompts):
            fh.write(json.dumps({
                "prompt": prompt,
                **{f"{n}_answer": answers[n][i]["text"] for n in answers},
                **{f"{n}_reward": rewards[n][i] for n in rewards},
            }) + "\n")
    n = len(prompts)
    metrics = {
        "policy": policy_stage,
        "baseline": cfg.baseline,
        "prompts": n,
        "win_rate": win_rate(rewards["policy"], rewards["baseline"]),
    }
    for name in answers:
        metrics[f"{name}_mean_reward"] = sum(rewards[name]) / n
        metrics[f"{name}_mean_tokens"] = sum(a["tokens"] for a in answers[name]) / n
        metrics[f"{name}_eos_rate"] = sum(a["ended_with_eos"] for a in answers[name]) / n
    return metrics
