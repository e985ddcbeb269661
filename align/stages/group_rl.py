"""RLOO and GRPO through trl (RLOOTrainer, GRPOTrainer): several sampled answers per prompt, each rewarded
relative to the others, so no value model is needed.

The policy continues the previous policy stage's adapter; with a KL term (`beta` > 0: RLOO's default 0.05, GRPO's
default is 0, no reference) trl keeps a frozen 'ref' copy of that adapter as the reference;
the reward is this run's reward model, wrapped as a trl reward function that scores the decoded conversation
exactly as in reward training, plus any Python reward functions. Unlike PPO the reward model here is a second
copy of the base (trl calls reward functions outside the policy model).
"""

from __future__ import annotations

from pathlib import Path

from align.config import Recipe
from align.data import load_prompts, to_dataset
from align.models import (
    load_kwargs, load_policy, load_tokenizer, on_this_process_device, resolve_model_path, sync_special_tokens,
)
from align.reward_functions import call_reward_function, load_reward_function
from align.trainers import last_checkpoint, save_adapter, trainer_callbacks
from align.trainer_settings import record_trl_config, trainer_args
from align.reward import load_reward_model, score_conversations
from align.stages.reward import keep_starting_policy, untrusted_reward_model


def run_rloo(recipe: Recipe, out: Path, inputs: dict) -> dict:
    from trl import RLOOTrainer

    return run(recipe, out, inputs, "rloo", RLOOTrainer)


def run_grpo(recipe: Recipe, out: Path, inputs: dict) -> dict:
    from trl import GRPOTrainer

    return run(recipe, out, inputs, "grpo", GRPOTrainer)


def run(recipe: Recipe, out: Path, inputs: dict, stage: str, trainer_class) -> dict:
    from transformers import set_seed

    # --- config
    cfg = getattr(recipe, stage)
    untrusted = untrusted_reward_model(recipe, stage, inputs)
    if untrusted:  # keep_start_if_untrusted: say so and stop, with the starting policy as the result
        return keep_starting_policy(recipe, stage, out, inputs, untrusted)
    args = trainer_args(recipe, stage, out)
    record_trl_config(args, out)
    set_seed(recipe.seed)

    # --- data: prompts (other columns reach the reward functions)
    tokenizer = load_tokenizer(recipe.model)
    rows, where = load_prompts(cfg.dataset)
    print(f"[{stage}] {len(rows)} prompts from {where}, {args.num_generations} answers each")

    # --- rewards
    reward_funcs = []
    if cfg.use_reward_model:
        reward_model = on_this_process_device(load_reward_model(
            resolve_model_path(recipe.model.name_or_path), load_kwargs(recipe.model, recipe.quantization),
            tokenizer.pad_token_id, adapter_dir=inputs["reward"] / "adapter", trainable=False,
        ))  # trl moves reward models it recognises; this one is wrapped in a function
        reward_funcs.append(reward_model_function(reward_model, tokenizer, args.per_device_train_batch_size))
    reward_funcs += [trl_reward_function(spec) for spec in cfg.reward_functions]

    # --- model: continues the previous policy stage's adapter
    start = recipe.starting_policy(stage)
    model = load_policy(recipe, adapter_dir=inputs[start] / "adapter" if start else None,
                        gradient_checkpointing=args.gradient_checkpointing)
    sync_special_tokens(model, tokenizer)

    # --- trainer
    trainer = trainer_class(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=to_dataset(rows),
        processing_class=tokenizer,
        callbacks=trainer_callbacks(out),
    )

    # --- train
    result = trainer.train(resume_from_checkpoint=last_checkpoint(out))
    metrics = {"train_loss": result.training_loss, "prompts": len(rows)}
    logged = [entry for entry in trainer.state.log_history if "reward" in entry]
    if logged:
        metrics.update({"first_reward": logged[0]["reward"], "final_reward": logged[-1]["reward"]})

    # --- save
    save_adapter(trainer, out / "adapter")
    return metrics


def reward_model_function(model, tokenizer, batch_size: int):
    """The reward model as a trl reward function: prompt + answer rendered with the chat template, one score each."""

    def reward_model(prompts, completions, **_):
        return score_conversations(model, tokenizer, [p + c for p, c in zip(prompts, completions)], batch_size)

    return reward_model


def trl_reward_function(spec: str):
    """A user's reward function, called the way PPO calls it (only the columns it names, values checked)."""
    function = load_reward_function(spec)

    def reward(prompts, completions, **columns):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return call_reward_function(function, spec, prompts, texts, columns)

    reward.__name__ = spec.rpartition(":")[2]  # trl logs rewards/<name>
    return reward
