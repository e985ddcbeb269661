"""Does alignment show? The final policy and its baseline answer the same held-out prompts; the reward model
scores both; the figure is the policy's win rate (ties count half, with a 95% Wilson interval), with mean rewards
and their gap, and how far the policy moved from its baseline: KL(policy || baseline) summed over the policy's own
answer tokens. Beside it, the signs of reward hacking and degeneration: answer lengths and their correlation with
the reward, EOS and repetition rates; perplexity of the held-out chosen answers (demonstrations) under each model;
BLEU and ROUGE-L against those answers; and the reward model's own held-out pairwise accuracy.

One base carries both chat adapters (switched per model), and the reward model is loaded beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

from align.config import Recipe
from align.data import load_preferences, token_ids
from align.generation import generate_answers
from align.models import load_kwargs, load_tokenizer, on_this_process_device, resolve_model_path
from align.eval_metrics import comparison_figures
from reward import load_reward_model, pairwise_accuracy, score_conversations


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
    rows = rows[: cfg.max_prompts]
    prompts = [r["prompt"] for r in rows]
    references = [r["chosen"][0]["content"] for r in rows]  # the preferred answer: a held-out demonstration

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
        with use_model(chat, name, cfg.baseline):
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
    perplexities = {name: perplexity(chat, tokenizer, prompts, references, name, cfg.baseline) for name in answers}
    reward_accuracy = pairwise_accuracy(reward_model, tokenizer, rows, cfg.batch_size)

    # --- save
    with (out / "samples.jsonl").open("w") as fh:
        for i, prompt in enumerate(prompts):
            fh.write(json.dumps({
                "prompt": prompt,
                **{f"{n}_answer": answers[n][i]["text"] for n in answers},
                **{f"{n}_reward": rewards[n][i] for n in rewards},
                **{f"{n}_tokens": answers[n][i]["tokens"] for n in answers},
                "reference": references[i],
            }) + "\n")
    figures = comparison_figures(answers, rewards, references, perplexities, kl, reward_accuracy)
    metrics = {"policy": policy_stage, "baseline": cfg.baseline, "prompts": len(prompts), **figures}
    return metrics


def use_model(chat, name: str, baseline: str):
    """Switch the shared base to `name`'s adapter; the 'base' baseline is the base with adapters off."""
    import contextlib

    if name == "baseline" and baseline == "base":
        return chat.disable_adapter()
    chat.set_adapter(name)
    return contextlib.nullcontext()


def perplexity(chat, tokenizer, prompts: list[list[dict]], answers: list[str], name: str, baseline: str) -> float:
    """exp(mean negative log-likelihood per answer token) of reference answers after their prompts, over the
    tokens the chat template adds for the assistant turn (what SFT trains on), under model `name`."""
    from align.compare import reference_perplexity

    with use_model(chat, name, baseline):
        return reference_perplexity(chat, tokenizer, prompts, answers, token_ids)


def answer_kl(chat, tokenizer, prompts: list[list[dict]], answers: list[dict], baseline: str) -> list[float]:
    """Per answer: KL(policy || baseline) summed along the policy's own answer (align.compare.kl_along_answers),
    both models being adapters (or no adapter) on the one base."""
    from align.compare import kl_along_answers, sequence_logprobs

    def logprobs_of(name, ids, start):
        with use_model(chat, name, baseline):
            return sequence_logprobs(chat, ids, start)

    return kl_along_answers(logprobs_of, tokenizer, prompts, answers, token_ids)
