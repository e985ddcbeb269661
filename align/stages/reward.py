"""Reward model on preference pairs (trl RewardTrainer): the base with a LoRA adapter and a scalar score head.

Afterwards its pairwise accuracy is measured on held-out pairs (the eval dataset), the figure that says whether
the reward model can be trusted to judge the policy.
"""

from __future__ import annotations

from pathlib import Path

from align.config import Recipe
from align.data import check_lengths, load_preferences, to_dataset
from align.models import load_kwargs, load_tokenizer, lora_config, resolve_model_path
from align.runs import add_lengths, last_checkpoint, metrics_callback, save_adapter, trl_args
from reward import load_reward_model, pairwise_accuracy


def run(recipe: Recipe, out: Path, inputs: dict) -> dict:
    from transformers import set_seed
    from trl import RewardTrainer

    # --- config
    cfg = recipe.reward
    args = trl_args(recipe, "reward", out)
    set_seed(recipe.seed)

    # --- data
    tokenizer = load_tokenizer(recipe.model)
    train, where = load_preferences(cfg.dataset)
    lengths = check_lengths(train, tokenizer, args.max_length, where, ("chosen", "rejected"), dropped=True)
    evaluation = None
    if cfg.eval_dataset:
        evaluation, eval_where = load_preferences(cfg.eval_dataset)
        check_lengths(evaluation, tokenizer, args.max_length, eval_where, ("chosen", "rejected"))
    # RewardTrainer drops (not truncates) pairs longer than max_length: say how many.
    print(f"[reward] {len(train)} pairs from {where}; {lengths['truncated']} longer than max_length are skipped")

    # --- model
    model = load_reward_model(
        resolve_model_path(recipe.model.name_or_path),
        load_kwargs(recipe.model, recipe.quantization),
        tokenizer.pad_token_id,
        lora_config=lora_config(recipe.lora, "SEQ_CLS"),
        gradient_checkpointing=args.gradient_checkpointing,
    )

    # --- trainer
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(train),
        eval_dataset=to_dataset(evaluation) if evaluation else None,
        processing_class=tokenizer,
        callbacks=[metrics_callback(out)],
    )
    add_lengths(trainer)

    # --- train
    result = trainer.train(resume_from_checkpoint=last_checkpoint(out))
    metrics = {"train_loss": result.training_loss, "train_pairs": len(train), "skipped_pairs": lengths["truncated"]}
    if evaluation:
        model.eval()
        held_out = pairwise_accuracy(model, tokenizer, evaluation, args.per_device_eval_batch_size)
        metrics.update({f"heldout_{k}": v for k, v in held_out.items()})
        print(f"[reward] held-out pairwise accuracy {held_out['accuracy']:.3f} on {held_out['pairs']} pairs")

    # --- save
    save_adapter(trainer, out / "adapter")
    return metrics
