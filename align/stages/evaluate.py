"""Does alignment show? The final policy and its baseline answer the same held-out prompts; the reward model
scores both; the figure is the policy's win rate (ties count half), with mean rewards, lengths and EOS rates, and
how far the policy moved from its baseline: KL(policy || baseline) summed over the policy's own answer tokens.

One base carries both chat adapters (switched per model), and the reward model is loaded beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from align.config import Recipe
from align.data import load_preferences, token_ids
from align.generation import generate_answers
from align.models import load_kwargs, load_tokenizer, on_this_process_device, resolve_model_path
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
    base = on_this_process_device(AutoModelForCausalLM.from_pretrained(path, **kwargs))
    chat = PeftModel.from_pretrained(base, str(inputs[policy_stage] / "adapter"), adapter_name="policy")
    if cfg.baseline == "sft":
        chat.load_adapter(str(inputs["sft"] / "adapter"), adapter_name="baseline")
    chat.eval()
    reward_model = on_this_process_device(load_reward_model(
        path, kwargs, tokenizer.pad_token_id, adapter_dir=inputs["reward"] / "adapter", trainable=False
    ))

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

    kl = answer_kl(chat, tokenizer, prompts, answers["policy"], cfg.baseline)

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
        "kl_to_baseline": sum(kl) / n,
    }
    for name in answers:
        metrics[f"{name}_mean_reward"] = sum(rewards[name]) / n
        metrics[f"{name}_mean_tokens"] = sum(a["tokens"] for a in answers[name]) / n
        metrics[f"{name}_eos_rate"] = sum(a["ended_with_eos"] for a in answers[name]) / n
    return metrics


@torch.no_grad()
def answer_kl(chat, tokenizer, prompts: list[list[dict]], answers: list[dict], baseline: str) -> list[float]:
    """Per answer: sum over its tokens of KL(policy || baseline) between the two next-token distributions, along
    the policy's own answer. Exact per position (no sampling), so it is deterministic."""
    device = next(chat.parameters()).device
    out = []
    for prompt, answer in zip(prompts, answers):
        context = token_ids(tokenizer, prompt, add_generation_prompt=True)
        if not answer["token_ids"]:
            out.append(0.0)
            continue
        ids = torch.tensor([context + answer["token_ids"]], device=device)
        span = slice(len(context) - 1, ids.shape[1] - 1)  # positions that predict the answer tokens
        chat.set_adapter("policy")
        policy = torch.log_softmax(chat(input_ids=ids).logits[0, span].float(), -1)
        if baseline == "base":
            with chat.disable_adapter():
                reference = torch.log_softmax(chat(input_ids=ids).logits[0, span].float(), -1)
        else:
            chat.set_adapter("baseline")
            reference = torch.log_softmax(chat(input_ids=ids).logits[0, span].float(), -1)
        out.append((policy.exp() * (policy - reference)).sum().item())
    return out
